"""EM capsule networks through the shared trainer: learning, and the spread-loss margin ramp across a resume."""

import dataclasses
import json

import keras
import pytest

from capsrobust.models import create_model, model_config
from capsrobust.models.predict import accuracy
from capsrobust.training import TrainSettings, fit, load_state
from capsrobust.training.callbacks import MarginSchedule

# Short runs on 2 CPU cores: one EM iteration learns fastest from scratch (see the README on EM routing), and half
# em-capsnet-small's capsule types (4 primary, 8 and 8 convolutional) train three times faster and learn as well.
SHORT_RUN_CONFIG = {"em_iterations": 1, "primary_types": 4, "conv_types": (8, 8)}


def test_margin_ramp_is_linear_per_batch_and_holds_at_its_end():
    schedule = MarginSchedule(keras.Variable(0.0), start=0.2, end=0.9, epochs=2, steps=10)
    assert schedule.value(0, 0) == pytest.approx(0.2)
    assert schedule.value(0, 5) == pytest.approx(0.2 + 0.7 * 0.25)
    assert schedule.value(1, 0) == pytest.approx(0.55)
    assert schedule.value(2, 0) == schedule.value(7, 3) == pytest.approx(0.9)


@pytest.mark.slow
def test_short_training_learns(mnist_subset, tmp_path):
    # One epoch of 75 steps (1,200 images in batches of 16) gave 43.0% on these 500 test images; 25% is far above
    # chance (500 guesses pass it with probability below 1e-20) and leaves a margin for other CPUs' rounding.
    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:1200], y_train=mnist_subset.y_train[:1200],
                               x_val=mnist_subset.x_val[:100], y_val=mnist_subset.y_val[:100])
    config = model_config("em-capsnet-small", **SHORT_RUN_CONFIG)
    result = fit("em-capsnet-small", config, data, TrainSettings(epochs=1, batch_size=16), tmp_path)
    test_accuracy = accuracy(result.model, mnist_subset.x_test[:500], mnist_subset.y_test[:500])
    assert test_accuracy > 0.25, test_accuracy


@pytest.mark.slow
def test_a_resume_continues_the_margin_ramp(mnist_subset, tmp_path):
    # Two steps an epoch: what is tested is the schedule's bookkeeping, not learning.
    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:64], y_train=mnist_subset.y_train[:64],
                               x_val=mnist_subset.x_val[:32], y_val=mnist_subset.y_val[:32])
    config = model_config("em-capsnet-small", **SHORT_RUN_CONFIG)
    fit("em-capsnet-small", config, data, TrainSettings(epochs=2, batch_size=32), tmp_path)
    assert load_state(tmp_path).margin_schedule == {"start": 0.2, "end": 0.9, "epochs": 2}
    first = create_model("em-capsnet-small", **config)
    first.load_weights(tmp_path / "epoch-0001.weights.h5")
    assert float(first.spread_margin.numpy()) == pytest.approx(0.2 + 0.7 * 0.25)  # set for epoch 1's last batch

    # Extend the finished run by an epoch: the ramp planned for 2 epochs is kept, so epoch 3 trains at 0.9.
    state = load_state(tmp_path)
    state.finished = False
    (tmp_path / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
    fit("em-capsnet-small", config, data, TrainSettings(epochs=3, batch_size=32), tmp_path)
    assert load_state(tmp_path).margin_schedule["epochs"] == 2
    third = create_model("em-capsnet-small", **config)
    third.load_weights(tmp_path / "epoch-0003.weights.h5")
    assert float(third.spread_margin.numpy()) == pytest.approx(0.9)
