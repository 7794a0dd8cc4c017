"""Square Attack (L-inf): the reference's schedule, one forward pass per query, the eps-ball, and against torchattacks'
port of the reference on the same CNN."""

import numpy as np
import pytest

from attacks.square import margins, square_linf, window_share


def test_window_share_follows_standard_autoattacks_schedule():
    # The reference's p_selection without rescaling: p_init up to iteration 10, halved after 10, 50, 200, ..., 8000.
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 200: 0.2, 201: 0.1, 1001: 0.025, 4000: 0.8 / 64,
                4001: 0.8 / 128, 4999: 0.8 / 128, 8001: 0.8 / 512}
    assert {iteration: window_share(iteration, 0.8) for iteration in expected} == pytest.approx(expected)


class Linear:
    """`scores = W x + b` on flattened `(n, 8, 8, 1)` images, counting the images it scores."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.weights = rng.normal(0.0, 1.0, (10, 64))
        self.bias = rng.normal(0.0, 1.0, 10)
        self.scored = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.scored += len(images)
        return images.reshape(len(images), -1).astype(np.float64) @ self.weights.T + self.bias


@pytest.fixture
def linear_problem():
    model = Linear()
    x = np.random.default_rng(1).uniform(0.0, 1.0, (200, 8, 8, 1)).astype(np.float32)
    return model, x, model(x).argmax(axis=1)


def test_stays_in_the_ball_and_the_box_and_one_forward_pass_per_query(linear_problem):
    model, x, labels = linear_problem
    model.scored = 0

    found, used = square_linf(model, x, labels, eps=0.05, queries=300, p_init=0.8, rng=np.random.default_rng(0))

    assert np.abs(found - x).max() <= 0.05 + 1e-6
    assert found.min() >= 0.0 and found.max() <= 1.0
    # Every image is scored once per query it used, and never again: the margin of its best point is kept.
    assert model.scored == used.sum()
    fooled = margins(model(found), labels) <= 0
    assert 0 < fooled.sum() < len(x), "eps chosen so that some but not all images fall"
    assert np.all(used[~fooled] == 301), "a survivor uses the whole budget (300 queries and the stripes)"
    assert np.all(used[fooled] <= 301)


def test_a_larger_budget_fools_at_least_as_many_and_only_lowers_margins(linear_problem):
    model, x, labels = linear_problem
    short, _ = square_linf(model, x, labels, eps=0.05, queries=50, p_init=0.8, rng=np.random.default_rng(0))
    long, _ = square_linf(model, x, labels, eps=0.05, queries=300, p_init=0.8, rng=np.random.default_rng(0))

    # The same generator: the first 50 iterations are the same draws, so the longer run continues the shorter one.
    short_margin, long_margin = margins(model(short), labels), margins(model(long), labels)
    still = short_margin > 0
    assert np.all(long_margin[still] <= short_margin[still] + 1e-9)
    assert np.sum(long_margin <= 0) > np.sum(short_margin <= 0)


def test_a_search_continued_from_a_saved_state_returns_what_the_whole_search_does(linear_problem, monkeypatch):
    import copy

    import attacks.square

    monkeypatch.setattr(attacks.square, "STATE_EVERY", 40)
    model, x, labels = linear_problem
    states = []
    whole = square_linf(model, x, labels, eps=0.05, queries=300, p_init=0.8, rng=np.random.default_rng(0),
                        on_state=lambda state: states.append(copy.deepcopy(state)))
    assert [state["iteration"] for state in states] == [40, 80, 120, 160, 200, 240, 280]
    # As a stopped process would find it: a new generator, and the state saved at iteration 120 (after a halving).
    continued = square_linf(model, x, labels, eps=0.05, queries=300, p_init=0.8, rng=np.random.default_rng(7),
                            state=states[2])
    for a, b in zip(whole, continued, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_agrees_with_torchattacks(torch_cnn, mnist_subset):
    """torchattacks' Square (a port of the reference) with standard AutoAttack's schedule and ours, on the same model
    and images: the same success rate, up to the spread between two seeds of either."""
    torchattacks = pytest.importorskip("torchattacks")
    import torch

    x, y = mnist_subset.x_test[:200], mnist_subset.y_test[:200]

    def scores(images):
        with torch.no_grad():
            return torch_cnn(torch.tensor(images).permute(0, 3, 1, 2)).numpy()

    correct = scores(x).argmax(axis=1) == y
    x, y = x[correct], y[correct]
    eps, queries = 0.12, 500
    rates = {}
    for seed in (0, 1):
        attack = torchattacks.Square(torch_cnn, norm="Linf", eps=eps, n_queries=queries, n_restarts=1, seed=seed,
                                     resc_schedule=False)
        theirs = attack(torch.tensor(x).permute(0, 3, 1, 2), torch.tensor(y)).permute(0, 2, 3, 1).numpy()
        ours, _ = square_linf(scores, x, y, eps=eps, queries=queries, p_init=0.8, rng=np.random.default_rng(seed))
        for name, found in (("torchattacks", theirs), ("ours", ours)):
            assert np.abs(found - x).max() <= eps + 1e-6, name
            rates[name, seed] = float(np.mean(scores(found).argmax(axis=1) != y))
    print(f"{len(x)} correct images, eps {eps}, {queries} queries: success rates {rates}")
    spread = max(abs(rates["ours", 0] - rates["ours", 1]), abs(rates["torchattacks", 0] - rates["torchattacks", 1]))
    assert 0.2 < rates["torchattacks", 0] < 0.9, "eps chosen so that the rate can differ either way"
    mean_ours = (rates["ours", 0] + rates["ours", 1]) / 2
    mean_theirs = (rates["torchattacks", 0] + rates["torchattacks", 1]) / 2
    assert abs(mean_ours - mean_theirs) <= max(spread, 0.03) + 0.03
