"""EM routing between matrix capsules, Procedure 1 of Hinton, Sabour & Frosst (2018).

Every parent capsule is a Gaussian cluster over the votes it receives; each iteration fits the clusters (M-step) and
reassigns each child's vote among the parents that received it (E-step). The E-step runs in the log domain with
log-sum-exp, and variances have a floor, because in the probability domain the Gaussian densities of 16-dimensional
votes under- and overflow float32 after the first iteration: the NaNs public reimplementations report at 2+ iterations.

Convolutional capsules see each child through several overlapping receptive fields. Procedure 1 normalises a child's
assignments over *all* its parents, so the E-step here sums over every output position that received the child
(`child_ids` says which votes come from the same child) rather than over the types at one position only.

The backward pass is written out (`_routing_gradient`): it keeps nothing of the votes' size but the votes, where
automatic differentiation kept and formed several such tensors per iteration (`benchmarks/test_routing.py`).
"""

import math
from typing import NamedTuple

import numpy as np
from keras import ops

from capsrobust.ops import vjp

VARIANCE_FLOOR = 1e-4  # in squared pose units; keeps log(sigma) and 1/sigma^2 finite when a cluster collapses
_LOG_2PI = math.log(2.0 * math.pi)


def inverse_temperatures(iterations: int, first: float, last: float) -> list[float]:
    """The inverse temperature `lambda` of each iteration: rises linearly from `first` to `last`.

    The paper says only that lambda rises over the iterations and gives no schedule; a linear ramp is the simplest
    one. The useful range depends on the cost's scale: about 1 for the standardised cost (`normalize_cost=True`),
    about 0.01 or less for the raw cost, whose size grows with the number of children.
    """
    if iterations < 1:
        raise ValueError(f"EM routing needs at least one iteration. Received: iterations={iterations}")
    if iterations == 1:
        return [float(last)]
    return [float(first + (last - first) * t / (iterations - 1)) for t in range(iterations)]


def normalise_over_parents(log_weights, parent_axis: int, child_ids: np.ndarray | None,
                           num_children: int | None):
    """`exp(log_weights)` normalised to sum to 1 over all the parents of each child: the E-step's `R`.

    Args:
        log_weights: `(batch, positions, children, parents)` or, with `parent_axis=2`,
            `(batch, positions, parents, children)`: `log(a_j p_j)` of each vote.
        parent_axis: the axis of `log_weights` that holds the parents (2 or 3).
        child_ids: `(positions * children,)` ints, the child each vote slot comes from (None: slots are distinct).
        num_children: the number of distinct children (`max(child_ids) + 1`).

    Returns:
        The assignments, `log_weights`' shape.
    """
    per_slot = ops.logsumexp(log_weights, axis=parent_axis)  # (b, P, I)
    if child_ids is not None:
        batch, positions, children = ops.shape(per_slot)
        slots = ops.transpose(ops.reshape(per_slot, (batch, positions * children)))  # (P*I, b): segments on axis 0
        # The max is only a numerical shift; log-sum-exp is exact for any shift, so no gradient needs to pass it.
        shift = ops.stop_gradient(ops.segment_max(slots, child_ids, num_segments=num_children, sorted=False))
        summed = ops.segment_sum(ops.exp(slots - ops.take(shift, child_ids, axis=0)), child_ids,
                                 num_segments=num_children, sorted=False)
        per_child = ops.log(summed) + shift  # (num_children, b); summed >= 1 since the max slot contributes exp(0)
        per_slot = ops.reshape(ops.transpose(ops.take(per_child, child_ids, axis=0)), (batch, positions, children))
    return ops.exp(log_weights - ops.expand_dims(per_slot, parent_axis))


def initial_assignments(num_parents: int, child_ids: np.ndarray | None, num_children: int | None,
                        positions: int, children: int) -> np.ndarray:
    """Uniform assignments `R_ij = 1 / |parents of i|`, `(positions, children, 1)`; a child at the border of a
    convolutional layer has fewer parents than one in the middle."""
    if child_ids is None:
        return np.full((positions, children, 1), 1.0 / num_parents, dtype="float32")
    parent_positions = np.bincount(child_ids, minlength=num_children)[child_ids]
    return (1.0 / (num_parents * parent_positions)).reshape(positions, children, 1).astype("float32")


