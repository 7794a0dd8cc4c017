"""Attack throughput (images/s) through the ART bridge, against ART's stock `TensorFlowV2Classifier` on the same model.

    pytest benchmarks/test_attack_throughput.py --benchmark-only

FGSM, BIM-10 and PGD-100 (eps 0.001) and Square (100 queries) on 128 test images, batch 128: ours through the
bridge against ART's own attack on ART's stock classifier, which differentiates the same per-example loss eagerly, the
way ART 1.20 does for any Keras model; the bridge (`TensorFlowBridge`) runs compiled `tf.function`s, one
forward-backward pass per step that also tells which images are fooled. Untrained weights: the time per step does not
depend on them.
"""

import keras
import numpy as np
import pytest
from art.attacks.evasion import (BasicIterativeMethod, FastGradientMethod, ProjectedGradientDescent,
                                 SquareAttack)
from art.estimators.classification import TensorFlowV2Classifier

from attacks import create_attack
from attacks.square import square_linf
from capsrobust.art_bridge import to_art_classifier
from capsrobust.models import create_model
from capsrobust.models.base import SCORES
from capsrobust.training import seed_everything

IMAGES = 128
EPS = 0.001
# Our attack (method, steps, random start) and ART's own, with the same budget: one step of eps, BIM-10 in steps of
# eps / 10, and Madry et al.'s PGD-100 from a random start, in steps of eps / 40 (2.5 eps / 100).
ATTACKS = {
    "fgsm": (("fgsm", None, False), lambda stock: FastGradientMethod(stock, eps=EPS, batch_size=IMAGES)),
    "bim-10": (("bim", 10, False), lambda stock: BasicIterativeMethod(stock, eps=EPS, eps_step=EPS / 10, max_iter=10,
                                                                      batch_size=IMAGES, verbose=False)),
    "pgd-100": (("pgd", 100, True), lambda stock: ProjectedGradientDescent(
        stock, eps=EPS, eps_step=EPS / 40, max_iter=100, num_random_init=1, batch_size=IMAGES, verbose=False)),
}


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
    """Ours (`create_attack` through the bridge) against ART's attack on ART's stock classifier: the same untrained
    model, images and loss (the model's own, the stock classifier's). The labels are the model's own predictions and
    eps is 0.001, so that almost no image is fooled and ours, which stops an image at its first success, does the
    same work as ART's, which does not."""
    seed_everything(0)
    model = create_model(name)
    images = benchmark_dataset.x_test[:IMAGES]
    bridge = to_art_classifier(model, loss="model", batch_size=IMAGES)  # the stock classifier's loss, no chain
    predicted = bridge.predict(images).argmax(axis=1)
    labels = np.eye(model.num_classes, dtype="float32")[predicted]
    (method, steps, start), stock_attack = ATTACKS[attack]
    if variant == "capsrobust":
        adversary = create_attack(method, bridge, eps=EPS, steps=steps, random_start=start, batch_size=IMAGES,
                                  seed=0)
    else:
        adversary = stock_attack(stock_classifier(model))
    adversary.generate(images, labels)  # compiles

    adversarial = benchmark.pedantic(adversary.generate, args=(images, labels), rounds=2, iterations=1)
    assert np.abs(adversarial - images).max() <= EPS + 1e-6
    survived = int(np.sum(bridge.predict(adversarial).argmax(axis=1) == predicted))
    assert survived >= 0.9 * IMAGES, f"only {survived} of {IMAGES} images survived: the runs did unequal work"
    record("attack", f"{attack} {name}, {IMAGES} images", variant, images=IMAGES, model=name, survived=survived)


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
