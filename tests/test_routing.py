import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from capsrobust.layers import RoutingCapsules, SelfAttentionCapsules
from capsrobust.routing import dynamic_routing, self_attention_routing
from capsrobust.routing_reference import matrix_self_attention_routing


def _votes(seed=0, batch=2, children=12, parents=4, dim=6):
    return np.random.default_rng(seed).normal(scale=0.3, size=(batch, children, parents, dim)).astype("float32")


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
def test_shapes_and_couplings_sum_to_one_over_parents(iterations):
    poses, couplings = dynamic_routing(_votes(), iterations)
    assert tuple(poses.shape) == (2, 4, 6)
    assert tuple(couplings.shape) == (2, 12, 4)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(couplings, axis=-1)), 1.0, rtol=1e-6)
    assert np.all(np.linalg.norm(ops.convert_to_numpy(poses), axis=-1) < 1)


def test_one_iteration_couples_uniformly():
    _, couplings = dynamic_routing(_votes(), 1)
    np.testing.assert_allclose(ops.convert_to_numpy(couplings), 0.25, rtol=1e-6)


def test_agreement_raises_the_coupling_to_the_agreeing_parent():
    """Children that all vote the same direction for parent 0 and random directions elsewhere route to parent 0."""
    rng = np.random.default_rng(3)
    votes = rng.normal(scale=0.5, size=(1, 20, 3, 8)).astype("float32")
    votes[:, :, 0, :] = np.ones(8, dtype="float32") * 0.5
    couplings = [ops.convert_to_numpy(dynamic_routing(votes, r)[1])[0, :, 0].mean() for r in (1, 2, 3)]
    assert couplings[0] == pytest.approx(1 / 3)
    assert couplings[0] < couplings[1] < couplings[2]


