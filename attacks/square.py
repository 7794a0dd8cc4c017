"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020), L-inf, as standard AutoAttack runs it.

A random search on the margin `z_y - max_{k != y} z_k` of the scores. It starts from vertical stripes of +-eps (one
sign per image, column and channel) and at each iteration sets one square window of every image still classified
correctly to `x_best + 2 eps s` (one sign `s` per channel, shared by the batch, as in the reference), projected onto
the eps-ball and [0, 1]; an image keeps the change where it lowered its margin. The window's side is
`round(sqrt(p * h * w))`, where `p` starts at `p_init` and halves after iterations 10, 50, 200, 500, 1,000, 2,000,
4,000, 6,000 and 8,000 (standard AutoAttack: `resc_schedule=False`, so a 5,000-query run ends at `p_init / 128`).

Written here rather than taken from ART (`SquareAttack`) because ART runs three forward passes per iteration (it
re-predicts every image and re-computes the current loss before trying the new one) where the reference runs one, and
rescales the schedule to the query budget (`resc_schedule=True`), which is not what standard AutoAttack runs. Here
the margin of each image's best point is kept, so each query is one forward pass on the images not yet fooled.
"""

from typing import Callable

import numpy as np

# Iterations after which the square's share of the image halves (the reference's `p_selection`).
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# How often `square_linf` hands its state to `on_state`: 250 queries on 1,000 MNIST images are a few minutes of one
# CPU thread on the zoo's models, and the state is 3 MB.
STATE_EVERY = 250

Scores = Callable[[np.ndarray], np.ndarray]


def window_share(iteration: int, p_init: float) -> float:
    """`p` at `iteration` (0-based): the share of the image's pixels the window covers. `p_init` until iteration 10,
    then halved after each of `HALVINGS`."""
    return p_init / 2 ** sum(iteration > mark for mark in HALVINGS)


def margins(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """`z_y - max_{k != y} z_k` per image, `(n,)`, from scores `(n, classes)` and integer labels `(n,)`;
    `<= 0` where the image is misclassified."""
    rows = np.arange(len(labels))
    true = scores[rows, labels]
    others = scores.copy()
    others[rows, labels] = -np.inf
    return true - others.max(axis=1)


def square_linf(scores: Scores, x: np.ndarray, labels: np.ndarray, *, eps: float, queries: int, p_init: float,
                rng: np.random.Generator, state: dict | None = None,
                on_state: Callable[[dict], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Square Attack, untargeted, on the margin loss.

    Args:
        scores: `(images (b, h, w, c)) -> (b, classes)` class scores (logits or capsule lengths), one forward pass.
        x: clean images `(n, h, w, c)` float32 in [0, 1].
        labels: integer labels `(n,)`.
        eps: L-inf radius.
        queries: iterations after the first query (5,000 in standard AutoAttack).
        p_init: the window's starting share of the image (0.8 in AutoAttack).
        rng: draws the stripes, windows and signs.
        state: a state `on_state` was given by a run on the same inputs and arguments: the search continues from
            it, generator included, and returns what the uninterrupted run returns.
        on_state: called every `STATE_EVERY` iterations with the state (`iteration`, `rng`: the generator's state,
            and the arrays `best`, `best_margin`, `used`), so that hours of queries survive a stopped process.

    Returns:
        `(adversarial (n, h, w, c) float32, queries used (n,) int)`: each image's lowest-margin point, which for an
        image the attack fooled is the first point that fooled it.
    """
    n, h, w, c = x.shape
    if state is None:
        best = np.clip(x + eps * rng.choice([-1.0, 1.0], size=(n, 1, w, c)), 0.0, 1.0).astype(np.float32)
        best_margin = margins(scores(best), labels)
        used, first = np.ones(n, dtype=int), 0
    else:
        best, best_margin, used = (np.array(state[name]) for name in ("best", "best_margin", "used"))
        first, rng.bit_generator.state = state["iteration"], state["rng"]
    for iteration in range(first, queries):
        if on_state is not None and iteration > first and iteration % STATE_EVERY == 0:
            on_state({"iteration": iteration, "rng": rng.bit_generator.state, "best": best,
                      "best_margin": best_margin, "used": used})
        rows = np.flatnonzero(best_margin > 0)
        if not len(rows):
            break
        side = min(max(int(round(np.sqrt(window_share(iteration, p_init) * h * w))), 1), h, w)
        # The reference's corner is in [0, h - side) (so never touches the last row unless side == h).
        top, left = rng.integers(0, max(h - side, 1)), rng.integers(0, max(w - side, 1))
        candidate = best[rows].copy()
        candidate[:, top:top + side, left:left + side, :] += 2 * eps * rng.choice([-1.0, 1.0], size=c)
        candidate = np.clip(np.clip(candidate, x[rows] - eps, x[rows] + eps), 0.0, 1.0)
        margin = margins(scores(candidate), labels[rows])
        # The reference also keeps a misclassified point whose margin did not drop; the best margin is > 0 for every
        # row here, so "lower" already covers it.
        lower = margin < best_margin[rows]
        best[rows[lower]] = candidate[lower]
        best_margin[rows[lower]] = margin[lower]
        used[rows] += 1
    return best, used
