"""Training and attack throughput (images/s) on the running Keras backend, for the backend comparison.

    python -m benchmarks.backends              # this file once per installed backend, then the table
    KERAS_BACKEND=jax pytest benchmarks/test_backend_throughput.py --benchmark-only   # one backend

Per model: `TRAIN_STEPS` optimizer steps at batch 128 (as the trainer compiles them), FGSM on `FGSM_IMAGES` test
images and PGD-100 (Madry et al.: 100 steps of 0.01, random start, eps 0.3) on `PGD_IMAGES`, both through the ART
bridge the backend gets (`capsrobust.art_bridge.to_art_classifier`), batch 128. The first call (compilation) runs
before timing. Untrained weights: the time per step does not depend on them. The test ids carry the backend, so the
results of every backend's run stand side by side in the results file.
"""

import keras
import numpy as np
import pytest

from attacks import create_attack
from benchmarks.measure import training_steps
from capsrobust.art_bridge import to_art_classifier
from capsrobust.models import create_model
from capsrobust.training import seed_everything

BACKEND = keras.backend.backend()
MODELS = ["capsnet-small", "cnn-small", "capsnet"]
BATCH = 128
TRAIN_STEPS = 3
FGSM_IMAGES = 256
PGD_IMAGES = 32


@pytest.mark.parametrize("backend", [BACKEND])
@pytest.mark.parametrize("name", MODELS)
def test_train_throughput(benchmark, record, benchmark_dataset, name, backend):
    run = training_steps(name, benchmark_dataset, BATCH, TRAIN_STEPS)
    benchmark.pedantic(run, rounds=3, iterations=1)
    record("backend", f"{name} train", backend, images=TRAIN_STEPS * BATCH, model=name, measure="train")


@pytest.mark.parametrize("backend", [BACKEND])
@pytest.mark.parametrize("attack", ["fgsm", "pgd100"])
@pytest.mark.parametrize("name", MODELS)
def test_attack_throughput(benchmark, record, benchmark_dataset, name, attack, backend):
    seed_everything(0)
    model = create_model(name)
    count = FGSM_IMAGES if attack == "fgsm" else PGD_IMAGES
    images, labels = benchmark_dataset.x_test[:count], benchmark_dataset.y_test[:count]
    classifier = to_art_classifier(model, batch_size=BATCH)
    adversary = create_attack(attack, classifier, eps=0.3, batch_size=BATCH, seed=0)
    create_attack("fgsm", classifier, eps=0.3, batch_size=BATCH).generate(images, labels)  # compiles these shapes

    adversarial = benchmark.pedantic(adversary.generate, args=(images, labels), rounds=1 if attack == "pgd100" else 3,
                                     iterations=1)
    assert np.abs(adversarial - images).max() <= 0.3 + 1e-6
    record("backend", f"{name} {attack}", backend, images=count, model=name, measure=attack)
