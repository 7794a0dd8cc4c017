"""Training throughput (images/s) of the registry's models: a fixed number of optimizer steps at batch 128.

    CAPSROBUST_DATA=/path/to/data pytest benchmarks/test_training_throughput.py --benchmark-only

Each round runs `STEPS` training steps (batch 128, less where memory forbids) on shift-augmented batches, exactly as the
trainer feeds them, compiled as the trainer compiles them; the first (compiling) step runs before timing.
"""

import numpy as np
import pytest

from benchmarks.measure import training_steps

BATCH = 128
# em-capsnet's routing tensors are (batch, 25 positions, 288 children, 32 parents, 16) floats, ~15 MB per image and
# several alive per iteration for the backward pass: batch 128 needs more memory than a 24 GB machine has.
SMALLER_BATCH = {"em-capsnet": 16}
STEPS = 5
MODELS = ["capsnet", "capsnet-small", "em-capsnet", "em-capsnet-small", "cnn-baseline", "cnn-small"]


@pytest.mark.parametrize("name", MODELS)
def test_train_step_throughput(benchmark, record, benchmark_dataset, name):
    batch = SMALLER_BATCH.get(name, BATCH)
    data = benchmark_dataset
    run = training_steps(name, data, batch, STEPS)
    benchmark.pedantic(run, rounds=3, iterations=1)
    record("training", name, "fast", images=STEPS * batch, batch=batch, dataset=data.describe()["source"])
    assert np.isfinite(benchmark.stats.stats.median)
