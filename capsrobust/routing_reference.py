"""Reference formulations of the routing kernels, kept beside the fast ones to check and to benchmark them against.

Each reference computes the same function as its fast kernel (tests/test_routing_reference.py checks values and
gradients to 1e-5 relative in float64) the plain way: every intermediate tensor is materialised at full size.

- `tiled_dynamic_routing`: the tutorial-notebook CapsNet. It tiles the weight matrices over the batch and the child
  poses over the parents and forms the votes with one batched matmul, `(batch, 1152, 10, 16, 8) @ (..., 8, 1)`, then
  routes with 5-D tensors throughout, tiling the parents' outputs back over the children for the agreement.
  The fast path is `capsule_votes` (one einsum, no tiling) followed by `capsrobust.routing.dynamic_routing`.
- `matrix_self_attention_routing`: Efficient-CapsNet's routing as its definition reads, with each parent's
  `(children, children)` agreement matrix `U_j U_j^T` formed and summed over its rows. The fast kernel
  `capsrobust.routing.self_attention_routing` takes each vote's dot product with the sum of the votes instead.
- `plain_em_routing`: Procedure 1 of Hinton et al. (2018) with the deviations, weighted votes and squared deviations
  of every (child, parent, pose entry) materialised in every iteration, `(batch, positions, children, parents, 16)`
  each. The fast kernel `capsrobust.em_routing.em_routing` reads the votes through two matrix products per iteration.
"""

import math

import numpy as np
from keras import ops

from capsrobust.em_routing import (VARIANCE_FLOOR, activation_logits, initial_assignments, inverse_temperatures,
                                   normalise_over_parents)
from capsrobust.ops import exponential_squash, squash

_LOG_2PI = math.log(2.0 * math.pi)


def tiled_dynamic_routing(inputs, kernel, iterations: int = 3):
    """Votes and routing-by-agreement, formulated with tiling as in the tutorial notebooks.

    Args:
        inputs: child capsules `u`, `(batch, children, child_dim)`.
        kernel: `W`, `(children, parents, parent_dim, child_dim)` (`RoutingCapsules.kernel`).
        iterations: routing iterations, at least 1.

    Returns:
        Parent poses `(batch, parents, parent_dim)`, equal to
        `dynamic_routing(capsule_votes(inputs, kernel), iterations)[0]`.
    """
    batch = ops.shape(inputs)[0]
    children, parents = kernel.shape[0], kernel.shape[1]
    tiled_kernel = ops.tile(ops.expand_dims(kernel, 0), (batch, 1, 1, 1, 1))  # (b, I, J, D, d)
    tiled_inputs = ops.tile(inputs[:, :, None, :, None], (1, 1, parents, 1, 1))  # (b, I, J, d, 1)
    votes = ops.matmul(tiled_kernel, tiled_inputs)  # (b, I, J, D, 1)
    logits = ops.zeros((batch, children, parents, 1, 1), dtype=votes.dtype)
    for iteration in range(iterations):
        couplings = ops.softmax(logits, axis=2)
        total = ops.sum(couplings * votes, axis=1, keepdims=True)  # (b, 1, J, D, 1)
        poses = squash(total, axis=-2)
        if iteration < iterations - 1:
            tiled_poses = ops.tile(poses, (1, children, 1, 1, 1))  # (b, I, J, D, 1)
            logits = logits + ops.matmul(ops.swapaxes(votes, -1, -2), tiled_poses)  # (b, I, J, 1, 1)
    return ops.squeeze(poses, axis=(1, 4))


def matrix_self_attention_routing(votes, priors):
    """Self-attention routing with the agreement matrices materialised, `(batch, parents, children, children)`.

    Args:
        votes: `u_hat`, `(batch, parents, children, parent_dim)`.
        priors: `B`, `(parents, children)`.

    Returns:
        Parent poses `(batch, parents, parent_dim)`, equal to `self_attention_routing(votes, priors)[0]`.
    """
    agreement = ops.matmul(votes, ops.swapaxes(votes, -1, -2)) / math.sqrt(votes.shape[-1])  # (b, J, I, I)
    couplings = ops.softmax(ops.sum(agreement, axis=-1), axis=1) + priors  # (b, J, I)
    return exponential_squash(ops.sum(ops.expand_dims(couplings, -1) * votes, axis=2))


def plain_em_routing(votes, activations, beta_u, beta_a, iterations: int = 3,
                     temperatures: tuple[float, float] = (1.0, 1.0), child_ids: np.ndarray | None = None,
                     num_children: int | None = None, normalize_cost: bool = False):
    """EM routing with every `(batch, positions, children, parents, pose_size)` intermediate materialised.

    Same arguments and results as `capsrobust.em_routing.em_routing` (without `stop_gradient`).
    """
    lambdas = inverse_temperatures(iterations, *temperatures)
    full_shape = ops.shape(votes)
    positions, children = votes.shape[1], votes.shape[2]
    uniform = initial_assignments(votes.shape[3], child_ids, num_children, positions, children)
    assignments = ops.broadcast_to(ops.convert_to_tensor(uniform, dtype=votes.dtype), full_shape[:-1])
    child_activations = ops.broadcast_to(ops.expand_dims(activations, -1), full_shape[:-1])  # (b, P, I, J)
    for iteration, inverse_temperature in enumerate(lambdas):
        weights = ops.broadcast_to(ops.expand_dims(assignments * child_activations, -1), full_shape)
        mass = ops.sum(weights[..., 0], axis=2) + 1e-9  # (b, P, J)
        weighted_votes = weights * votes
        means = ops.sum(weighted_votes, axis=2) / ops.expand_dims(mass, -1)  # (b, P, J, H)
        tiled_means = ops.broadcast_to(ops.expand_dims(means, 2), full_shape)
        deviations = votes - tiled_means
        squared = ops.square(deviations)
        variances = ops.sum(weights * squared, axis=2) / ops.expand_dims(mass, -1) + VARIANCE_FLOOR
        log_sigmas = 0.5 * ops.log(variances)
        logits = activation_logits(log_sigmas, mass, beta_u, beta_a, inverse_temperature, normalize_cost)
        parent_activations = ops.sigmoid(logits)
        if iteration == len(lambdas) - 1:
            break
        tiled_variances = ops.broadcast_to(ops.expand_dims(variances, 2), full_shape)
        tiled_log_sigmas = ops.broadcast_to(ops.expand_dims(log_sigmas, 2), full_shape)
        log_densities = -ops.sum(squared / (2.0 * tiled_variances) + tiled_log_sigmas + 0.5 * _LOG_2PI, axis=-1)
        log_weights = ops.expand_dims(ops.log_sigmoid(logits), 2) + log_densities  # (b, P, I, J)
        assignments = normalise_over_parents(log_weights, 3, child_ids, num_children)
    return means, parent_activations, assignments