def activation_logits(log_sigmas, mass, beta_u, beta_a, inverse_temperature: float, normalize_cost: bool):
    """The M-step's `lambda (beta_a - sum_h cost_h)`, with `cost_h = (beta_u + log sigma_h) sum_i R_ij`.

    Args:
        log_sigmas: `(batch, positions, parents, pose_size)`.
        mass: `sum_i R_ij a_i`, `(batch, positions, parents)`.
        beta_u, beta_a: `(parents,)`.
        inverse_temperature: `lambda`.
        normalize_cost: standardise the cost over the parents at each position first (see `em_routing`).

    Returns:
        The logits of the parents' activations, `(batch, positions, parents)`.
    """
    cost = ops.sum(ops.expand_dims(beta_u, -1) + log_sigmas, axis=-1) * mass
    if normalize_cost:
        centred = cost - ops.mean(cost, axis=-1, keepdims=True)
        cost = centred / ops.sqrt(ops.mean(ops.square(centred), axis=-1, keepdims=True) + 1e-6)
    return inverse_temperature * (beta_a - cost)


def em_routing(votes, activations, beta_u, beta_a, iterations: int = 3, temperatures: tuple[float, float] = (1.0, 1.0),
               child_ids: np.ndarray | None = None, num_children: int | None = None, normalize_cost: bool = False,
               stop_gradient: bool = False):
    """EM routing of votes to parent capsules, at every output position at once.

    Args:
        votes: `V`, `(batch, positions, children, parents, pose_size)`: each child's vote for each parent at each
            output position (`positions = 1` for fully connected class capsules; `pose_size = 16` for 4x4 matrices).
        activations: child activations `a_i` in (0, 1), `(batch, positions, children)`.
        beta_u: `(parents,)`, the cost of describing a vote under a parent per unit of assignment and pose dimension.
        beta_a: `(parents,)`, the cost of activating a parent.
        iterations: EM iterations, at least 1 (the paper uses 3).
        temperatures: `(first, last)` inverse temperature; see `inverse_temperatures`.
        child_ids: for convolutional capsules, `(positions * children,)` ints naming the child of each vote slot,
            so that a child seen by overlapping receptive fields splits one unit of assignment among all its parents.
        num_children: the number of distinct children (needed with `child_ids`).
        normalize_cost: standardise `sum_h cost_h` over the parents at each position before the logistic (Zhang's and
            Gritzman's reimplementations). The paper's raw cost scales with the number of children and with the log
            of the vote spread, so one inverse temperature cannot suit every layer; standardised, it can.
        stop_gradient: treat each E-step's assignments as constants in the backward pass, so gradients reach the
            votes only through the final M-step (as `dynamic_routing`'s option of the same name).

    Returns:
        `(poses, parent_activations, assignments)`: the parents' means `mu` `(batch, positions, parents, pose_size)`,
        their activations `(batch, positions, parents)` in (0, 1), and the last E-step's assignments `R`
        `(batch, positions, children, parents)` (the initial uniform ones when `iterations == 1`).
    """
    lambdas = inverse_temperatures(iterations, *temperatures)
    positions, children, parents, pose_size = votes.shape[1:]
    uniform = initial_assignments(parents, child_ids, num_children, positions, children)  # (P, I, 1)
    settings = _Settings(lambdas, np.swapaxes(uniform, 1, 2), child_ids, num_children, normalize_cost, stop_gradient)
    # Parents before children from here on, so that every product with the votes is a plain batched matmul.
    by_parent = ops.transpose(votes, (0, 1, 3, 2, 4))  # (b, P, J, I, H)
    # Read into tensors (`convert_to_tensor` returns a variable as it is): a custom gradient that reads a variable
    # must name it, and this one returns the betas' gradients as those of its inputs.
    beta_u, beta_a = (ops.cast(ops.copy(beta), votes.dtype) for beta in (beta_u, beta_a))
    routed = _routed_with_gradient(by_parent, ops.expand_dims(activations, 2), beta_u, beta_a, settings)
    means, parent_activations = routed[..., :pose_size], routed[..., pose_size]
    return means, parent_activations, ops.swapaxes(routed[..., pose_size + 1:], 2, 3)


