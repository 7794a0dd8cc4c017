"""Mixed precision of the convolutions (`capsrobust.models.precision`, `--conv-dtype bfloat16`): bfloat16 only where
asked, float32 weights, capsules and scores, and a trained model that computes in float32."""

import dataclasses

import keras
import numpy as np
import pytest

from capsrobust.errors import ConfigError
from capsrobust.models import POSES, SCORES, create_model, model_config
from capsrobust.models.precision import CONV_DTYPES, compute_convolutions_in
from capsrobust.training import TrainSettings, fit


def _layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


# EM routing amplifies the rounding of its poses: up to 0.1 in an activation of an untrained em-capsnet-small.
@pytest.mark.parametrize("name, convolutions, tolerance", [("capsnet-small", 2, 0.05), ("cnn-small", 2, 0.05),
                                                           ("efficient-capsnet", 4, 0.05),
                                                           ("em-capsnet-small", 3, 0.25)])
def test_only_the_convolutions_compute_in_bfloat16(name, convolutions, tolerance, mnist_subset):
    images = mnist_subset.x_test[:16]
    model = create_model(name)
    reference = keras.ops.convert_to_numpy(model(images)[SCORES])
    assert compute_convolutions_in(model, "bfloat16") == convolutions
    for layer in _layers(model):
        expected = "bfloat16" if isinstance(layer, keras.layers.Conv2D) else "float32"
        assert layer.compute_dtype == expected, layer.name
    assert {w.dtype for w in model.weights} == {"float32"}
    outputs = model(images)
    assert keras.backend.standardize_dtype(outputs[SCORES].dtype) == "float32"
    if POSES in outputs:  # the capsules themselves are float32
        assert keras.backend.standardize_dtype(outputs[POSES].dtype) == "float32"
    mixed = keras.ops.convert_to_numpy(outputs[SCORES])
    # bfloat16 keeps 8 bits of mantissa: close to the float32 scores, and not equal to them (it did compute in it)
    assert not np.array_equal(mixed, reference)
    np.testing.assert_allclose(mixed, reference, atol=tolerance * np.abs(reference).max())
    compute_convolutions_in(model, "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(images)[SCORES]), reference)


@pytest.mark.slow
def test_a_run_in_bfloat16_trains_differently_and_returns_a_float32_model(mnist_subset, tmp_path):
    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:256], y_train=mnist_subset.y_train[:256],
                               x_val=mnist_subset.x_val[:64], y_val=mnist_subset.y_val[:64])
    runs = {dtype: fit("cnn-small", model_config("cnn-small"), data,
                       TrainSettings(epochs=1, batch_size=64, conv_dtype=dtype), tmp_path / dtype)
            for dtype in CONV_DTYPES}
    mixed = runs["bfloat16"].model
    assert all(layer.compute_dtype == "float32" for layer in _layers(mixed))
    assert not all(np.array_equal(a, b) for a, b in zip(mixed.get_weights(), runs["float32"].model.get_weights()))
    fresh = create_model("cnn-small")
    fresh.set_weights(mixed.get_weights())
    images = mnist_subset.x_test[:32]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(mixed(images)[SCORES]),
                                  keras.ops.convert_to_numpy(fresh(images)[SCORES]))


def test_an_unknown_conv_dtype_is_refused():
    with pytest.raises(ConfigError, match="conv_dtype='float16'"):
        TrainSettings(conv_dtype="float16")
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        compute_convolutions_in(create_model("cnn-small"), "float16")


def test_the_cli_offers_the_trainers_conv_dtypes():
    from capsrobust.cli.train import CONV_DTYPES as OFFERED

    assert OFFERED == CONV_DTYPES


def test_the_flag_reaches_the_run_record_and_a_resume_keeps_it(tmp_path, monkeypatch):
    from capsrobust.cli import parse_args
    from capsrobust.cli import train as train_command
    from capsrobust.store import ModelStore

    trained_with = []
    monkeypatch.setattr(train_command, "_train_and_publish",  # stands in for an interrupted run
                        lambda store, run_dir, spec, dataset, settings, quiet: trained_with.append(settings))
    store = ModelStore(tmp_path)
    args = parse_args(["train", "mnist", "--subset", "--model", "cnn-small", "--conv-dtype", "bfloat16"])
    train_command.train_new(store, "mnist", "cnn-small", train_command.settings_from_args("cnn-small", args),
                            subset=True, command="capsrobust train mnist --conv-dtype bfloat16")
    train_command.resume_training(store, "mnist")
    assert [settings.conv_dtype for settings in trained_with] == ["bfloat16", "bfloat16"]
