"""Adversarial training throughput (images/s) beside plain training, per model and method, in one run.

    CAPSROBUST_DATA=/path/to/data pytest benchmarks/test_adversarial_throughput.py --benchmark-only

Each round runs `STEPS` training steps at batch 128 as `benchmarks/test_training_throughput.py` does; the adversarial
variants make their attack inside each step (`capsrobust.training.adversarial`): PGD-7 and TRADES with 7 attack steps
cost about 8 forward-backward passes per image, FGSM-RS about 2. `python -m benchmarks.report` puts them side by side.
"""

import numpy as np
import pytest

from benchmarks.measure import training_steps

BATCH = 128
STEPS = 3
MODELS = ["cnn-small", "capsnet-small", "efficient-capsnet"]
METHODS = ["plain", "pgd", "fgsm-rs", "trades"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_adversarial_train_step_throughput(benchmark, record, benchmark_dataset, name, method):
    from capsrobust.training.adversarial import ThreatModel

    threat = None if method == "plain" else ThreatModel.create(method, eps=0.3)
    run = training_steps(name, benchmark_dataset, BATCH, STEPS, threat=threat)
    benchmark.pedantic(run, rounds=2, iterations=1)
    label = method if threat is None or method == "fgsm-rs" else f"{method}-{threat.steps}"
    record("adversarial", name, label, images=STEPS * BATCH, batch=BATCH,
           dataset=benchmark_dataset.describe()["source"])
    assert np.isfinite(benchmark.stats.stats.median)


@pytest.mark.parametrize("name", MODELS)
def test_pgd_train_step_throughput_with_bfloat16_convolutions(benchmark, record, benchmark_dataset, name):
    """PGD-7 training as above with `--conv-dtype bfloat16`: the attack's passes run the convolutions in it too."""
    from capsrobust.training.adversarial import ThreatModel

    threat = ThreatModel.create("pgd", eps=0.3)
    run = training_steps(name, benchmark_dataset, BATCH, STEPS, threat=threat, conv_dtype="bfloat16")
    benchmark.pedantic(run, rounds=2, iterations=1)
    record("adversarial", name, f"pgd-{threat.steps} bf16", images=STEPS * BATCH, batch=BATCH,
           dataset=benchmark_dataset.describe()["source"])
    assert np.isfinite(benchmark.stats.stats.median)
