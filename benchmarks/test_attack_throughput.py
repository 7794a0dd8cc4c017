"""Attack throughput (images/s) through the ART bridge, against ART's stock `TensorFlowV2Classifier` on the same model.

    pytest benchmarks/test_attack_throughput.py --benchmark-only

FGSM and BIM-10 (eps 0.1, 10 steps of 0.01) and Square (100 queries, eps 0.3) on 128 test images, batch 128. The stock classifier differentiates the
same per-example attack loss, eagerly, the way ART 1.20 does for any Keras model; the bridge (`TensorFlowBridge`) runs a
compiled `tf.function` per batch. Untrained weights: the time per step does not depend on them.
"""

import keras
import numpy as np
import pytest
from art.attacks.evasion import SquareAttack
from art.estimators.classification import TensorFlowV2Classifier

from attacks import create_attack
from attacks.square import square_linf
from capsrobust.art_bridge import to_art_classifier
from capsrobust.models import create_model
from capsrobust.models.base import SCORES
from capsrobust.training import seed_everything

IMAGES = 128
ATTACKS = {"fgsm": {}, "bim-10": {"steps": 10, "step_size": 0.01}}


def stock_classifier(model) -> TensorFlowV2Classifier:
    """ART's own wrapper of `model`, as a user would build it: no batching or compilation of ours."""
    per_example = model.classification_loss
    return TensorFlowV2Classifier(model=lambda images, training=False: model(images, training=training)[SCORES],
                                  nb_classes=model.num_classes, input_shape=model.image_shape,
                                  loss_object=lambda labels, scores: keras.ops.mean(per_example(labels, scores)),
                                  channels_first=False, clip_values=(0.0, 1.0))


@pytest.mark.parametrize("variant", ["capsrobust", "art-stock"])
@pytest.mark.parametrize("attack", list(ATTACKS))
@pytest.mark.parametrize("name", ["capsnet-small", "cnn-small"])
def test_attack_throughput(benchmark, record, benchmark_dataset, name, attack, variant):
    seed_everything(0)
    model = create_model(name)
    images = benchmark_dataset.x_test[:IMAGES]
    labels = np.eye(model.num_classes, dtype="float32")[benchmark_dataset.y_test[:IMAGES]]
    classifier = to_art_classifier(model, batch_size=IMAGES) if variant == "capsrobust" else stock_classifier(model)
    method = "fgsm" if attack == "fgsm" else "bim"
    adversary = create_attack(method, classifier, eps=0.1, batch_size=IMAGES, **ATTACKS[attack])
    adversary.generate(images, labels)  # compiles

    adversarial = benchmark.pedantic(adversary.generate, args=(images, labels), rounds=3, iterations=1)
    assert np.abs(adversarial - images).max() <= 0.1 + 1e-6
    record("attack", f"{attack} {name}, {IMAGES} images", variant, images=IMAGES, model=name)


SQUARE_QUERIES, SQUARE_EPS = 100, 0.002


@pytest.mark.parametrize("variant", ["capsrobust", "art-stock"])
@pytest.mark.parametrize("name", ["capsnet-small", "cnn-small"])
def test_square_throughput(benchmark, record, benchmark_dataset, name, variant):
    """L-inf Square, 100 queries: `attacks.square` through the bridge (one forward pass per query) against ART's
    `SquareAttack` on its stock classifier (three per query). The labels are the untrained model's own predictions
    and eps is 0.002, so that almost every image survives every query in both and the work is the same."""
    seed_everything(0)
    model = create_model(name)
    images = benchmark_dataset.x_test[:IMAGES]
    bridge = to_art_classifier(model, batch_size=IMAGES)
    labels = bridge.predict(images).argmax(axis=1)
    if variant == "capsrobust":
        def run():
            return square_linf(bridge.predict, images, labels, eps=SQUARE_EPS, queries=SQUARE_QUERIES, p_init=0.8,
                               rng=np.random.default_rng(0))[0]
    else:
        attack = SquareAttack(stock_classifier(model), norm=np.inf, eps=SQUARE_EPS, max_iter=SQUARE_QUERIES,
                              p_init=0.8, nb_restarts=1, batch_size=IMAGES, verbose=False)

        def run():
            return attack.generate(images, np.eye(model.num_classes, dtype="float32")[labels])
    run()  # compiles

    adversarial = benchmark.pedantic(run, rounds=3, iterations=1)
    survived = int(np.sum(bridge.predict(adversarial).argmax(axis=1) == labels))
    assert survived >= 0.9 * IMAGES, f"only {survived} of {IMAGES} images survived: the runs did unequal work"
    record("attack", f"square-{SQUARE_QUERIES} {name}, {IMAGES} images", variant, images=IMAGES, model=name,
           survived=survived)
