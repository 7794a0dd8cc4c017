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
