"""FAB-T: exact on affine classifiers, projections against scipy's solvers, and against torchattacks' FAB on a CNN."""

import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from attacks.fab import _projection_l2, _projection_linf, _random_start, fab_targeted
from capsrobust.errors import ConfigError

ORDER = {"inf": np.inf, "2": 2}


def _distance(a: np.ndarray, b: np.ndarray, norm: str) -> np.ndarray:
    return np.linalg.norm((a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1), ORDER[norm], axis=1)


class Affine:
    """`scores = W x + b` on flattened `(n, 6, 6, 1)` images, with exact gradients. Only classes 0 and 1 compete
    (the others' biases are far below), so the one boundary near an image is the target hyperplane."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0.0, 0.05, (10, 36))
        # the boundary between 0 and 1 through the box's centre, so images in [0.3, 0.7] are close to it
        self.bias = np.r_[0.0, 0.5 * np.sum(self.weights[0] - self.weights[1]), np.full(8, -100.0)]

    def scores(self, images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float64) @ self.weights.T + self.bias

    def boundary_gradient(self, images: np.ndarray, labels: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (self.weights[targets] - self.weights[labels]).reshape(len(images), 6, 6, 1)

    def minimal_distance(self, x: np.ndarray, y: np.ndarray, target: np.ndarray, norm: str) -> np.ndarray:
        """Distance from each image to its hyperplane `f_target = f_y`: the margin over the dual norm of the normal."""
        normal = self.weights[target] - self.weights[y]
        margin = -np.sum(normal * x.reshape(len(x), -1).astype(np.float64), axis=1) - (self.bias[target] - self.bias[y])
        dual = np.sum(np.abs(normal), axis=1) if norm == "inf" else np.linalg.norm(normal, axis=1)
        return margin / dual


@pytest.fixture
def affine_problem():
    model = Affine()
    x = np.random.default_rng(1).uniform(0.3, 0.7, (20, 6, 6, 1)).astype(np.float32)
    y = np.argmax(model.scores(x), axis=1)
    return model, x, y, 1 - y


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_affine_classifier_minimal_distance(affine_problem, norm):
    model, x, y, target = affine_problem
    minimal = model.minimal_distance(x, y, target, norm)
    normal = model.weights[target] - model.weights[y]
    largest_move = minimal if norm == "inf" else minimal * np.max(np.abs(normal), 1) / np.linalg.norm(normal, axis=1)
    assert np.all(1.05 * largest_move < 0.3), "the box must be inactive: x is in [0.3, 0.7]"

    found = fab_targeted(model.scores, model.boundary_gradient, x, y, target, eps=1.0, norm=norm, steps=10,
                         rng=np.random.default_rng(0))

    assert np.all(np.argmax(model.scores(found), axis=1) != y)
    distance = _distance(found, x, norm)
    np.testing.assert_array_less(minimal * (1 - 1e-5), distance)  # nothing beats the analytic minimum
    np.testing.assert_array_less(distance, minimal * 1.01)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_only_successes_within_eps_are_returned(affine_problem, norm):
    model, x, y, target = affine_problem
    minimal = model.minimal_distance(x, y, target, norm)
    eps = float(np.median(minimal))

    found = fab_targeted(model.scores, model.boundary_gradient, x, y, target, eps=eps, norm=norm, steps=10,
                         rng=np.random.default_rng(0))

    reachable, unreachable = minimal * 1.01 < eps, minimal > eps
    assert reachable.any() and unreachable.any()
    assert np.all(np.argmax(model.scores(found[reachable]), axis=1) != y[reachable])
    assert np.all(_distance(found, x, norm) <= eps)
    np.testing.assert_array_equal(found[unreachable], x[unreachable])


def test_misclassified_images_are_returned_unchanged(affine_problem):
    model, x, y, target = affine_problem
    wrong = 1 - y  # so every image starts misclassified, and the target may equal its "label"
    found = fab_targeted(model.scores, model.boundary_gradient, x, wrong, wrong, eps=1.0, steps=5,
                         rng=np.random.default_rng(0))
    np.testing.assert_array_equal(found, x)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_restarts_are_reproducible_and_start_eps_over_two_away(affine_problem, norm):
    model, x, y, target = affine_problem
    eps = float(np.median(model.minimal_distance(x, y, target, norm)))
    runs = [fab_targeted(model.scores, model.boundary_gradient, x, y, target, eps=eps, norm=norm, steps=3, restarts=3,
                         rng=np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.all(_distance(runs[0], x, norm) <= eps)

    start = _random_start(x, 0.1, norm, np.random.default_rng(0))  # x in [0.3, 0.7]: no clipping
    np.testing.assert_allclose(_distance(start, x, norm), 0.05, rtol=1e-5)


@pytest.mark.parametrize("arguments", [{"norm": "1"}, {"eps": 0.0}, {"steps": 0}, {"restarts": 0}, {"beta": 1.0},
                                       {"eta": 0.5}, {"alpha_max": 1.5}])
def test_rejects_bad_parameters(affine_problem, arguments):
    model, x, y, target = affine_problem
    with pytest.raises(ConfigError, match=f"Received: {next(iter(arguments))}="):
        fab_targeted(model.scores, model.boundary_gradient, x, y, target, **{"eps": 0.1, **arguments},
                     rng=np.random.default_rng(0))


def test_rejects_target_equal_to_label_of_correct_image(affine_problem):
    model, x, y, _ = affine_problem
    with pytest.raises(ConfigError, match="target == y"):
        fab_targeted(model.scores, model.boundary_gradient, x, y, y, eps=0.1, rng=np.random.default_rng(0))


def _random_problems(seed: int, count: int = 40, dim: int = 6):
    """Feasible problems with the box often active: the points and a point of each hyperplane drawn from Beta(0.5,
    0.5) per coordinate, which puts them near the box's faces."""
    rng = np.random.default_rng(seed)
    points, normal = rng.beta(0.5, 0.5, (count, dim)), rng.standard_normal((count, dim))
    normal[::5, 0] = 0.0  # zero weights must not move
    offset = np.sum(normal * rng.beta(0.5, 0.5, (count, dim)), axis=1)
    return points, normal, offset


