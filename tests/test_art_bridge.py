"""The ART bridge: batched predictions equal the model's scores; loss gradients equal a direct tf.GradientTape."""

import numpy as np
import pytest
import tensorflow as tf
from art.estimators.classification import TensorFlowV2Classifier

from capsrobust.art_bridge import LOSSES, attack_loss, to_art_classifier
from capsrobust.errors import ConfigError
from capsrobust.models import create_model

FAMILIES = {"capsule": "capsnet-small", "cnn": "cnn-small"}
# em-capsnet-small with half its capsule types (4 primary, 8 and 8 convolutional), on fewer images: its compiled
# gradient takes long to trace and run on 2 cores, and what is tested is EM routing through the bridge, not its width.
EM_MODEL, EM_CONFIG = "em-capsnet-small", {"primary_types": 4, "conv_types": (8, 8)}
# Small batches keep the eager reference gradients cheap; what is tested is the batching, not the batch size.
BATCH_SIZE = 16
NUM_IMAGES = 40  # more than two batches, the last one partial

PER_EXAMPLE = tuple(loss for loss in LOSSES if loss != "auto")  # "auto" is "ce" in a single pass (tested below)


@pytest.fixture(scope="module")
def models():
    """Freshly built models: exactness of predictions and gradients needs no training."""
    tf.keras.utils.set_random_seed(0)
    return {**{family: create_model(name) for family, name in FAMILIES.items()},
            "em-capsule": create_model(EM_MODEL, **EM_CONFIG)}


@pytest.fixture(scope="module")
def images_and_labels(mnist_subset):
    return mnist_subset.x_test[:NUM_IMAGES], mnist_subset.y_test[:NUM_IMAGES]


def _tape_gradient(model, loss, images, labels):
    """Gradient of the sum of per-example attack losses, straight from the model."""
    one_hot = tf.one_hot(labels, model.num_classes)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        scores = model(x, training=False)["scores"]
        per_example = attack_loss(model, loss)(one_hot, scores)
        total = tf.reduce_sum(per_example)
    return tape.gradient(total, x).numpy(), per_example.numpy()


def test_classifier_carries_the_models_interface(models):
    classifier = to_art_classifier(models["capsule"])
    assert isinstance(classifier, TensorFlowV2Classifier)
    assert classifier.nb_classes == 10 and classifier.input_shape == (28, 28, 1)
    assert tuple(classifier.clip_values) == (0, 1) and not classifier.channels_first
    assert classifier.loss_name == "auto" and LOSSES == ("auto", "model", "ce", "dlr")
    # "auto" is cross-entropy in a single pass (the attacks run it as the chain ce -> dlr).
    images = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    np.testing.assert_array_equal(classifier.compute_loss(images, np.arange(4)),
                                  to_art_classifier(models["capsule"], loss="ce").compute_loss(images, np.arange(4)))


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_equal_the_models_scores_in_batches(models, images_and_labels, family):
    model, (images, _) = models[family], images_and_labels
    classifier = to_art_classifier(model, batch_size=BATCH_SIZE)
    seen = []
    compiled = classifier._compiled_scores[False]
    classifier._compiled_scores[False] = lambda batch: seen.append(len(batch)) or compiled(batch)
    predictions = classifier.predict(images)
    assert seen == [16, 16, 8]  # ART 1.20's own predict would push all 40 at once
    np.testing.assert_allclose(predictions, model(images, training=False)["scores"].numpy(), atol=1e-5)
    seen.clear()
    classifier.predict(images, batch_size=25)
    assert seen == [25, 15]


