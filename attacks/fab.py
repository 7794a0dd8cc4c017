"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), as standard AutoAttack runs it.

FAB looks for the smallest perturbation that changes the prediction. At each step it linearises the decision
boundary between the true class `y` and the target `t` at the current iterate, `f_t(z) - f_y(z) ~ 0`, and projects
both the iterate and the original image onto that hyperplane intersected with the box [0, 1]^d (exact minimal L-inf or
L2 projections). It moves to a mix of the two projections, biased towards the one from the original image so the
perturbation stays small (`alpha = min(|d_orig| / (|d_orig| + |d_iter|), alpha_max)`), overshooting by `eta`; after
each success it steps back towards the original image by `beta`, and it keeps the smallest misclassified iterate.
The target only chooses the hyperplane: success is any class other than `y`, as in AutoAttack.

Standard AutoAttack (fra31/auto-attack, `version='standard'`) runs FAB-T with 100 iterations, 1 restart and 9 target
classes, target `k` (k = 1..9) being the (k+1)-th highest score of the clean image (its k-th most likely wrong class),
each target run only on the images every earlier one failed on; `alpha_max` 0.1, `eta` 1.05, `beta` 0.9. The caller
picks the targets and loops over them; this module runs one target per image.

Differences from the reference (`autoattack/fab_base.py`, `fab_pt.py`, `fab_projections.py`):
- numpy on callbacks, float64 inside the projections (the reference is float32 torch);
- the projections solve for the step length by one sort and cumulative sums instead of a bisection, which gives the
  same minimiser;
- randomness comes from the caller's `rng`, not a global torch seed. Restarts after the first start, as in the
  reference, at a random point at distance `eps / 2` from the image, in the attack's norm, clipped to [0, 1].