def _linprog_linf(point, normal, offset) -> float:
    """min s over (delta, s): |delta_i| <= s, normal . (point + delta) = offset, 0 <= point + delta <= 1."""
    dim = len(point)
    identity, ones = np.eye(dim), np.ones((dim, 1))
    result = linprog(np.r_[np.zeros(dim), 1.0], A_ub=np.block([[identity, -ones], [-identity, -ones]]),
                     b_ub=np.zeros(2 * dim), A_eq=np.r_[normal, 0.0][None], b_eq=[offset - normal @ point],
                     bounds=[(-p, 1 - p) for p in point] + [(0, None)], method="highs")
    assert result.status == 0
    return result.fun


def _qp_l2(point, normal, offset) -> float:
    """min |delta|_2 subject to the same constraints, by SLSQP."""
    result = minimize(lambda d: 0.5 * d @ d, np.clip(np.zeros_like(point), -point, 1 - point), jac=lambda d: d,
                      bounds=[(-p, 1 - p) for p in point], method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
                      constraints=[{"type": "eq", "fun": lambda d: normal @ (point + d) - offset,
                                    "jac": lambda d: normal}])
    assert result.success
    return float(np.linalg.norm(result.x))


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projection_matches_scipy_with_box_active(norm):
    points, normal, offset = _random_problems(seed=3)
    project, solve = (_projection_linf, _linprog_linf) if norm == "inf" else (_projection_l2, _qp_l2)

    delta = project(points, normal, offset)

    np.testing.assert_allclose(np.sum(normal * (points + delta), axis=1), offset, atol=1e-9)
    assert np.all(points + delta >= -1e-12) and np.all(points + delta <= 1 + 1e-12)
    assert np.all(delta[normal == 0] == 0)
    expected = [solve(p, w, b) for p, w, b in zip(points, normal, offset)]
    np.testing.assert_allclose(np.linalg.norm(delta, ORDER[norm], axis=1), expected, rtol=1e-6, atol=1e-9)
    dual = np.linalg.norm(normal, 1 if norm == "inf" else 2, axis=1)
    without_box = np.abs(np.sum(normal * points, axis=1) - offset) / dual
    assert np.mean(np.asarray(expected) > 1.001 * without_box) > 0.4, "too few problems where the box is active"


