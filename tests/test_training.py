"""The shared trainer on the committed subset: learning, determinism, resume, NaN guard."""

import dataclasses
import json

import numpy as np
import pytest

from capsrobust.errors import TrainingDiverged
from capsrobust.models import model_config
from capsrobust.models.predict import accuracy
from capsrobust.training import TrainSettings, fit, load_state
from capsrobust.training.augment import ShiftedBatches, random_shift


def _small(dataset, n_train=1024, n_val=256):
    return dataclasses.replace(dataset, x_train=dataset.x_train[:n_train], y_train=dataset.y_train[:n_train],
                               x_val=dataset.x_val[:n_val], y_val=dataset.y_val[:n_val])


def _straight_and_resumed(name, dataset, tmp_path):
    """Two runs of 2 epochs: one uninterrupted, one "interrupted" after epoch 1 and resumed in the same directory.

    Four batches an epoch: equality to the last bit needs steps, not learning."""
    data = _small(dataset, n_train=256, n_val=64)
    config = model_config(name)
    straight = fit(name, config, data, TrainSettings(epochs=2, batch_size=64, seed=3), tmp_path / "a")
    fit(name, config, data, TrainSettings(epochs=1, batch_size=64, seed=3), tmp_path / "b")
    state = load_state(tmp_path / "b")
    state.finished = False
    (tmp_path / "b" / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
    resumed = fit(name, config, data, TrainSettings(epochs=2, batch_size=64, seed=3), tmp_path / "b")
    return straight, resumed


@pytest.mark.slow
@pytest.mark.parametrize("name", ["capsnet-small", "cnn-small"])
def test_training_learns_well_above_chance(name, mnist_subset, tmp_path):
    # One epoch of the subset's 3,667 images gave 84.8% (capsnet-small) and 90.8% (cnn-small) on its 1,000 test images.
    result = fit(name, model_config(name), mnist_subset, TrainSettings(epochs=1, batch_size=64), tmp_path)
    test_accuracy = accuracy(result.model, mnist_subset.x_test, mnist_subset.y_test)
    assert test_accuracy > 0.75, test_accuracy
    assert result.state.finished and result.state.epoch == 1
    assert (tmp_path / "log.csv").read_text().count("\n") == 2  # header + 1 epoch
    assert any((tmp_path / "tensorboard").iterdir())


@pytest.mark.slow
def test_training_is_deterministic_and_a_resumed_run_equals_an_uninterrupted_one(mnist_subset, tmp_path):
    """cnn-small, whose dropout masks must resume too (the other backends: test_backends.py)."""
    straight, resumed = _straight_and_resumed("cnn-small", mnist_subset, tmp_path)
    assert [h["epoch"] for h in resumed.state.history] == [1, 2]
    assert int(resumed.model.optimizer.iterations.numpy()) == int(straight.model.optimizer.iterations.numpy())
    assert resumed.state.history == straight.state.history  # epoch 1 by determinism, epoch 2 by a faithful resume
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_nan_stops_training_and_keeps_last_good_checkpoint(mnist_subset, tmp_path, monkeypatch):
    data = _small(mnist_subset, n_train=256, n_val=64)
    config = model_config("cnn-small")
    fit("cnn-small", config, data, TrainSettings(epochs=1, batch_size=64), tmp_path)
    good = (tmp_path / "epoch-0001.weights.h5").read_bytes()
    state = load_state(tmp_path)
    state.finished = False
    (tmp_path / "state.json").write_text(json.dumps(dataclasses.asdict(state)))

    clean_batch = ShiftedBatches.__getitem__

    def poisoned_batch(self, index):  # a NaN appears in the second epoch's batches
        inputs, labels = clean_batch(self, index)
        return inputs, labels * np.float32("nan") if self.epoch == 1 else labels

    monkeypatch.setattr(ShiftedBatches, "__getitem__", poisoned_batch)
    with pytest.raises(TrainingDiverged, match="NaN/Inf at epoch 2, batch 1; .*kept the checkpoint of epoch 1"):
        fit("cnn-small", config, data, TrainSettings(epochs=3, batch_size=64), tmp_path)
    assert load_state(tmp_path).epoch == 1
    assert (tmp_path / "epoch-0001.weights.h5").read_bytes() == good
    assert not list(tmp_path.glob("epoch-0002*")) and not list(tmp_path.glob("*.tmp"))


def test_non_finite_training_images_are_refused(mnist_subset, tmp_path):
    from capsrobust.errors import ConfigError

    data = _small(mnist_subset, n_train=64, n_val=16)
    poisoned = data.x_train.copy()
    poisoned[3, 4, 5, 0] = np.nan
    with pytest.raises(ConfigError, match="x_train contains NaN"):
        fit("cnn-small", model_config("cnn-small"), dataclasses.replace(data, x_train=poisoned), TrainSettings(),
            tmp_path)


def test_random_shift_moves_images_within_bounds():
    image = np.zeros((1, 6, 6, 1), dtype="float32")
    image[0, 2, 3, 0] = 1.0
    rng = np.random.default_rng(0)
    shifted = random_shift(np.repeat(image, 200, axis=0), 2, rng)
    rows, cols = np.nonzero(shifted[..., 0].reshape(200, 6, 6).max(axis=0))
    assert shifted.shape == (200, 6, 6, 1) and np.all(shifted.sum(axis=(1, 2, 3)) == 1)
    assert set(rows) == {0, 1, 2, 3, 4} and set(cols) == {1, 2, 3, 4, 5}
    np.testing.assert_array_equal(random_shift(image, 0, rng), image)


def test_batches_depend_only_on_seed_and_epoch():
    images = np.random.default_rng(0).uniform(size=(50, 8, 8, 1)).astype("float32")
    labels = np.arange(50) % 10
    a, b = (ShiftedBatches(images, labels, 10, 16, 2, seed=5) for _ in range(2))
    a.epoch = b.epoch = 3
    np.testing.assert_array_equal(a[1][0]["image"], b[1][0]["image"])
    b.epoch = 4
    assert not np.array_equal(a[1][0]["image"], b[1][0]["image"])
    assert len(a) == 4 and a[3][1].shape == (2, 10)


def test_invalid_settings_rejected():
    from capsrobust.errors import ConfigError

    with pytest.raises(ConfigError, match="learning_rate=nan"):
        TrainSettings(learning_rate=float("nan"))
    with pytest.raises(ConfigError, match="epochs=0"):
        TrainSettings(epochs=0)