"""

from collections.abc import Callable

import numpy as np

from capsrobust.errors import ConfigError

NORMS = ("inf", "2")
Scores = Callable[[np.ndarray], np.ndarray]  # images (b, h, w, c) -> (b, num_classes)
# images, labels (b,), targets (b,) -> (b, h, w, c): the gradient of f_target - f_label, one backward pass
BoundaryGradient = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def fab_targeted(scores: Scores, boundary_gradient: BoundaryGradient, x: np.ndarray, y: np.ndarray, target: np.ndarray, *,
                 eps: float, norm: str = "inf", steps: int = 100, restarts: int = 1, rng: np.random.Generator,
                 alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9) -> np.ndarray:
    """Targeted FAB: for each image, the smallest misclassified point it finds within `eps`.

    Each restart runs only on the images no earlier restart fooled within `eps`; the first starts at the image, later
    ones at a random point `eps / 2` away. Images the model already misclassifies are not attacked.

    Args:
        scores: `images (b, h, w, c) -> (b, num_classes)` class scores (logits or capsule lengths).
        boundary_gradient: `(images (b, h, w, c), labels (b,), targets (b,)) -> (b, h, w, c)`, the gradient of each
            image's `f_target - f_label` with respect to its pixels (one backward pass, as the reference takes it).
        x: clean images `(n, h, w, c)`, float in [0, 1].
        y: true labels `(n,)`.
        target: the class per image `(n,)` whose boundary with `y` is linearised; must differ from `y` where the
            model classifies the image correctly (the others are not attacked).
        eps: the perturbation budget in `norm`.
        norm: `"inf"` or `"2"`.
        steps: iterations per restart (AutoAttack: 100).
        restarts: runs per image, at least 1 (AutoAttack: 1).
        rng: draws the random starts of restarts after the first.
        alpha_max: the largest weight of the step from the original image.
        eta: overshoot past the linearised boundary, at least 1.
        beta: backward step towards the original image after a success, in (0, 1).

    Returns:
        `(n, h, w, c)` float32: the adversarial image where one within `eps` (and [0, 1]) was found, else `x` itself.

    Raises:
        ConfigError: an unknown norm, a parameter out of range, mismatched shapes, or a target equal to the label of
            a correctly classified image.
    """
    _check_params(norm=norm, eps=eps, steps=steps, restarts=restarts, alpha_max=alpha_max, eta=eta, beta=beta)
    x = np.asarray(x, dtype=np.float32)
    y, target = np.asarray(y).astype(np.int64), np.asarray(target).astype(np.int64)
    if y.shape != (len(x),) or target.shape != (len(x),):
        raise ConfigError(f"fab_targeted needs one label and one target per image. Received: x.shape={x.shape}, "
                          f"y.shape={y.shape}, target.shape={target.shape}")
    adversarial = x.copy()
    robust = np.argmax(scores(x), axis=1) == y
    if np.any(robust & (target == y)):  # AutoAttack's "k-th most likely" target may be y where y is not the top class
        raise ConfigError(f"fab_targeted needs targets that differ from the labels of the images it attacks. "
                          f"Received: target == y at images {np.flatnonzero(robust & (target == y))[:10].tolist()}")
    for restart in range(restarts):
        todo = np.flatnonzero(robust)
        if todo.size == 0:
            break
        start = x[todo] if restart == 0 else _random_start(x[todo], eps, norm, rng)
        found, distance = _single_run(scores, boundary_gradient, x[todo], y[todo], target[todo], start, norm=norm,
                                      steps=steps, alpha_max=alpha_max, eta=eta, beta=beta)
        fooled = distance <= eps
        adversarial[todo[fooled]] = found[fooled]
        robust[todo[fooled]] = False
    return adversarial


def _single_run(scores: Scores, boundary_gradient: BoundaryGradient, x0: np.ndarray, y: np.ndarray, target: np.ndarray,
                start: np.ndarray, *, norm: str, steps: int, alpha_max: float, eta: float,
                beta: float) -> tuple[np.ndarray, np.ndarray]:
    """One FAB-T run from `start` `(b, h, w, c)` around `x0` `(b, h, w, c)`.

    Returns:
        `(best (b, h, w, c), distance (b,))`: the closest misclassified iterate and its distance from `x0` in `norm`;
        `x0` and `inf` where no iterate was misclassified.
    """
    batch, shape = len(x0), x0.shape
    rows = np.arange(batch)
    origin = x0.reshape(batch, -1).astype(np.float64)
    point = start.reshape(batch, -1).astype(np.float32)
    best, best_distance = x0.copy(), np.full(batch, np.inf)
    logits = scores(point.reshape(shape))
    for _ in range(steps):
        images = point.reshape(shape)
        gap = logits[rows, target] - logits[rows, y]  # > 0 once the target wins
        normal = boundary_gradient(images, y, target).reshape(batch, -1).astype(np.float64)
        offset = np.sum(normal * point, axis=1) - gap  # the linearised boundary: normal . z = offset
        both = _PROJECTIONS[norm](np.concatenate([point, origin]), np.concatenate([normal, normal]),
                                  np.concatenate([offset, offset]))
        from_point, from_origin = both[:batch], both[batch:]
        length_point = np.maximum(_norm(from_point, norm), 1e-8)
        length_origin = np.maximum(_norm(from_origin, norm), 1e-8)
        alpha = np.minimum(length_point / (length_point + length_origin), alpha_max)[:, None]
        point = np.clip((1 - alpha) * (point + eta * from_point) + alpha * (origin + eta * from_origin),
                        0.0, 1.0).astype(np.float32)

        logits = scores(point.reshape(shape))
        fooled = np.argmax(logits, axis=1) != y
        distance = _norm(point - origin, norm)
        closer = fooled & (distance < best_distance)
        best[closer], best_distance[closer] = point[closer].reshape(-1, *shape[1:]), distance[closer]
        point[fooled] = (origin[fooled] + beta * (point[fooled] - origin[fooled])).astype(np.float32)
        # The next step linearises at this point: its scores are the check's, except where the step back moved it.
        if np.any(fooled):
            logits[fooled] = scores(point[fooled].reshape(-1, *shape[1:]))
    return best, best_distance


def _projection_linf(points: np.ndarray, normal: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The smallest L-inf step from each point onto its hyperplane inside the box [0, 1]^d.

    Every coordinate with a nonzero weight moves against the side the point is on by `min(lam, room_i)` (`room_i`:
    how far it can go before leaving the box), with the smallest `lam` that reaches the hyperplane.

    Args:
        points: `(b, d)` in [0, 1].
        normal: `(b, d)`, the hyperplane `normal . z = offset`.
        offset: `(b,)`.

    Returns:
        `(b, d)` steps `delta` with `normal . (points + delta) = offset` and `points + delta` in the box, of minimal
        L-inf norm; where the box does not reach the hyperplane, the step to the box corner nearest to it.
    """
    return _project(points, normal, offset, speed=np.ones_like(normal))