class _Settings(NamedTuple):
    """What `em_routing` fixes before routing: the same for the forward pass and the backward pass's rerun."""

    lambdas: list[float]
    uniform: np.ndarray  # (P, 1, I): the first assignments
    child_ids: np.ndarray | None
    num_children: int | None
    normalize_cost: bool
    stop_gradient: bool


def _products(iterations: int) -> list[tuple[bool, bool]]:
    """`(votes on the right, with the squares)` for each product of `_route` with the votes, in the order `_route`
    makes them: per M-step `weights @ V` and `weights @ V^2`, per E-step (all but the last iteration) `V^2 @ r` and
    `V @ r'`. `_route` and `_routing_gradient` both read the order here."""
    return ([(True, False), (True, True), (False, True), (False, False)] * iterations)[:4 * iterations - 2]


def _route(by_parent, child_activations, beta_u, beta_a, settings: _Settings, probes=None):
    """Procedure 1's iterations on parents-first votes; the votes enter only through batched matmuls.

    Each parent's first and second moments are products of the weights with V and V^2, and each vote's squared
    Mahalanobis distance is V^2 . 1/(2 var) - V . mu/var + const: so nothing of the votes' size is formed per
    iteration (the plain formulation, `routing_reference`, forms several such tensors per iteration).

    Args:
        by_parent: `V` as `(b, P, J, I, H)`.
        child_activations: `(b, P, 1, I)`.
        beta_u, beta_a: `(J,)`.
        settings: the routing's fixed settings.
        probes: None, or zeros added to the output of every product with the votes, in `_products`' order:
            `(b, P, J, 1, H)` for the moments, `(b, P, J, I, 1)` for the distances. Their gradients are those of the
            products, from which `_routing_gradient` assembles the votes' gradient.

    Returns:
        `(routed, factors)`: `concatenate([means, activations, assignments])` `(b, P, J, H + 1 + I)`, and the other
        factor of each product: the weights `(b, P, J, 1, I)` of the moments, `1 / (2 var)` and `mu / var`
        `(b, P, J, H, 1)` of the distances.
    """
    squares = ops.square(by_parent)
    pose_size = by_parent.shape[-1]
    order = _products(len(settings.lambdas))
    probes = list(probes or [])
    factors = []

    def product(left, right):
        votes_on_right, _ = order[len(factors)]
        factors.append(left if votes_on_right else right)
        return ops.matmul(left, right) + (probes[len(factors) - 1] if probes else 0.0)

    assignments = ops.broadcast_to(ops.convert_to_tensor(settings.uniform, dtype=by_parent.dtype),
                                   ops.shape(by_parent)[:-1])  # (b, P, J, I)
    for iteration, inverse_temperature in enumerate(settings.lambdas):
        # M-step: fit each parent's Gaussian to the votes, weighted by assignment times child activation.
        weights = assignments * child_activations  # (b, P, J, I)
        mass = ops.sum(weights, axis=-1) + 1e-9  # (b, P, J); sum_i R_ij, kept off zero for 0/0-free means
        row = ops.expand_dims(weights, -2)  # (b, P, J, 1, I)
        means = ops.squeeze(product(row, by_parent), -2) / ops.expand_dims(mass, -1)  # (b, P, J, H)
        second_moments = ops.squeeze(product(row, squares), -2) / ops.expand_dims(mass, -1)
        # E[V^2] - mu^2 loses digits when the spread is small next to the mean; the floor is far above that loss
        # (float32 rounding of ~1e-7 * mu^2) for votes of size below ~10.
        variances = ops.relu(second_moments - ops.square(means)) + VARIANCE_FLOOR
        log_sigmas = 0.5 * ops.log(variances)
        logits = activation_logits(log_sigmas, mass, beta_u, beta_a, inverse_temperature, settings.normalize_cost)
        parent_activations = ops.sigmoid(logits)
        if iteration == len(settings.lambdas) - 1:
            break  # the last E-step would only update assignments that nothing reads
        # E-step: R_ij = a_j p_j(V_ij) / sum over i's parents k of a_k p_k(V_ik), all in log space.
        precisions = 1.0 / variances
        quadratic = ops.squeeze(product(squares, ops.expand_dims(0.5 * precisions, -1))
                                - product(by_parent, ops.expand_dims(means * precisions, -1)), -1)  # (b, P, J, I)
        constant = ops.sum(0.5 * ops.square(means) * precisions + log_sigmas, axis=-1) + 0.5 * pose_size * _LOG_2PI
        log_weights = ops.expand_dims(ops.log_sigmoid(logits) - constant, -1) - quadratic  # log a_j p_j(V_ij)
        assignments = normalise_over_parents(log_weights, 2, settings.child_ids, settings.num_children)
        if settings.stop_gradient:
            assignments = ops.stop_gradient(assignments)
    routed = ops.concatenate([means, ops.expand_dims(parent_activations, -1), assignments], axis=-1)
    return routed, factors


