"""Capsule maths on `keras.ops`, shared by every capsule layer and routing kernel.

Backend-neutral: the same code runs under the TensorFlow, JAX and torch backends. Only `vjp`, which Keras does not
wrap, imports the running backend's framework, when it is called.
"""

import keras
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


def vjp(function, primals: list, cotangent) -> tuple[list, object]:
    """The vector-Jacobian product of `function` at `primals`, by the running backend's automatic differentiation.

    For custom gradients that differentiate part of a computation again (`capsrobust.em_routing`).

    Args:
        function: tensors -> `(output, aux)`: one tensor, and anything made on the way (tensors, not differentiated).
        primals: the point, a list of tensors.
        cotangent: the output's gradient, the output's shape.

    Returns:
        `(gradients, aux)`: the gradient of `sum(output * cotangent)` with respect to each primal (zeros for a primal
        the output does not depend on), and `function`'s `aux`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(primals)
            output, aux = function(*primals)
        return tape.gradient(output, primals, output_gradients=cotangent,
                             unconnected_gradients=tf.UnconnectedGradients.ZERO), aux
    if backend == "jax":
        import jax

        _, pullback, aux = jax.vjp(function, *primals, has_aux=True)
        return list(pullback(cotangent)), aux
    if backend == "torch":
        import torch

        with torch.enable_grad():
            primals = [p.detach().requires_grad_(True) for p in primals]
            output, aux = function(*primals)
            gradients = torch.autograd.grad(output, primals, cotangent, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(primals, gradients)], aux
    raise NotImplementedError(f"vjp does not support the {backend!r} backend")
