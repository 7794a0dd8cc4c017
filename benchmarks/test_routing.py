"""Routing kernels, fast against reference: seconds per call and peak memory, forward and forward+backward.

    pytest benchmarks/test_routing.py --benchmark-only --benchmark-group-by=param:batch
    python -m benchmarks.report

Dynamic routing: CapsNet's DigitCaps (1152 children of 8 dimensions -> 10 parents of 16), 1/3/5 iterations, votes
included (the reference tiles `W` and `u` to form them; the fast kernel uses one einsum). EM routing: the votes of
`em-capsnet`'s and `em-capsnet-small`'s convolutional and class capsule layers on 28x28 inputs, 3 iterations, the
models' routing settings. Both kernels of a pair run the same compiled way: `tf.function` graphs under TensorFlow, as
the ART bridge runs them, or with `--jit` compiled by XLA, as the trainer runs them (`jit_compile="auto"`).
"""


import numpy as np
import pytest

from benchmarks.measure import CompiledStep, timed_rounds, to_device
from capsrobust.em_routing import em_routing
from capsrobust.ops import squash
from capsrobust.routing import capsule_votes, dynamic_routing
from capsrobust.routing_reference import plain_em_routing, tiled_dynamic_routing

BATCHES = [1, 32, 128]
MODES = ["forward", "fwd+bwd"]
# Votes tensors above this are skipped: the reference keeps dozens of tensors of the votes' size for the backward
# pass, and em-capsnet's second ConvCaps at batch 128 (680 MB of votes) ran a 24 GB machine out of memory.
# Skipped: em-capsnet's first ConvCaps at batch 32 and 128, its second at batch 128.
MAX_VOTES_BYTES = 256 << 20


@pytest.mark.parametrize("variant", ["fast", "reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("iterations", [1, 3, 5])
@pytest.mark.parametrize("batch", BATCHES)
def test_dynamic_routing(benchmark, record, jit, batch, iterations, mode, variant):
    rng = np.random.default_rng(0)
    inputs = np.asarray(squash(rng.normal(size=(batch, 1152, 8)).astype("float32")))
    kernel = rng.normal(scale=0.05, size=(1152, 10, 16, 8)).astype("float32")
    if variant == "fast":
        def routing(u, w):
            return dynamic_routing(capsule_votes(u, w, by_parent=True), iterations, by_parent=True)[0]
    else:
        def routing(u, w):
            return tiled_dynamic_routing(u, w, iterations)
    probe = rng.normal(size=(10, 16)).astype("float32")
    step = CompiledStep(routing, [probe], backward=mode == "fwd+bwd", jit=jit)
    peak = timed_rounds(benchmark, step, to_device([inputs, kernel]))
    record("routing", f"dynamic {iterations} it, batch {batch}, {mode}{', xla' * jit}", variant, peak_bytes=peak,
           batch=batch, xla=jit)


def _em_layers() -> dict:
    """name -> (positions, children, parents, child_ids, num_children) of each EM routing in the two models."""
    from capsrobust.models import create_model

    shapes = {}
    for model_name in ("em-capsnet", "em-capsnet-small"):
        model = create_model(model_name)
        model(np.zeros((1, 28, 28, 1), "float32"))
        for layer in model.conv_capsules:
            positions = layer.out_height * layer.out_width
            shapes[f"{model_name} {layer.name}"] = (positions, len(layer.child_ids) // positions, layer.types,
                                                    layer.child_ids, layer.num_children)
        head = model.class_capsules
        grid = head.centres.shape[0] * head.centres.shape[1]  # input positions
        shapes[f"{model_name} class_capsules"] = (1, grid * head.in_types, head.types, None, None)
    return shapes


EM_LAYERS = _em_layers()


@pytest.mark.parametrize("variant", ["fast", "reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", list(EM_LAYERS))
@pytest.mark.parametrize("batch", BATCHES)
def test_em_routing(benchmark, record, jit, batch, layer, mode, variant):
    positions, children, parents, child_ids, num_children = EM_LAYERS[layer]
    shape = (batch, positions, children, parents, 16)
    if np.prod(shape) * 4 > MAX_VOTES_BYTES:
        pytest.skip(f"{np.prod(shape) * 4 / 2**20:,.0f} MiB of votes (limit {MAX_VOTES_BYTES / 2**20:.0f} MiB)")
    rng = np.random.default_rng(0)
    votes = rng.normal(size=shape).astype("float32")
    activations = rng.uniform(size=shape[:3]).astype("float32")
    betas = np.zeros(parents, "float32")
    kernel = em_routing if variant == "fast" else plain_em_routing

    def routing(v, a, beta_u, beta_a):
        means, parent_activations, _ = kernel(v, a, beta_u, beta_a, 3, (0.5, 1.0), child_ids, num_children,
                                              normalize_cost=True)
        return means, parent_activations

    probes = [rng.normal(size=(positions, parents, 16)).astype("float32"),
              rng.normal(size=(positions, parents)).astype("float32")]
    step = CompiledStep(routing, probes, backward=mode == "fwd+bwd", jit=jit)
    peak = timed_rounds(benchmark, step, to_device([votes, activations, betas, betas]))
    record("routing", f"EM {layer}, batch {batch}, {mode}{', xla' * jit}", variant, peak_bytes=peak, batch=batch,
           xla=jit)
