import json

import numpy as np
import pytest
import tensorflow as tf

from capsrobust.errors import ConfigError
from capsrobust.models import POSES, RECONSTRUCTION, SCORES, create_model, get_model_spec, list_models, model_config
from capsrobust.ops import exponential_squash


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_exposes_uniform_outputs(name):
    model = create_model(name)
    images = np.random.default_rng(0).uniform(size=(3, 28, 28, 1)).astype("float32")
    outputs = {k: np.asarray(v) for k, v in model(images).items()}
    assert outputs[SCORES].shape == (3, 10)
    if model.score_kind == "lengths":
        assert np.all((outputs[SCORES] >= 0) & (outputs[SCORES] < 1))
    elif model.score_kind == "activations":
        assert np.all((outputs[SCORES] > 0) & (outputs[SCORES] < 1))
    else:
        assert model.score_kind == "logits"
    if model.has_decoder:
        assert outputs[POSES].shape == (3, 10, 16)
        assert outputs[RECONSTRUCTION].shape == images.shape
        assert np.all((outputs[RECONSTRUCTION] > 0) & (outputs[RECONSTRUCTION] < 1))
    assert get_model_spec(name).family in ("capsule", "cnn")


@pytest.mark.parametrize("name, overrides, expected", [
    ("capsnet", {}, 8_215_568),                            # paper: 8.2M with the decoder
    ("capsnet", {"reconstruction": False}, 6_804_224),     # paper: 6.8M without
    ("cnn-baseline", {}, 35_445_522),                      # paper: 35.4M
])
def test_paper_parameter_counts(name, overrides, expected):
    assert create_model(name, **overrides).count_params() == expected


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name, overrides, expected", [
    ("efficient-capsnet", {"reconstruction": False}, 161_824),  # paper: 161,824, without the decoder
    ("efficient-capsnet", {}, 161_824 + 1_411_344),            # the 512-1024-784 decoder on 10 x 16 poses
    ("cnn-matched", {}, 163_434),
    ("cnn-matched-recon", {}, 161_994 + 1_411_344),
])
def test_trainable_parameter_counts(name, overrides, expected):
    """Batch norm's moving statistics are not trained and not counted: 576 more weights in each of these models."""
    model = create_model(name, **overrides)
    assert _trainable(model) == expected
    assert model.count_params() == expected + 576


def test_efficient_capsnet_votes_and_vote_scores():
    model = create_model("efficient-capsnet")
    images = np.random.default_rng(2).uniform(size=(2, 28, 28, 1)).astype("float32")
    assert tuple(model.primary_capsules(images).shape) == (2, 16, 8)
    votes = np.asarray(model.votes(images))
    assert votes.shape == (2, 16, 10, 16)
    expected = np.sqrt(np.sum(np.asarray(exponential_squash(votes.mean(axis=1))) ** 2, axis=-1) + 1e-7)
    np.testing.assert_allclose(np.asarray(model.vote_scores(images)), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["efficient-capsnet", "cnn-matched"])
def test_training_loss_and_gradients_are_finite(name):
    model = create_model(name)
    rng = np.random.default_rng(3)
    images = rng.uniform(size=(4, 28, 28, 1)).astype("float32")
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, size=4)]
    with tf.GradientTape() as tape:
        outputs = model({"image": images, "label": labels}, training=True)
        loss = tf.reduce_mean(model.loss_per_example(images, labels, outputs))
    gradients = tape.gradient(loss, model.trainable_weights)
    assert np.isfinite(loss.numpy()) and loss.numpy() > 0
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)


def test_efficient_capsnet_rebuilds_from_its_json_config_and_weights(tmp_path):
    name = "efficient-capsnet"
    model = create_model(name)
    model.norms[0].moving_mean.assign(np.full(32, 0.25, "float32"))  # a non-default weight that is not trained
    model.save_weights(tmp_path / "model.weights.h5")
    config = json.loads(json.dumps(model_config(name)))
    rebuilt = create_model(name, **config)
    rebuilt.load_weights(tmp_path / "model.weights.h5")
    images = np.random.default_rng(4).uniform(size=(2, 28, 28, 1)).astype("float32")
    for key, value in model(images).items():
        np.testing.assert_allclose(np.asarray(rebuilt(images)[key]), np.asarray(value), rtol=1e-6)


def test_small_cnn_matches_small_capsnet_size():
    capsnet = create_model("capsnet-small", reconstruction=False).count_params()
    assert abs(create_model("cnn-small").count_params() - capsnet) / capsnet < 0.05


