"""The fast routing kernels against their plain reference formulations: same values, same gradients.

In float64, so that the comparison measures the formulations and not float32 rounding, which differs between any two
orders of summation.
"""

import numpy as np
import pytest
import tensorflow as tf

from capsrobust.em_routing import em_routing
from capsrobust.layers import ConvMatrixCapsules
from capsrobust.routing import capsule_votes, dynamic_routing
from capsrobust.routing_reference import plain_em_routing, tiled_dynamic_routing

RTOL = 1e-5


def _assert_close(fast, reference, what):
    fast, reference = np.asarray(fast), np.asarray(reference)
    scale = np.max(np.abs(reference))
    assert scale > 0, f"{what}: the reference is all zeros, which compares nothing"
    np.testing.assert_allclose(fast, reference, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def _values_and_gradients(function, inputs, probe):
    """`function(*inputs)`'s outputs, and the gradient of `probe(outputs)` with respect to every input."""
    inputs = [tf.constant(x) for x in inputs]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = function(*inputs)
        scalar = probe(outputs)
    return [o.numpy() for o in outputs], [g.numpy() for g in tape.gradient(scalar, inputs)]


@pytest.mark.parametrize("by_parent", [False, True], ids=["children-first", "parents-first"])
@pytest.mark.parametrize("iterations", [1, 3, 5])
def test_dynamic_routing_matches_the_tiled_reference(iterations, by_parent):
    rng = np.random.default_rng(iterations)
    inputs = rng.normal(size=(3, 40, 8))
    kernel = rng.normal(scale=0.3, size=(40, 10, 16, 8))
    mix = tf.constant(rng.normal(size=(10, 16)))  # a probe that weights every output differently

    def probe(outputs):
        return tf.reduce_sum(outputs[0] * mix)

    def fast_routing(u, w):
        return (dynamic_routing(capsule_votes(u, w, by_parent), iterations, by_parent=by_parent)[0],)

    fast = _values_and_gradients(fast_routing, [inputs, kernel], probe)
    reference = _values_and_gradients(lambda u, w: (tiled_dynamic_routing(u, w, iterations),), [inputs, kernel], probe)
    _assert_close(fast[0][0], reference[0][0], "poses")
    for name, f, r in zip(["d/du", "d/dW"], fast[1], reference[1]):
        _assert_close(f, r, name)


def _conv_routing_case(rng):
    """Votes of a 3x3 stride-2 convolutional capsule layer over a 7x7 grid of 4 types (overlapping fields)."""
    layer = ConvMatrixCapsules(5, kernel=3, strides=2, dtype="float64")
    poses = rng.normal(size=(2, 7, 7, 4, 16))
    activations = rng.uniform(0.05, 0.95, size=(2, 7, 7, 4))
    layer.build((poses.shape, activations.shape))
    votes, child_activations = layer.votes((tf.constant(poses), tf.constant(activations)))
    return votes.numpy(), child_activations.numpy(), {"child_ids": layer.child_ids, "num_children": layer.num_children}


def _class_routing_case(rng):
    votes = rng.normal(size=(3, 1, 36, 10, 16))
    return votes, rng.uniform(0.05, 0.95, size=(3, 1, 36)), {}


@pytest.mark.parametrize("case", [_conv_routing_case, _class_routing_case], ids=["convolutional", "class"])
@pytest.mark.parametrize("iterations", [1, 2, 3])
@pytest.mark.parametrize("normalize_cost", [False, True])
def test_em_routing_matches_the_plain_reference(case, iterations, normalize_cost):
    rng = np.random.default_rng(iterations)
    votes, activations, layout = case(rng)
    parents = votes.shape[3]
    beta_u, beta_a = rng.normal(scale=0.5, size=parents), rng.normal(scale=0.5, size=parents)
    temperatures = (0.5, 1.0) if normalize_cost else (0.01, 0.02)
    pose_mix = tf.constant(rng.normal(size=votes.shape[1:2] + votes.shape[3:]))
    activation_mix = tf.constant(rng.normal(size=votes.shape[1:2] + votes.shape[3:4]))
    assignment_mix = tf.constant(rng.normal(size=votes.shape[1:4]))

    def probe(outputs):
        return (tf.reduce_sum(outputs[0] * pose_mix) + tf.reduce_sum(outputs[1] * activation_mix)
                + tf.reduce_sum(outputs[2] * assignment_mix))

    def routing(kernel):
        return lambda v, a, bu, ba: kernel(v, a, bu, ba, iterations, temperatures, normalize_cost=normalize_cost,
                                           **layout)

    inputs = [votes, activations, beta_u, beta_a]
    fast = _values_and_gradients(routing(em_routing), inputs, probe)
    reference = _values_and_gradients(routing(plain_em_routing), inputs, probe)
    for name, f, r in zip(["means", "activations", "assignments"], fast[0], reference[0]):
        _assert_close(f, r, name)
    for name, f, r in zip(["d/dvotes", "d/dactivations", "d/dbeta_u", "d/dbeta_a"], fast[1], reference[1]):
        _assert_close(f, r, name)


# Under another backend the EM kernel's written-out gradient runs that backend's automatic differentiation
# (`capsrobust.ops.vjp`) on its recomputed small tensors: the script compares it with the plain reference's
# gradient, both through `vjp`, in float64 (under JAX compiled whole with `jax.jit`, as the trainer runs it).
EM_GRADIENT_UNDER_BACKEND = """
import os
os.environ["JAX_ENABLE_X64"] = "1"  # JAX computes in float32 unless told
import keras
import numpy as np
from keras import ops
from capsrobust.em_routing import em_routing
from capsrobust.layers import ConvMatrixCapsules
from capsrobust.ops import vjp
from capsrobust.routing_reference import plain_em_routing

layer = ConvMatrixCapsules(3, kernel=3, strides=1)
layer.build(((None, 5, 5, 2, 16), (None, 5, 5, 2)))
rng = np.random.default_rng(0)
if keras.backend.backend() == "jax":  # one XLA compilation per case and kernel, not one per operation (a minute)
    import jax
    compiled = jax.jit
else:
    compiled = lambda function: function
cases = {"convolutional": (rng.normal(size=(2, 9, 18, 3, 16)), rng.uniform(0.05, 0.95, size=(2, 9, 18)),
                           {"child_ids": layer.child_ids, "num_children": layer.num_children}),
         "class": (rng.normal(size=(2, 1, 20, 4, 16)), rng.uniform(0.05, 0.95, size=(2, 1, 20)), {})}
worst = 0.0
for name, (votes, activations, layout) in cases.items():
    parents = votes.shape[3]
    inputs = [ops.convert_to_tensor(x) for x in (votes, activations, rng.normal(scale=0.5, size=parents),
                                                   rng.normal(scale=0.5, size=parents))]
    results = []
    for kernel in (em_routing, plain_em_routing):
        def flat(*args, kernel=kernel):
            outputs = kernel(*args, 3, (0.5, 1.0), normalize_cost=True, **layout)
            return ops.concatenate([ops.reshape(o, (-1,)) for o in outputs]), None
        output = compiled(lambda *a, flat=flat: flat(*a)[0])(*inputs)
        cotangent = ops.convert_to_tensor(np.random.default_rng(1).normal(size=output.shape))
        gradients = compiled(lambda *a, flat=flat: vjp(flat, list(a), cotangent)[0])(*inputs)
        results.append([ops.convert_to_numpy(t) for t in [output, *gradients]])
    for fast, reference in zip(*results):
        assert reference.dtype == np.float64 and np.abs(reference).max() > 0
        worst = max(worst, float(np.abs(fast - reference).max() / np.abs(reference).max()))
print(worst)
"""


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_em_routing_gradient_under_another_backend(backend, run_under_backend):
    output = run_under_backend(backend, EM_GRADIENT_UNDER_BACKEND)
    assert float(output.strip().splitlines()[-1]) < RTOL