@pytest.mark.parametrize("loss", PER_EXAMPLE)
@pytest.mark.parametrize("family", FAMILIES)
def test_loss_gradient_equals_a_direct_gradient_tape(models, images_and_labels, family, loss):
    model, (images, labels) = models[family], images_and_labels
    classifier = to_art_classifier(model, loss=loss, batch_size=BATCH_SIZE)
    expected, per_example = _tape_gradient(model, loss, images, labels)
    gradient = classifier.loss_gradient(images, np.eye(10, dtype="float32")[labels])
    assert gradient.shape == images.shape and np.abs(expected).max() > 0
    # DLR divides by the gap between the first and third scores, small between an untrained capsule network's
    # near-equal lengths, which magnifies the float32 rounding of the compiled graph against the eager one: image 24's
    # ten lengths lie within 1e-6 of each other, and its gradient (3e-5) is all rounding next to the steepest's (15).
    # So the capsule network's DLR gradients get ten times the absolute tolerance, its losses a hundred times the rtol.
    dlr = loss == "dlr"
    scale = (1e-5 if dlr and family == "capsule" else 1e-6) * np.abs(expected).max()
    close = {"rtol": 1e-4, "atol": scale + 1e-9}
    np.testing.assert_allclose(gradient, expected, **close)
    # Integer labels, a tf.Tensor input (ART's TensorFlow PGD passes tensors) and another batching give the same rows.
    np.testing.assert_allclose(classifier.loss_gradient(images[:10], labels[:10]), gradient[:10], **close)
    as_tensor = classifier.loss_gradient(tf.constant(images[:10]), tf.one_hot(labels[:10], 10))
    assert tf.is_tensor(as_tensor)
    np.testing.assert_allclose(as_tensor.numpy(), gradient[:10], **close)
    rtol = 1e-3 if dlr else 1e-5
    np.testing.assert_allclose(classifier.compute_loss(images, labels), per_example, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(classifier.compute_loss(images, labels, reduction="mean"), per_example.mean(),
                               rtol=rtol)


# The spread loss (EM's own) alone: the losses of the scores are the same functions of the scores on every model,
# checked above on both other families, and each loss costs its own trace of the EM graph.
@pytest.mark.slow
def test_em_capsules_go_through_the_bridge_like_any_model(models, images_and_labels):
    model, images, labels = models["em-capsule"], images_and_labels[0][:20], images_and_labels[1][:20]
    classifier = to_art_classifier(model, loss="model", batch_size=8)
    # EM routing divides squared vote deviations by variances down to its floor (1e-4), which magnifies the float32
    # rounding differences between the compiled batched graph and the eager one up to 1e4-fold; its variances come
    # from E[V^2] - mu^2, which rounds more than the plain form (tests/test_routing_reference.py checks the two agree
    # to 1e-5 in float64).
    np.testing.assert_allclose(classifier.predict(images), model(images, training=False)["scores"].numpy(), atol=1e-4)
    expected, per_example = _tape_gradient(model, "model", images, labels)
    np.testing.assert_allclose(classifier.loss_gradient(images, labels), expected, rtol=1e-2,
                               atol=1e-3 * np.abs(expected).max())
    np.testing.assert_allclose(classifier.compute_loss(images, labels), per_example, rtol=1e-4, atol=1e-4)


def test_the_model_loss_and_cross_entropy_differ_on_capsules_and_agree_on_cnns(models, images_and_labels):
    # The bridge's losses on the model's eager scores: its compute_loss is the same function of its compiled scores
    # (checked above, and for em-capsnet in the slow tier), and a compiled em-capsnet pass takes seconds to trace and,
    # at an unknown batch size, routes a chunk padded to over a hundred images.
    images, one_hot = images_and_labels[0][:20], tf.one_hot(images_and_labels[1][:20], 10)
    for family, same in (("capsule", False), ("em-capsule", False), ("cnn", True)):
        model = models[family]
        scores = model(images, training=False)["scores"]
        margin, ce = (attack_loss(model, loss)(one_hot, scores).numpy() for loss in ("model", "ce"))
        assert np.allclose(margin, ce) == same, family


def test_class_gradient_is_batched_and_exact(models, images_and_labels):
    model, images, labels = models["cnn"], images_and_labels[0][:20], images_and_labels[1][:20]
    classifier = to_art_classifier(model, batch_size=8)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        picked = tf.reduce_sum(tf.gather(model(x, training=False)["scores"], labels, batch_dims=1))
    expected = tape.gradient(picked, x).numpy()
    np.testing.assert_allclose(classifier.class_gradient(images, label=labels)[:, 0], expected, rtol=1e-4, atol=1e-7)
    every_class = classifier.class_gradient(images)
    assert every_class.shape == (20, 10, 28, 28, 1)
    np.testing.assert_allclose(every_class[np.arange(20), labels], expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kwargs, argument", [({"loss": "margin"}, "loss='margin'"),
                                              ({"loss": "CE"}, "loss='CE'"),
                                              ({"batch_size": 0}, "batch_size=0")])