def _routed_with_gradient(by_parent, child_activations, beta_u, beta_a, settings: _Settings):
    """`_route`'s output, with `_routing_gradient` as its gradient: the backward pass keeps nothing of the votes'
    size but the votes, and forms two such tensors where automatic differentiation forms one per product."""

    @ops.custom_gradient
    def routed(by_parent, child_activations, beta_u, beta_a):
        def gradient(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return _routing_gradient(by_parent, child_activations, beta_u, beta_a, settings, upstream)
        return _route(by_parent, child_activations, beta_u, beta_a, settings)[0], gradient

    return routed(by_parent, child_activations, beta_u, beta_a)


def _routing_gradient(by_parent, child_activations, beta_u, beta_a, settings: _Settings, upstream):
    """The gradients of `_route`'s output with respect to its four inputs, given the output's gradient `upstream`.

    The routing runs again with the votes held constant and a zero probe added to every product with them, and the
    backend differentiates it (`capsrobust.ops.vjp`): that gives the gradients of the activations and betas, and of
    every product `L @ V` or `V @ R`. The votes' gradient is the sum over the products of `L^T (x) d(product)` or
    `d(product) (x) R^T` (times `2 V` for the products with `V^2`), summed by one matmul for `V` and one for `V^2`.

    Returns:
        The gradients of `(by_parent (b, P, J, I, H), child_activations, beta_u, beta_a)`.
    """
    constant_votes = ops.stop_gradient(by_parent)
    batch, positions, parents, children, pose_size = ops.shape(by_parent)
    products = _products(len(settings.lambdas))
    probes = [ops.zeros((batch, positions, parents, 1, pose_size) if votes_on_right
                        else (batch, positions, parents, children, 1), dtype=by_parent.dtype)
              for votes_on_right, _ in products]

    def rerouted(child_activations, beta_u, beta_a, *probes):
        return _route(constant_votes, child_activations, beta_u, beta_a, settings, probes)

    gradients, factors = vjp(rerouted, [child_activations, beta_u, beta_a, *probes], upstream)
    lefts, rights = {False: [], True: []}, {False: [], True: []}  # the outer products' factors, for V and V^2
    for (votes_on_right, of_squares), factor, gradient in zip(products, factors, gradients[3:]):
        if votes_on_right:  # weights (b, P, J, 1, I) @ V: weights^T (x) d(product) (b, P, J, 1, H)
            left, right = ops.squeeze(factor, -2), ops.squeeze(gradient, -2)
        else:  # V @ r (b, P, J, H, 1): d(product) (b, P, J, I, 1) (x) r^T
            left, right = ops.squeeze(gradient, -1), ops.squeeze(factor, -1)
        lefts[of_squares].append(left)
        # d(V^2)/dV = 2 V: the 2 scales this small factor, not a tensor of the votes' size
        rights[of_squares].append(2.0 * right if of_squares else right)

    def summed(of_squares: bool):  # sum_k left_k[..., i] right_k[..., h], as (b, P, J, I, K) @ (b, P, J, K, H)
        return ops.matmul(ops.stack(lefts[of_squares], -1), ops.stack(rights[of_squares], -2))

    return (summed(False) + by_parent * summed(True), *gradients[:3])
