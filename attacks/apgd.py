"""Auto-PGD (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1): PGD with momentum whose step size halves at checkpoints where progress stalls.

Written here rather than taken from ART (`AutoProjectedGradientDescent`) because ART's returns each image's last
iterate, so an image fooled at step 30 and moved back by step 100 counts as robust, and it has no targeted DLR loss;
the reference keeps every iterate that fooled the model, and so does this one. It runs on numpy callbacks, so it is
the same on every backend's bridge.

Per image: start `x_0` uniform in the eps-ball (the reference starts on its boundary); step `eta = 2 eps`;
`z = P(x_k + eta * s(grad))` with `s` the sign (L-inf) or the normalised gradient (L2) and `P` the projection onto
the eps-ball and [0, 1]; `x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha) (x_k - x_{k-1}))`, `alpha` 1 at the first
step and 0.75 after. At checkpoints `w_j` (after 22% of the steps, then shrinking intervals: 3% less each time, at
least 6%) the step halves and the iterate returns to the best point so far when fewer than 75% of the steps since
the last checkpoint raised the loss, or when the step was not halved and the best loss not improved at the last one.
An image leaves the loop at its first misclassified iterate.
"""

from typing import Callable

import numpy as np

from attacks.iterative import project, random_start, steepest_step

RHO = 0.75  # share of improving steps below which the step halves
MOMENTUM = 0.75
FIRST_CHECKPOINT, CHECKPOINT_SHRINK, MIN_CHECKPOINT = 0.22, 0.03, 0.06


def checkpoints(steps: int) -> list[int]:
    """The steps after which APGD may halve its step (Croce & Hein 2020, section 3.2: `w_j = ceil(p_j steps)`,
    `p_1 = 0.22`, `p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`), in the reference code's integer form: the first
    after `max(int(0.22 steps), 1)` steps, each interval `max(int(0.03 steps), 1)` shorter than the last, never
    shorter than `max(int(0.06 steps), 1)`. For 100 steps: 22, 41, 57, 70, 80, 87, 93, 99."""
    marks, interval = [], max(int(FIRST_CHECKPOINT * steps), 1)
    shrink, shortest = max(int(CHECKPOINT_SHRINK * steps), 1), max(int(MIN_CHECKPOINT * steps), 1)
    while (marks[-1] if marks else 0) + interval <= steps:
        marks.append((marks[-1] if marks else 0) + interval)
        interval = max(interval - shrink, shortest)
    return marks


# `(images, labels) -> ((b,) loss values, (b,) booleans: the real model is fooled, (b, h, w, c) gradient of the
# loss)`, all from one forward-backward pass (`capsrobust.art_bridge.scores_and_gradient`).
Probe = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


def apgd(probe: Probe, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str, steps: int,
         rng: np.random.Generator, batch_size: int = 128) -> np.ndarray:
    """Auto-PGD on a loss, batch by batch.

    Each iterate is probed once, for its loss, whether it fools the model and the gradient of the next step, as in
    the reference; the best point keeps its gradient, so a return to it at a checkpoint needs no new pass.

    Args:
        probe: the loss, success and gradient at a batch of images (`Probe`).
        x: clean images `(n, h, w, c)` float32 in [0, 1].
        y: labels `(n, width)` as `probe` takes them.
        eps: radius of the ball; norm: `"inf"` or `"2"`.
        steps: iterations (100 in AutoAttack).
        rng: draws the random start.
        batch_size: images per batch.

    Returns:
        `(n, h, w, c)` float32: each image's first misclassified iterate, or, if none was, its highest-loss one.
    """
    start = random_start(x, eps, norm, rng)
    result = np.empty_like(x, dtype=np.float32)
    for first in range(0, len(x), batch_size):
        rows = slice(first, first + batch_size)
        result[rows] = _apgd_batch(probe, x[rows], y[rows], start[rows], eps, norm, steps)
    return result


def _apgd_batch(probe, x, y, start, eps, norm, steps) -> np.ndarray:
    n = len(x)
    per_image = (-1,) + (1,) * (x.ndim - 1)
    current, previous = start.copy(), start.copy()
    values, fooled, gradient = probe(start, y)
    best, best_loss, best_gradient = start.copy(), np.array(values, dtype=np.float32), gradient.copy()
    result = start.copy()
    eta = np.full(n, 2 * eps, dtype=np.float32)
    improved = np.zeros(n, dtype=int)  # steps since the last checkpoint that raised the loss
    loss_at_check, halved_at_check = best_loss.copy(), np.ones(n, dtype=bool)
    last_loss = best_loss.copy()
    marks, last_mark = checkpoints(steps), 0
    for k in range(1, steps + 1):
        active = np.flatnonzero(~fooled)
        if not len(active):
            break
        xa, ya = x[active], y[active]
        z = project(current[active] + eta[active].reshape(per_image) * steepest_step(gradient[active], norm), xa,
                    eps, norm)
        alpha = 1.0 if k == 1 else MOMENTUM
        moved = project(current[active] + alpha * (z - current[active])
                        + (1 - alpha) * (current[active] - previous[active]), xa, eps, norm)
        previous[active], current[active] = current[active], moved
        values, won, gradient[active] = probe(moved, ya)
        values = np.asarray(values, dtype=np.float32)
        fooled[active[won]] = True
        result[active[won]] = moved[won]
        improved[active] += values > last_loss[active]
        last_loss[active] = values
        better = values > best_loss[active]
        best[active[better]], best_loss[active[better]] = moved[better], values[better]
        best_gradient[active[better]] = gradient[active[better]]
        if k in marks:
            # Croce & Hein's two conditions: too few improving steps, or no halving and no progress last time.
            stalled = (improved < RHO * (k - last_mark)) | (~halved_at_check & (loss_at_check >= best_loss))
            eta[stalled] /= 2
            current[stalled], gradient[stalled] = best[stalled], best_gradient[stalled]
            halved_at_check, loss_at_check = stalled, best_loss.copy()
            improved[:] = 0
            last_mark = k
    result[~fooled] = best[~fooled]
    return result
