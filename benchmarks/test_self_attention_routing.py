"""Self-attention routing, fast against reference: seconds per call and peak memory, forward and forward+backward.

    pytest benchmarks/test_self_attention_routing.py --benchmark-only --benchmark-group-by=param:batch
    python -m benchmarks.report

Efficient-CapsNet's class capsules (16 children of 8 dimensions -> 10 parents of 16), votes included, and the same
routing over CapsNet's 1,152 primary capsules, where the `(children, children)` agreement matrices that the reference
forms (`matrix_self_attention_routing`) grow with the square of the children and the fast kernel's sum trick
(`self_attention_routing`) does not. Both kernels of a pair run the same compiled way: `tf.function` graphs under
TensorFlow, as the ART bridge runs them, or with `--jit` compiled by XLA, as the trainer runs them.
"""


import numpy as np
import pytest

from benchmarks.measure import CompiledStep, timed_rounds, to_device
from capsrobust.ops import exponential_squash
from capsrobust.routing import capsule_votes, self_attention_routing
from capsrobust.routing_reference import matrix_self_attention_routing

BATCHES = [1, 32, 128]
MODES = ["forward", "fwd+bwd"]
CHILDREN = {"efficient-capsnet": 16, "capsnet-primary": 1152}
PARENTS, PARENT_DIM, CHILD_DIM = 10, 16, 8
# The reference's agreement matrices, (batch, parents, children, children), are skipped above this, as
# benchmarks/test_routing.py skips large votes: at 1,152 children and batch 32 they would take 1.7 GB.
MAX_AGREEMENT_BYTES = 256 << 20


@pytest.mark.parametrize("variant", ["fast", "reference"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layer", list(CHILDREN))
@pytest.mark.parametrize("batch", BATCHES)
def test_self_attention_routing(benchmark, record, jit, batch, layer, mode, variant):
    children = CHILDREN[layer]
    agreement_bytes = batch * PARENTS * children * children * 4
    if variant == "reference" and agreement_bytes > MAX_AGREEMENT_BYTES:
        pytest.skip(f"{agreement_bytes / 2**20:,.0f} MiB of agreement matrices (limit "
                    f"{MAX_AGREEMENT_BYTES / 2**20:.0f} MiB)")
    rng = np.random.default_rng(0)
    inputs = np.asarray(exponential_squash(rng.normal(size=(batch, children, CHILD_DIM)).astype("float32")))
    kernel = rng.normal(scale=0.04, size=(children, PARENTS, PARENT_DIM, CHILD_DIM)).astype("float32")
    priors = rng.normal(scale=0.01, size=(PARENTS, children)).astype("float32")
    if variant == "fast":
        def routing(u, w, b):
            return self_attention_routing(capsule_votes(u, w, by_parent=True), b)[0]
    else:
        def routing(u, w, b):
            return matrix_self_attention_routing(capsule_votes(u, w, by_parent=True), b)
    probe = rng.normal(size=(PARENTS, PARENT_DIM)).astype("float32")
    step = CompiledStep(routing, [probe], backward=mode == "fwd+bwd", jit=jit)
    peak = timed_rounds(benchmark, step, to_device([inputs, kernel, priors]))
    case = f"self-attention {layer} ({children} children), batch {batch}, {mode}{', xla' * jit}"
    record("routing", case, variant, peak_bytes=peak, batch=batch, xla=jit)