def _projection_l2(points: np.ndarray, normal: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The smallest L2 step from each point onto its hyperplane inside the box [0, 1]^d; shapes as `_projection_linf`.

    By the KKT conditions coordinate `i` moves `min(mu |w_i|, room_i)` against the side the point is on: the
    unconstrained projection's direction, clipped at the box, with the smallest `mu` that reaches the hyperplane.
    """
    return _project(points, normal, offset, speed=np.abs(normal))


def _project(points: np.ndarray, normal: np.ndarray, offset: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Moves coordinate `i` by `speed_i * min(lam, room_i / speed_i)` towards the hyperplane, `lam` minimal.

    Shapes: `points`, `normal`, `speed` `(b, d)`; `offset` `(b,)`; returns `(b, d)`.
    """
    points, normal = points.astype(np.float64), normal.astype(np.float64)
    excess = np.sum(normal * points, axis=1) - offset
    normal = normal * np.where(excess >= 0, 1.0, -1.0)[:, None]  # now normal . z must drop by |excess|
    room = np.where(normal > 0, points, 1.0 - points) * (normal != 0)
    reach = np.divide(room, speed, out=np.zeros_like(room), where=speed > 0)  # lam at which i hits the box
    lam = _capped_linear_root(np.abs(normal) * speed, reach, np.abs(excess))
    return -np.sign(normal) * speed * np.minimum(lam[:, None], reach)


def _capped_linear_root(weight: np.ndarray, cap: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row, the smallest `lam >= 0` with `sum_i weight_i * min(lam, cap_i) = target`.

    The left side is piecewise linear and nondecreasing in `lam`, with kinks at the sorted caps: evaluate it at every
    kink by cumulative sums, find the segment where it crosses `target`, and solve that segment's linear equation.

    Args:
        weight: `(b, d)`, nonnegative.
        cap: `(b, d)`, nonnegative.
        target: `(b,)`, nonnegative.

    Returns:
        `lam`, `(b,)`; `inf` where even `lam = max(cap)` falls short (the box does not reach the hyperplane).
    """
    order = np.argsort(cap, axis=1)
    cap, weight = np.take_along_axis(cap, order, axis=1), np.take_along_axis(weight, order, axis=1)
    capped = np.cumsum(weight * cap, axis=1) - weight * cap  # sum over caps below the k-th, reached in full
    free = np.sum(weight, axis=1, keepdims=True) - np.cumsum(weight, axis=1) + weight  # weights still growing
    at_kinks = capped + cap * free
    segment = np.sum(at_kinks < target[:, None], axis=1)
    k = np.minimum(segment, cap.shape[1] - 1)[:, None]
    base, slope = np.take_along_axis(capped, k, axis=1)[:, 0], np.take_along_axis(free, k, axis=1)[:, 0]
    lam = np.divide(target - base, slope, out=np.zeros_like(base), where=slope > 0)
    return np.where(segment < cap.shape[1], np.maximum(lam, 0.0), np.inf)


_PROJECTIONS = {"inf": _projection_linf, "2": _projection_l2}


def _norm(delta: np.ndarray, norm: str) -> np.ndarray:
    """Per-row norm of `(b, d)` as float64 `(b,)`."""
    delta = delta.astype(np.float64)
    return np.max(np.abs(delta), axis=1) if norm == "inf" else np.sqrt(np.sum(delta * delta, axis=1))


def _random_start(x: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """A point `eps / 2` from each image `(b, h, w, c)` in `norm`, in a random direction, clipped to [0, 1]."""
    flat = x.reshape(len(x), -1)
    direction = rng.uniform(-1.0, 1.0, flat.shape) if norm == "inf" else rng.standard_normal(flat.shape)
    direction /= np.maximum(_norm(direction, norm), 1e-12)[:, None]
    return np.clip(flat + 0.5 * eps * direction, 0.0, 1.0).astype(np.float32).reshape(x.shape)


def _check_params(*, norm: str, eps: float, steps: int, restarts: int, alpha_max: float, eta: float,
                  beta: float) -> None:
    if norm not in NORMS:
        raise ConfigError(f"fab_targeted supports the norms {NORMS}. Received: norm={norm!r}")
    for name, value, ok, expected in (("eps", eps, eps > 0, "> 0"), ("steps", steps, steps >= 1, ">= 1"),
                                      ("restarts", restarts, restarts >= 1, ">= 1"),
                                      ("alpha_max", alpha_max, 0 <= alpha_max <= 1, "in [0, 1]"),
                                      ("eta", eta, eta >= 1, ">= 1"), ("beta", beta, 0 < beta < 1, "in (0, 1)")):
        if not ok:
            raise ConfigError(f"fab_targeted expects {name} {expected}. Received: {name}={value!r}")
