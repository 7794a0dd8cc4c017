"""Routing-by-agreement kernels.

A routing kernel takes the votes of every child capsule for every parent capsule and returns the parents' poses.
Kernels are plain functions on `keras.ops` tensors; layers in `capsrobust.layers` own the weights.
"""

from keras import ops

from capsrobust.ops import squash


def dynamic_routing(votes, iterations: int = 3, stop_gradient: bool = False):
    """Routing-by-agreement, Procedure 1 of Sabour, Frosst & Hinton (2017).

    The routing logits `b` start at zero; each iteration takes coupling coefficients `c = softmax(b)` over the parent
    capsules, forms each parent's total input `s_j = sum_i c_ij * u_hat_j|i`, squashes it to `v_j`, and raises `b_ij` by
    the agreement `u_hat_j|i . v_j`. Formulated with einsum so no tensor larger than `votes` is materialised.

    Args:
        votes: `u_hat`, shape `(batch, num_children, num_parents, parent_dim)`.
        iterations: number of routing iterations, at least 1 (the paper uses 3).
        stop_gradient: if True, the logit updates of all but the last iteration see `votes` through a stop-gradient,
            so the backward pass goes through the final weighted sum only (a common speed/stability choice; the paper
            backpropagates through every iteration).

    Returns:
        A tuple `(poses, couplings)`: `poses` of shape `(batch, num_parents, parent_dim)` with lengths in [0, 1), and
        the final coupling coefficients of shape `(batch, num_children, num_parents)`, which sum to 1 over parents.

    Raises:
        ValueError: if `iterations < 1`.
    """
    if iterations < 1:
        raise ValueError(f"dynamic_routing needs at least one iteration. Received: iterations={iterations}")
    routed_votes = ops.stop_gradient(votes) if stop_gradient else votes
    logits = ops.zeros(ops.shape(votes)[:-1], dtype=votes.dtype)
    for iteration in range(iterations):
        couplings = ops.softmax(logits, axis=-1)
        last = iteration == iterations - 1
        weighted_votes = votes if last else routed_votes
        poses = squash(ops.einsum("bij,bijd->bjd", couplings, weighted_votes))
        if not last:
            logits = logits + ops.einsum("bijd,bjd->bij", routed_votes, poses)
    return poses, couplings
