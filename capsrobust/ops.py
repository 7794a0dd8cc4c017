"""Capsule maths on `keras.ops`, shared by every capsule layer and routing kernel.

Backend-neutral: nothing here imports TensorFlow, so the same code runs under the JAX and torch backends.
"""

from keras import ops

# Added under the square root: the gradient of |s| = sqrt(sum s^2) is s/|s|, which is 0/0 = NaN at s = 0.
NORM_EPSILON = 1e-7


def safe_norm(x, axis: int = -1, keepdims: bool = False, epsilon: float = NORM_EPSILON):
    """Euclidean norm with a finite gradient everywhere, including at the zero vector.

    Args:
        x: tensor of any shape.
        axis: the axis to reduce.
        keepdims: keep the reduced axis with length 1.
        epsilon: added to the squared norm before the square root.

    Returns:
        `sqrt(sum(x**2, axis) + epsilon)`, `x`'s shape without `axis` (or with it as 1 when `keepdims`).
    """
    return ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=keepdims) + epsilon)


def squash(s, axis: int = -1, epsilon: float = NORM_EPSILON):
    """The capsule non-linearity of Sabour et al. (2017), eq. 1: `v = |s|^2 / (1 + |s|^2) * s / |s|`.

    Short vectors shrink to almost zero length and long ones to just below 1, keeping their direction.

    Args:
        s: capsule vectors, shape `(..., capsule_dim)` when `axis=-1`.
        axis: the axis that holds each capsule's components.
        epsilon: keeps `s / |s|` and its gradient finite at `s = 0`.

    Returns:
        `v` with `s`'s shape and lengths in [0, 1).
    """
    squared_norm = ops.sum(ops.square(s), axis=axis, keepdims=True)
    scale = squared_norm / (1.0 + squared_norm) / ops.sqrt(squared_norm + epsilon)
    return scale * s


def exponential_squash(s, axis: int = -1, epsilon: float = NORM_EPSILON):
    """The squash of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021): `v = (1 - e^-|s|) s / |s|`.

    Near zero it is almost the identity (`|v| ~ |s|`, where `squash` is quadratic, `|v| ~ |s|^2`), so short capsules
    keep their gradient; long ones approach length 1 like `squash`'s.

    Args:
        s: capsule vectors, shape `(..., capsule_dim)` when `axis=-1`.
        axis: the axis that holds each capsule's components.
        epsilon: added to `|s|^2` under the square root, as in `safe_norm`: keeps the value and the gradient finite
            at `s = 0`, where `v = 0`.

    Returns:
        `v` with `s`'s shape and lengths in [0, 1) (float32 rounds `1 - e^-|s|` to exactly 1 above `|s|` ~ 17).
    """
    norm = safe_norm(s, axis=axis, keepdims=True, epsilon=epsilon)
    # -expm1(-n) is 1 - e^-n without the cancellation of computing 1 - e^-n for small n.
    return (-ops.expm1(-norm) / norm) * s