def test_bad_arguments_raise_one_line_config_errors(models, kwargs, argument):
    with pytest.raises(ConfigError) as error:
        to_art_classifier(models["cnn"], **kwargs)
    message = str(error.value)
    assert "\n" not in message and f"Received: {argument}" in message


@pytest.fixture
def float64_model():
    """Builds a fresh float64 model of a family, so that a finite difference resolves its small untrained gradients."""
    import keras

    # The dtype policy, not only floatx: once any model has been built, layers take their dtype from the policy.
    previous_floatx, previous_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    configs = {**{family: (name, {}) for family, name in FAMILIES.items()}, "em-capsule": (EM_MODEL, EM_CONFIG),
               "cnn-decoder": ("cnn-recon", {})}
    try:
        tf.keras.utils.set_random_seed(1)
        yield lambda family: create_model(configs[family][0], **configs[family][1])
    finally:
        keras.config.set_floatx(previous_floatx)
        keras.config.set_dtype_policy(previous_policy)


# Every family's own gradient path (routing's, EM's and the decoder head's custom or composite gradients) under its
# own loss, and every loss on the dynamic-routing model: the losses are the same functions of the scores on every
# model, and each (model, loss) pair costs its own trace, the EM one most of all. A CNN's own loss is "ce".
@pytest.mark.parametrize("family, loss", [("capsule", "model"), ("capsule", "ce"), ("capsule", "dlr"), ("cnn", "ce"),
                                          ("cnn", "dlr"), ("em-capsule", "model"), ("cnn-decoder", "model")])
@pytest.mark.slow
def test_loss_gradient_matches_a_central_finite_difference(float64_model, mnist_subset, family, loss):
    # A little noise off the black background: at exact zeros every ReLU and max-pool sits on its kink, where the
    # one-sided derivatives a finite difference averages differ from the subgradient backpropagation picks.
    rng = np.random.default_rng(0)
    images = np.clip(mnist_subset.x_test[:3] + rng.uniform(0, 0.1, (3, 28, 28, 1)), 0, 1)
    labels = mnist_subset.y_test[:3]
    # Small, so that few pixels lie within a step of a kink (a ReLU, a max-pool winner or the order of near-tied
    # scores, all common in an untrained model); float64 end to end resolves it to 1e-9.
    step = 1e-6
    classifier = to_art_classifier(float64_model(family), loss=loss)
    gradient = classifier.loss_gradient(images, labels)
    for i in range(len(images)):
        flat = np.abs(gradient[i]).ravel().astype(float)  # pytest >= 9 takes no numpy float32 tolerance
        for pixel in [*np.argsort(flat)[-4:], rng.integers(flat.size)]:  # the steepest four and a random one
            where = np.unravel_index(pixel, images.shape[1:])
            shifted = np.repeat(images[i:i + 1], 2, axis=0)
            shifted[(0, *where)] += step
            shifted[(1, *where)] -= step
            up, down = classifier.compute_loss(shifted, np.repeat(labels[i:i + 1], 2))
            difference = (up - down) / (2 * step)
            assert difference == pytest.approx(gradient[i][where], rel=2e-2, abs=1e-3 * flat.max()), (
                family, i, where)