def test_matches_a_plain_loop_implementation():
    votes = _votes(seed=5)
    b = np.zeros(votes.shape[:3])
    for r in range(3):
        c = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
        s = (c[..., None] * votes).sum(1)
        n2 = (s ** 2).sum(-1, keepdims=True)
        v = n2 / (1 + n2) * s / np.sqrt(n2)
        b = b + (votes * v[:, None]).sum(-1)
    np.testing.assert_allclose(ops.convert_to_numpy(dynamic_routing(votes, 3)[0]), v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_layer_gradients_are_finite_and_nonzero(stop_gradient):
    layer = RoutingCapsules(4, 6, routings=3, stop_gradient=stop_gradient)
    inputs = tf.constant(np.random.default_rng(1).normal(size=(2, 12, 5)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        loss = tf.reduce_sum(layer(inputs) ** 2)
    kernel_grad, input_grad = tape.gradient(loss, [layer.kernel, inputs])
    assert tuple(layer.kernel.shape) == (12, 4, 6, 5)
    for grad in (kernel_grad, input_grad):
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


def test_stop_gradient_changes_gradients_not_values():
    inputs = tf.constant(np.random.default_rng(2).normal(size=(2, 12, 5)).astype("float32"))
    plain, stopped = RoutingCapsules(4, 6, 3), RoutingCapsules(4, 6, 3, stop_gradient=True)
    plain.build(inputs.shape)
    stopped.build(inputs.shape)
    stopped.kernel.assign(plain.kernel)
    grads = []
    for layer in (plain, stopped):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(inputs) ** 2)
        grads.append(tape.gradient(loss, layer.kernel).numpy())
    np.testing.assert_allclose(plain(inputs), stopped(inputs), rtol=1e-6)
    assert not np.allclose(grads[0], grads[1])


def test_zero_iterations_rejected():
    with pytest.raises(ValueError, match="iterations=0"):
        dynamic_routing(_votes(), 0)


def _numpy_self_attention_routing(votes, priors):
    """Mazzia et al. (2021) written out per parent, votes `(batch, parents, children, dim)`, in float64."""
    batch, parents, _, dim = votes.shape
    logits = np.zeros(votes.shape[:3])
    for b in range(batch):
        for j in range(parents):
            agreement = votes[b, j] @ votes[b, j].T / np.sqrt(dim)  # (children, children)
            logits[b, j] = agreement.sum(axis=1)
    couplings = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True) + priors  # softmax over parents
    s = np.einsum("bji,bjid->bjd", couplings, votes)
    norm = np.linalg.norm(s, axis=-1, keepdims=True)
    return (1 - np.exp(-norm)) * s / norm, couplings


def test_self_attention_routing_matches_a_numpy_reference():
    rng = np.random.default_rng(7)
    votes = rng.normal(scale=0.4, size=(2, 4, 12, 6))  # (batch, parents, children, dim)
    priors = rng.normal(scale=0.1, size=(4, 12))
    expected_poses, expected_couplings = _numpy_self_attention_routing(votes, priors)
    poses, couplings = self_attention_routing(tf.constant(votes), tf.constant(priors))
    np.testing.assert_allclose(poses.numpy(), expected_poses, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(couplings.numpy(), expected_couplings.transpose(0, 2, 1), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose((couplings.numpy() - priors.T).sum(-1), 1.0, rtol=1e-9)  # softmax over parents


def test_self_attention_routing_matches_the_matrix_reference_with_gradients():
    rng = np.random.default_rng(8)
    inputs = [tf.constant(rng.normal(scale=0.4, size=(3, 10, 16, 16))), tf.constant(rng.normal(size=(10, 16)))]
    mix = tf.constant(rng.normal(size=(10, 16)))
    results = []
    for routing in (lambda v, b: self_attention_routing(v, b)[0], matrix_self_attention_routing):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            poses = routing(*inputs)
            objective = tf.reduce_sum(poses * mix)
        results.append([poses.numpy(), *(g.numpy() for g in tape.gradient(objective, inputs))])
    for fast, reference in zip(*results):
        np.testing.assert_allclose(fast, reference, rtol=1e-7, atol=1e-10)


def test_self_attention_layer_shapes_and_gradients():
    layer = SelfAttentionCapsules(4, 6)
    inputs = tf.constant(np.random.default_rng(1).normal(size=(2, 12, 5)).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        poses = layer(inputs)
        loss = tf.reduce_sum(poses ** 2)
    assert tuple(poses.shape) == (2, 4, 6) and tuple(layer.votes(inputs).shape) == (2, 12, 4, 6)
    assert tuple(layer.kernel.shape) == (12, 4, 6, 5) and tuple(layer.priors.shape) == (4, 12)
    for grad in tape.gradient(loss, [layer.kernel, layer.priors, inputs]):
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


@pytest.mark.parametrize("iterations", [1, 2, 4])
def test_written_out_gradient_equals_automatic_differentiation_through_poses_and_couplings(iterations):
    """`dynamic_routing`'s own backward pass against automatic differentiation of the same forward pass, in float64,
    for a loss that reads both outputs."""
    from capsrobust.routing import _route

    rng = np.random.default_rng(iterations)
    votes = tf.constant(rng.normal(scale=0.5, size=(2, 6, 9, 4)))  # (b, J, I, D), parents first
    pose_probe, coupling_probe = (tf.constant(rng.normal(size=shape)) for shape in ((6, 4), (9, 6)))

    def loss(poses, couplings):
        return tf.reduce_sum(poses * pose_probe) + tf.reduce_sum(couplings * coupling_probe)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(votes)
        ours = loss(*dynamic_routing(votes, iterations, by_parent=True))
        _, poses, couplings = _route(votes, votes, iterations)[-1]
        automatic = loss(poses, tf.transpose(couplings, (0, 2, 1)))
    np.testing.assert_allclose(ours.numpy(), automatic.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(ours, votes).numpy(), tape.gradient(automatic, votes).numpy(),
                               rtol=1e-9, atol=1e-12)