@pytest.mark.parametrize("project", [_projection_linf, _projection_l2])
def test_projection_beyond_the_box_goes_to_the_nearest_corner(project):
    points, normal, _ = _random_problems(seed=4, count=10)
    offset = np.sum(np.abs(normal), axis=1) + 1.0  # above normal . z for every z in the box

    corner = points + project(points, normal, offset)

    np.testing.assert_allclose(corner, np.where(normal > 0, 1.0, np.where(normal < 0, 0.0, points)), atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_agrees_with_torchattacks(torch_cnn, mnist_subset, norm):
    """torchattacks' FAB (a port of the reference) and ours on the same model and images: per image the minimal
    perturbation each finds, with an eps that covers the whole box, then the success rate at a usual eps.

    With `multi_targeted` and `n_classes=2` torchattacks runs the one target AutoAttack tries first, the second most
    likely class. One restart: no random start, so the eps only filters the end result.
    """
    torchattacks = pytest.importorskip("torchattacks")
    import torch

    x, y = mnist_subset.x_test[:100], mnist_subset.y_test[:100]

    def as_torch(images):
        return torch.tensor(images).permute(0, 3, 1, 2)

    def scores(images):
        with torch.no_grad():
            return torch_cnn(as_torch(images)).numpy()

    def boundary_gradient(images, labels, targets):
        images = as_torch(images).requires_grad_()
        logits, rows = torch_cnn(images), torch.arange(len(labels))
        (logits[rows, torch.as_tensor(targets)] - logits[rows, torch.as_tensor(labels)]).sum().backward()
        return images.grad.permute(0, 2, 3, 1).numpy()

    logits = scores(x)
    correct = np.argmax(logits, axis=1) == y
    whole_box, usual = {"inf": (1.0, 0.1), "2": (28.0, 1.5)}[norm]
    attack = torchattacks.FAB(torch_cnn, norm={"inf": "Linf", "2": "L2"}[norm], eps=whole_box, steps=100,
                              n_restarts=1, multi_targeted=True, n_classes=2)
    theirs = attack(as_torch(x), torch.as_tensor(y)).permute(0, 2, 3, 1).numpy()
    ours = fab_targeted(scores, boundary_gradient, x, y, np.argsort(logits, axis=1)[:, -2], eps=whole_box, norm=norm,
                        steps=100, rng=np.random.default_rng(0))

    distances = {}
    for name, found in (("torchattacks", theirs), ("ours", ours)):
        assert np.all(np.argmax(scores(found[correct]), axis=1) != y[correct]), name
        distances[name] = _distance(found, x, norm)[correct]
    their_rate, our_rate = (float(np.mean(distances[name] <= usual)) for name in ("torchattacks", "ours"))
    their_median, our_median = (float(np.median(distances[name])) for name in ("torchattacks", "ours"))
    same = float(np.mean(np.isclose(distances["ours"], distances["torchattacks"], rtol=0.01)))
    print(f"norm {norm}, {correct.sum()} correct images: success within eps={usual} (torchattacks, ours) "
          f"{their_rate:.3f}, {our_rate:.3f}; median minimal distance {their_median:.5f}, {our_median:.5f}; "
          f"{same:.0%} of images within 1% of each other")
    assert abs(our_rate - their_rate) <= 0.03
    assert our_median == pytest.approx(their_median, rel=0.10)
    assert same >= 0.9  # the same algorithm on the same model: image by image, not only in aggregate
