"""Numerical faults: NaN or Inf appearing in training batches, and attacks asked to run on non-finite images."""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from capsrobust.errors import ConfigError, TrainingDiverged
from capsrobust.models import create_model, model_config
from capsrobust.sweep import ModelUnderTest, SweepConfig, run_sweep
from capsrobust.training import TrainSettings, fit, load_state
from capsrobust.training.augment import ShiftedBatches
from capsrobust.training.checkpoint import best_weights

from conftest import assert_one_line_error


def _poison(where: str, value: float):
    """From epoch 2 on, puts `value` into one pixel of every training image ("pixel"), one label of every image
    ("label"), both at the source of the batch stream, or into the labels of each batch after the stream ("loss":
    invisible to the stream, caught by the loss)."""
    order, getitem = ShiftedBatches._order, ShiftedBatches.__getitem__

    def poisoned_order(self):
        if self.epoch == 1 and where in ("pixel", "label") and not getattr(self, "_poisoned", False):
            self._poisoned = True
            if where == "pixel":
                self.images = self.images.copy()
                self.images[:, 14, 14, 0] = value
            else:
                self.one_hot = self.one_hot.copy()
                self.one_hot[:, 0] = value
        return order(self)

    def poisoned_getitem(self, index):
        inputs, labels = getitem(self, index)
        return (inputs, labels * np.float32(value)) if where == "loss" and self.epoch == 1 else (inputs, labels)

    return poisoned_order, poisoned_getitem


@pytest.mark.slow
@pytest.mark.parametrize("where, value, message", [
    ("pixel", np.nan, "NaN/Inf values in the training inputs at epoch 2, batch 1"),
    ("label", np.inf, "NaN/Inf values in the training inputs at epoch 2, batch 1"),
    ("loss", np.nan, "loss became NaN/Inf at epoch 2, batch 1"),
], ids=["nan-pixel", "inf-label", "nan-loss"])  # an Inf pixel takes the nan-pixel path (np.isfinite), 2 s saved
def test_non_finite_batch_stops_training_and_keeps_the_last_good_checkpoint(where, value, message, mnist_subset,
                                                                            tmp_path, monkeypatch):
    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:64], y_train=mnist_subset.y_train[:64],
                               x_val=mnist_subset.x_val[:32], y_val=mnist_subset.y_val[:32])
    poisoned_order, poisoned_getitem = _poison(where, value)
    monkeypatch.setattr(ShiftedBatches, "_order", poisoned_order)
    monkeypatch.setattr(ShiftedBatches, "__getitem__", poisoned_getitem)
    with pytest.raises(TrainingDiverged) as excinfo:
        fit("cnn-small", model_config("cnn-small"), data, TrainSettings(epochs=3, batch_size=16), tmp_path)
    assert_one_line_error(str(excinfo.value), message, "kept the checkpoint of epoch 1", str(tmp_path))
    state = load_state(tmp_path)
    assert state.epoch == 1 and not state.finished and [h["epoch"] for h in state.history] == [1]
    assert all(np.isfinite(v) for v in state.history[0].values())
    model = create_model("cnn-small")
    model.load_weights(best_weights(tmp_path, state))
    assert all(np.isfinite(w).all() for w in model.get_weights()), "the kept checkpoint holds non-finite weights"
    assert not list(tmp_path.glob("epoch-0002*"))


@pytest.mark.slow
def test_nan_in_the_first_epoch_via_cli_is_one_line_and_publishes_nothing(monkeypatch, cli):
    clean = ShiftedBatches.__getitem__

    def batch(self, index):
        inputs, labels = clean(self, index)
        return inputs, labels * np.float32("nan")

    monkeypatch.setattr(ShiftedBatches, "__getitem__", batch)
    status, _, err = cli("train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "2", "--limit", "32",
                         "--batch-size", "16", "--quiet")
    assert status == 2
    assert_one_line_error(err, "NaN/Inf at epoch 1, batch 1", "no epoch had completed", "try a lower --lr")
    home = Path(os.environ["CAPSROBUST_HOME"])
    assert not (home / "models").exists()
    (run_dir,) = (home / "runs").iterdir()
    assert not json.loads((run_dir / "run.json").read_text()).get("published")


@pytest.fixture(scope="module")
def untrained():
    model = create_model("cnn-small")
    return ModelUnderTest("cnn-small-untrained", "cnn-small", "cnn", model, {})


@pytest.mark.parametrize("value, expected", [(np.nan, "1 NaN or infinite pixels"), (np.inf, "1 NaN or infinite"),
                                             (-np.inf, "1 NaN or infinite"), (255.0, "must lie in [0, 1]")],
                         ids=["nan", "inf", "minus-inf", "0-255-scale"])
def test_attack_refuses_non_finite_or_unscaled_images(value, expected, untrained, mnist_subset):
    images = mnist_subset.x_test[:8].copy()
    images[3, 10, 10, 0] = value
    with pytest.raises(ConfigError) as excinfo:
        run_sweep([untrained], SweepConfig(methods=("fgsm",), eps_values=(0.1,), trust_checks=False), images,
                  mnist_subset.y_test[:8])
    assert_one_line_error(str(excinfo.value), expected)


def test_attack_on_a_model_that_gets_every_image_wrong_reports_instead_of_crashing(untrained, mnist_subset):
    images = mnist_subset.x_test[:16]
    wrong = (untrained.model.predict(images, verbose=0)["scores"].argmax(-1) + 1) % 10  # labels it never predicts
    result = run_sweep([untrained], SweepConfig(methods=("fgsm", "bim"), eps_values=(0.1,), steps=2,
                                                trust_checks=False), images, wrong)
    rows = [(c.attacked, c.clean_accuracy, c.adversarial_accuracy) for c in result.cells]
    assert rows == [(0, 0.0, 0.0)] * 2


@pytest.mark.slow
def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_previous_one(mnist_subset, tmp_path, monkeypatch):
    """Not numerical, but the same trainer path: a checkpoint write that fails (ENOSPC) mid-run."""
    import errno

    import keras

    from capsrobust.errors import StoreError

    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:32], y_train=mnist_subset.y_train[:32],
                               x_val=mnist_subset.x_val[:16], y_val=mnist_subset.y_val[:16])
    real = keras.Model.save_weights

    def save_weights(self, path, *args, **kwargs):
        if "epoch-0002" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    with pytest.raises(StoreError) as excinfo:
        fit("cnn-small", model_config("cnn-small"), data, TrainSettings(epochs=3, batch_size=16), tmp_path)
    assert_one_line_error(str(excinfo.value), "cannot write the checkpoint of epoch 2", "No space left on device",
                          "the checkpoint of epoch 1 is kept")
    assert load_state(tmp_path).epoch == 1 and (tmp_path / "epoch-0001.weights.h5").is_file()
    assert not list(tmp_path.glob(".*")), "temporary files left"
