"""Training throughput (images/s) of the registry's models: a fixed number of optimizer steps at batch 128.

    CAPSROBUST_DATA=/path/to/data pytest benchmarks/test_training_throughput.py --benchmark-only

Each round runs `STEPS` training steps (batch 128, every model's default) on shift-augmented batches, exactly as the
trainer feeds them, compiled as the trainer compiles them; the first (compiling) step runs before timing. Each model
trains with its convolutions in float32 and in bfloat16 (`capsrobust train --conv-dtype`), side by side.
"""

import numpy as np
import pytest

from benchmarks.measure import training_steps

BATCH = 128
# em-capsnet too: its first ConvCaps casts ~15 MB of votes per image, but the layer routes them in rematerialised
# chunks (`ConvMatrixCapsules.chunk_votes_bytes`), so batch 128 trains in ~2.4 GB (it once ran 24 GB out of memory).
STEPS = 5
MODELS = ["capsnet", "capsnet-small", "efficient-capsnet", "em-capsnet", "em-capsnet-small", "cnn-baseline", "cnn-small"]


@pytest.mark.parametrize("conv_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", MODELS)
def test_train_step_throughput(benchmark, record, benchmark_dataset, name, conv_dtype):
    batch = BATCH
    data = benchmark_dataset
    run = training_steps(name, data, batch, STEPS, conv_dtype=conv_dtype)
    benchmark.pedantic(run, rounds=3, iterations=1)
    record("training", name, conv_dtype, images=STEPS * batch, batch=batch, dataset=data.describe()["source"])
    assert np.isfinite(benchmark.stats.stats.median)