def test_decoder_is_masked_by_label_when_given():
    model = create_model("capsnet-small")
    model.class_capsules.kernel.assign(model.class_capsules.kernel * 50)  # capsules of trained-model size
    images = np.random.default_rng(1).uniform(size=(2, 28, 28, 1)).astype("float32")
    predicted = np.asarray(model(images)[SCORES]).argmax(-1)
    other = np.eye(10, dtype="float32")[(predicted + 1) % 10]
    by_prediction = np.asarray(model(images)[RECONSTRUCTION])
    by_label = np.asarray(model({"image": images, "label": other})[RECONSTRUCTION])
    same_as_prediction = np.asarray(model({"image": images, "label": np.eye(10, dtype="float32")[predicted]})
                                    [RECONSTRUCTION])
    np.testing.assert_allclose(by_prediction, same_as_prediction, rtol=1e-5)
    assert np.abs(by_prediction - by_label).max() > 1e-6


def test_config_resolution_and_errors():
    config = model_config("capsnet", routings=1, reconstruction=None)
    assert config["routings"] == 1 and config["reconstruction"] is True
    assert config["decoder_units"] == [512, 1024]
    with pytest.raises(ConfigError, match="unknown model 'capsnett'"):
        create_model("capsnett")
    with pytest.raises(ConfigError, match="does not take routings"):
        create_model("cnn-small", routings=3)
    with pytest.raises(ConfigError, match="routings=0"):
        create_model("capsnet-small", routings=0)


def test_list_models_pattern():
    assert list_models("cnn-*") == ["cnn-baseline", "cnn-matched", "cnn-matched-recon", "cnn-recon", "cnn-small"]
    assert set(list_models(family="capsule")) >= {"capsnet", "capsnet-small", "efficient-capsnet"}


# Models the cross-backend suites (test_backends_agree.py) do not load: each one's scores and loss gradient under
# torch, from weights made here. A numpy constant added to a tensor that requires grad once failed under torch only.
_SCORES_AND_GRADIENT = """
import json

import keras
import numpy as np
import torch

from capsrobust.models import SCORES, create_model

weights = {weights!r}
images = np.load({images!r})
labels = keras.ops.one_hot(keras.ops.convert_to_tensor(np.arange(len(images)) % 10), 10)
answer = {{}}
for name, path in weights.items():
    model = create_model(name)
    model.load_weights(path)
    inputs = torch.tensor(images, requires_grad=True)
    scores = model(inputs)[SCORES]
    model.classification_loss(labels, scores).sum().backward()
    answer[name] = {{"scores": scores.detach().numpy().tolist(), "gradient": inputs.grad.numpy().tolist()}}
print(json.dumps(answer))
"""


@pytest.mark.slow
def test_the_matrix_capsule_and_efficient_capsnet_models_run_and_differentiate_under_torch(run_under_backend,
                                                                                          mnist_subset, tmp_path):
    images = mnist_subset.x_test[:4]
    np.save(tmp_path / "images.npy", images)
    weights, here = {}, {}
    for name in ("em-capsnet-small", "efficient-capsnet"):
        model = create_model(name)
        weights[name] = str(tmp_path / f"{name}.weights.h5")
        model.save_weights(weights[name])
        inputs = tf.constant(images)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            scores = model(inputs)[SCORES]
            loss = tf.reduce_sum(model.classification_loss(tf.one_hot(np.arange(4) % 10, 10), scores))
        here[name] = (scores.numpy(), tape.gradient(loss, inputs).numpy())
    output = run_under_backend("torch", _SCORES_AND_GRADIENT.format(weights=weights,
                                                                   images=str(tmp_path / "images.npy")))
    there = json.loads(output.strip().splitlines()[-1])
    # EM routing amplifies float32 rounding: an untrained em-capsnet-small's activations differ by up to 1.8e-4 under
    # torch and 1.1e-3 under JAX from TensorFlow's (1.2e-5 with TensorFlow's oneDNN kernels off), so its bound is wider.
    # Its input gradient then differs by up to 0.6% of its largest entry (the EM kernel's own gradient is checked in
    # float64 under every backend: test_routing_reference.py).
    tolerance = {"em-capsnet-small": (5e-3, 2e-2), "efficient-capsnet": (1e-5, 1e-5)}  # scores, gradient share
    for name, (scores, gradient) in here.items():
        np.testing.assert_allclose(np.asarray(there[name]["scores"]), scores, atol=tolerance[name][0], err_msg=name)
        np.testing.assert_allclose(np.asarray(there[name]["gradient"]), gradient,
                                   atol=tolerance[name][1] * np.abs(gradient).max(), err_msg=name)
