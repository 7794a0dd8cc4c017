import numpy as np
import pytest

from capsrobust.errors import ConfigError
from capsrobust.models import POSES, RECONSTRUCTION, SCORES, create_model, get_model_spec, list_models, model_config


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
    assert list_models("cnn-*") == ["cnn-baseline", "cnn-recon", "cnn-small"]
    assert set(list_models(family="capsule")) >= {"capsnet", "capsnet-small"}
