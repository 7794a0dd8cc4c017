"""Adversarial training in the shared trainer: the in-step attack, the step it trains on, the catastrophic-overfitting
guard and the card's threat model."""

import dataclasses

import keras
import numpy as np
import pytest

# ART sets up logging handlers on sys.stderr when first imported: imported at collection, they hold the real stderr,
# not the capture buffer of the CLI test below (see tests/faults/conftest.py).
import capsrobust.sweep  # noqa: F401
from capsrobust.cards import build_card, card_problem, seal, threat_model_summary
from capsrobust.errors import ConfigError
from capsrobust.models import create_model, model_config
from capsrobust.training import TrainSettings, fit, load_state
from capsrobust.training import adversarial
from capsrobust.training.adversarial import (AdversarialObjective, ThreatModel, attack_objective, collapsed,
                                             projected_gradient_ascent)
from capsrobust.training.augment import ShiftedBatches

tensorflow_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                     reason="the hand-made step uses tf.GradientTape")


def _batch(n=8, seed=0, eps=0.2):
    rng = np.random.default_rng(seed)
    images = rng.uniform(size=(n, 28, 28, 1)).astype("float32")
    images[:, :4] = 0.0  # pixels on both edges of [0, 1], where the projection must clip
    images[:, -4:] = 1.0
    labels = np.eye(10, dtype="float32")[rng.integers(0, 10, n)]
    inputs = {"image": images, "label": labels, "eps": np.full(n, eps, "float32"),
              "start": rng.uniform(-1, 1, images.shape).astype("float32")}
    return inputs, labels


def _scores(model):
    return lambda x: model.classify(x, training=False)[0]


@tensorflow_only
def test_one_adversarial_step_moves_the_weights_and_loss_as_a_hand_made_step_does():
    import tensorflow as tf

    model = create_model("cnn-small", dropout=0.0)
    threat = ThreatModel.create("pgd", eps=0.2, steps=2)
    model.training_objective = AdversarialObjective(threat)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    inputs, labels = _batch()
    model(inputs["image"])
    before = [w.numpy() for w in model.trainable_variables]

    objective = attack_objective(model)
    x_adv = projected_gradient_ascent(lambda x: objective(labels, _scores(model)(x)), tf.constant(inputs["image"]),
                                      0.2 * inputs["start"], inputs["eps"], 2.5 / 2, 2)
    with tf.GradientTape() as tape:
        outputs = model({"image": x_adv, "label": labels}, training=True)
        loss = tf.reduce_mean(model.loss_per_example(x_adv, labels, outputs))
    gradients = tape.gradient(loss, model.trainable_variables)
    clean_loss = float(tf.reduce_mean(model.loss_per_example(inputs["image"], labels, model(inputs["image"]))))

    logs = model.train_on_batch(inputs, labels, return_dict=True)
    assert logs["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert float(loss) > clean_loss  # the attack found a worse point than the clean batch
    for weight, old, gradient in zip(model.trainable_variables, before, gradients, strict=True):
        np.testing.assert_allclose(weight.numpy(), old - 0.1 * gradient.numpy(), atol=1e-6)


@pytest.mark.parametrize("method", ["pgd", "fgsm-rs", "trades"])
def test_the_attack_inside_the_step_stays_within_eps_and_the_unit_interval(method, monkeypatch):
    model = create_model("cnn-small", dropout=0.0)
    model.training_objective = AdversarialObjective(ThreatModel.create(method, eps=0.3, steps=None if method ==
                                                                       "fgsm-rs" else 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=True)  # eager: the step's images can be seen
    seen = []
    attack = adversarial.projected_gradient_ascent

    def recording(*args, **kwargs):
        seen.append(keras.ops.convert_to_numpy(attack(*args, **kwargs)))
        return seen[-1]

    monkeypatch.setattr(adversarial, "projected_gradient_ascent", recording)
    inputs, labels = _batch(eps=0.3)
    inputs["eps"][:4] = 0.05  # a warm-up ramp's smaller budget, per image
    model.train_on_batch(inputs, labels)
    (adversarial_images,) = seen
    change = np.abs(adversarial_images - inputs["image"]).reshape(8, -1).max(axis=1)
    assert np.all(change <= inputs["eps"] + 1e-6), change
    assert adversarial_images.min() >= 0.0 and adversarial_images.max() <= 1.0
    if method != "trades":  # TRADES starts next to x and its first KL gradients can vanish in float32
        assert np.all(change > 0.5 * inputs["eps"]), change  # it moved: sign steps of a fixed size


def test_pgd_climbs_the_objective():
    model = create_model("cnn-small", dropout=0.0)
    inputs, labels = _batch()
    objective = attack_objective(model)
    climb = lambda x: objective(labels, _scores(model)(x))  # noqa: E731
    x_adv = projected_gradient_ascent(climb, keras.ops.convert_to_tensor(inputs["image"]), 0 * inputs["start"],
                                      inputs["eps"], 2.5 / 5, 5)
    assert float(keras.ops.mean(climb(x_adv))) > float(keras.ops.mean(climb(inputs["image"])))


def test_capsule_attack_loss_adds_cross_entropy_to_the_model_loss():
    model = create_model("capsnet-small")
    labels = np.eye(10, dtype="float32")[[0, 1]]
    confident = np.array([[0.95] + [0.05] * 9, [0.05, 0.95] + [0.05] * 8], dtype="float32")
    assert float(keras.ops.sum(model.classification_loss(labels, confident))) == 0.0  # margin loss: no gradient
    assert np.all(keras.ops.convert_to_numpy(attack_objective(model)(labels, confident)) > 0)


def test_collapse_rule():
    assert collapsed(0.8, 0.3) and not collapsed(0.8, 0.5)
    assert not collapsed(0.11, 0.04)  # chance: a model stuck predicting one class, then another
    assert collapsed(0.5, 0.2, num_classes=5) and not collapsed(0.3, 0.1, num_classes=5)


def test_the_best_epoch_is_the_most_robust_and_of_equally_robust_ones_the_most_accurate(monkeypatch, tmp_path):
    from capsrobust.training.callbacks import ROBUST_ACCURACY, EpochCheckpoint, NanGuard
    from capsrobust.training.checkpoint import RunState

    monkeypatch.setattr("capsrobust.training.callbacks.save_checkpoint", lambda *args: None)
    state = RunState()
    checkpoint = EpochCheckpoint(tmp_path, state, NanGuard(), monitor=ROBUST_ACCURACY)
    readings = [(0.90, 0.9375), (0.80, 0.96), (0.95, 0.96), (0.94, 0.96)]  # (clean, PGD-10) after epochs 1-4
    for epoch, (clean, robust) in enumerate(readings):
        checkpoint.on_epoch_end(epoch, {"val_accuracy": clean, ROBUST_ACCURACY: robust})
    assert (state.best_epoch, state.best_val_accuracy, state.best_val_robust_accuracy) == (3, 0.95, 0.96)


def test_the_guard_stops_a_collapsing_run_and_keeps_the_best_epoch(mnist_subset, tmp_path, monkeypatch):
    """FGSM-RS training whose PGD accuracy reads 0.5, 0.6, then 0.05 (a constructed collapse): the run stops after
    epoch 3, says why, and ends with epoch 2's weights."""
    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:64], y_train=mnist_subset.y_train[:64],
                               x_val=mnist_subset.x_val[:32], y_val=mnist_subset.y_val[:32])
    readings = iter([0.5, 0.6, 0.05, 0.9])
    monkeypatch.setattr("capsrobust.training.callbacks.pgd_accuracy", lambda *args, **kwargs: next(readings))
    settings = TrainSettings(epochs=4, batch_size=64, adversarial="fgsm-rs", eps=0.3)
    result = fit("cnn-small", model_config("cnn-small"), data, settings, tmp_path)
    state = load_state(tmp_path)
    assert state.epoch == 3 and state.best_epoch == 2 and state.best_val_robust_accuracy == 0.6
    assert state.stop_reason.startswith("catastrophic overfitting at epoch 3: PGD-10 accuracy on 32 held-out "
                                        "images fell from 0.600 (epoch 2) to 0.050")
    assert [h["val_pgd_accuracy"] for h in state.history] == [0.5, 0.6, 0.05]
    best = create_model("cnn-small")
    best.load_weights(tmp_path / "epoch-0002.weights.h5")
    for a, b in zip(result.model.get_weights(), best.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_eps_warmup_ramps_per_batch_and_batches_carry_it():
    threat = ThreatModel.create("pgd", eps=0.3, eps_warmup=2)
    assert threat.eps_at(0, 0, 10) == pytest.approx(0.015)
    assert threat.eps_at(0, 9, 10) == pytest.approx(0.15)
    assert threat.eps_at(1, 9, 10) == threat.eps_at(5, 0, 10) == pytest.approx(0.3)
    images = np.random.default_rng(0).uniform(size=(20, 8, 8, 1)).astype("float32")
    batches = ShiftedBatches(images, np.arange(20) % 10, 10, 8, 0, seed=1,
                             eps_at=lambda epoch, batch: threat.eps_at(epoch, batch, 3))
    inputs, _ = batches[1]
    assert inputs["eps"].shape == (8,) and np.all(inputs["eps"] == pytest.approx(0.1))
    assert inputs["start"].shape == (8, 8, 8, 1) and np.abs(inputs["start"]).max() <= 1
    np.testing.assert_array_equal(batches[1][0]["start"], inputs["start"])  # drawn from (seed, epoch, batch)
    plain = ShiftedBatches(images, np.arange(20) % 10, 10, 8, 0, seed=1)
    np.testing.assert_array_equal(plain[1][0]["image"], inputs["image"])  # the augmentation's draws are unchanged


@pytest.mark.parametrize("settings, message", [
    ({"adversarial": "free"}, "unknown adversarial training method"),
    ({"adversarial": "pgd", "eps": 0.0}, "eps=0.0"),
    ({"adversarial": "pgd", "eps": 1.5}, "eps=1.5"),
    ({"adversarial": "pgd", "attack_steps": 0}, "steps=0"),
    ({"adversarial": "trades", "beta": -1.0}, "beta=-1.0"),
    ({"adversarial": "fgsm-rs", "attack_steps": 3}, "fgsm-rs takes one step"),
    ({"adversarial": "pgd", "beta": 6.0}, "pgd takes none"),
    ({"eps": 0.3}, "only apply to adversarial training"),
])
def test_bad_threat_models_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainSettings(**settings)


def test_the_cli_offers_the_trainers_methods():
    from capsrobust.cli.train import ADVERSARIAL_METHODS

    assert ADVERSARIAL_METHODS == adversarial.METHODS


def _card(threat_model):
    model = create_model("cnn-small")
    card = build_card(model_name="cnn-small", config=model_config("cnn-small"), model=model,
                      dataset={"name": "mnist", "source": "subset"}, training={}, metrics={"test_accuracy": 0.9},
                      detector=None, threat_model=threat_model)
    return seal(card, "cnn-small-mnist-x", "model.weights.h5", "0" * 64)


def test_cards_round_trip_the_threat_model(tmp_path):
    from capsrobust.io import read_json, write_json

    threat = ThreatModel.create("trades", eps=0.3, steps=10).to_dict()
    write_json(tmp_path / "card.json", _card(threat))
    card = read_json(tmp_path / "card.json")
    assert card["version"] == 2 and card["threat_model"] == threat and card_problem(card) == ""
    assert threat == {**threat, "method": "trades", "eps": 0.3, "steps": 10, "beta": 6.0, "norm": "inf",
                      "step_size": 0.075, "eps_warmup": 0}
    assert threat_model_summary(card["threat_model"]) == "trades-10 eps 0.3 beta 6"
    plain = _card(None)
    assert plain["version"] == 1 and "threat_model" not in plain and card_problem(plain) == ""


@pytest.mark.parametrize("change, problem", [
    ({"method": "free"}, "unknown method 'free'"),
    ({"eps": 2}, "eps must be a number in (0, 1]"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"norm": "1"}, "unknown norm '1'"),
    ({"beta": -1}, "beta must be a number >= 0"),
])
def test_tampered_threat_models_are_reported(change, problem):
    card = _card(ThreatModel.create("pgd", eps=0.3).to_dict())
    card["threat_model"].update(change)
    assert problem in card_problem(card)


def test_a_version_1_card_cannot_hold_a_threat_model():
    card = {**_card(ThreatModel.create("pgd", eps=0.3).to_dict()), "version": 1}
    assert "card version 1 cannot hold a threat_model" in card_problem(card)


@pytest.mark.slow
def test_a_resumed_adversarial_run_equals_an_uninterrupted_one(mnist_subset, tmp_path):
    """Random starts and the eps ramp come with the batches, keyed by (seed, epoch, batch): a resume redraws them."""
    import json

    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:256], y_train=mnist_subset.y_train[:256],
                               x_val=mnist_subset.x_val[:64], y_val=mnist_subset.y_val[:64])
    config = model_config("cnn-small")

    def settings(epochs):
        return TrainSettings(epochs=epochs, batch_size=64, seed=3, adversarial="fgsm-rs", eps=0.3, eps_warmup=2)

    straight = fit("cnn-small", config, data, settings(2), tmp_path / "a")
    fit("cnn-small", config, data, settings(1), tmp_path / "b")
    state = load_state(tmp_path / "b")
    state.finished = False
    (tmp_path / "b" / "state.json").write_text(json.dumps(dataclasses.asdict(state)))
    resumed = fit("cnn-small", config, data, settings(2), tmp_path / "b")
    assert resumed.state.history == straight.state.history
    assert all("val_pgd_accuracy" in h for h in resumed.state.history)
    for a, b in zip(straight.model.get_weights(), resumed.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_pixels_outside_the_unit_interval_are_refused(mnist_subset, tmp_path):
    standardised = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:64] * 2 - 1)
    with pytest.raises(ConfigError, match=r"needs pixels in \[0, 1\].*pixels in \[-1, 1\]"):
        fit("cnn-small", model_config("cnn-small"), standardised, TrainSettings(adversarial="pgd"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_attacks_beyond_the_trained_eps_warn_in_one_line(tmp_path, capsys):
    from capsrobust.cli import main
    from capsrobust.store import ModelStore

    store = ModelStore(tmp_path / "store")
    spec = {"model": "cnn-small", "config": model_config("cnn-small"), "dataset": {"name": "mnist", "source": "subset"}}
    card = {**spec, "family": "cnn", "threat_model": ThreatModel.create("pgd", eps=0.3).to_dict("logits")}
    entry = store.publish(store.new_run(spec), create_model("cnn-small"), card)
    assert store.entries()[0].card["threat_model"]["eps"] == 0.3 and "pgd-7 eps 0.3" in threat_model_summary(
        store.entries()[0].card["threat_model"])

    def attack(eps):
        capsys.readouterr()
        status = main(["attack", "--model", entry.id, "--method", "fgsm", "--eps", eps, "--limit", "4",
                       "--no-checks", "--store", str(store.root), "--output", str(tmp_path / "out")])
        return status, capsys.readouterr().err

    status, err = attack("0.3,0.4")  # warned once, for the largest
    assert status == 0
    assert [line for line in err.splitlines() if "warning" in line] == [
        f"warning: eps 0.4 exceeds the eps 0.3 {entry.id} was adversarially trained for (pgd)"]


@pytest.mark.slow
def test_nan_in_an_adversarial_step_stops_and_keeps_the_last_good_checkpoint(mnist_subset, tmp_path, monkeypatch):
    from capsrobust.errors import TrainingDiverged

    data = dataclasses.replace(mnist_subset, x_train=mnist_subset.x_train[:128], y_train=mnist_subset.y_train[:128],
                               x_val=mnist_subset.x_val[:32], y_val=mnist_subset.y_val[:32])
    clean_batch = ShiftedBatches.__getitem__

    # The second epoch's targets turn NaN: so do the attack's gradients, x' and the loss. (A NaN random start is not
    # enough on every CPU: whether max-pooling passes a NaN pixel on or drops it depends on the vector instructions.)
    def poisoned_batch(self, index):
        inputs, labels = clean_batch(self, index)
        return (inputs, labels * np.float32("nan")) if self.epoch == 1 else (inputs, labels)

    monkeypatch.setattr(ShiftedBatches, "__getitem__", poisoned_batch)
    settings = TrainSettings(epochs=2, batch_size=64, adversarial="pgd", attack_steps=1)
    with pytest.raises(TrainingDiverged, match="loss became NaN/Inf at epoch 2, batch 1; .*kept the checkpoint of "
                                               "epoch 1"):
        fit("cnn-small", model_config("cnn-small"), data, settings, tmp_path)
    assert load_state(tmp_path).epoch == 1 and not list(tmp_path.glob("epoch-0002*"))


def test_adversarial_runs_get_an_eps_warmup_unless_told_otherwise(tmp_path, monkeypatch, capsys):
    from capsrobust.cli import main

    seen = []
    monkeypatch.setattr("capsrobust.cli.train._train_and_publish",
                        lambda store, run_dir, spec, dataset, settings, *rest: seen.append(settings.eps_warmup))
    for model, extra in [("capsnet-small", []), ("capsnet-small", ["--eps-warmup", "0"]), ("cnn-small", []),
                         ("cnn-small", ["--epochs", "2"]), ("cnn-small", ["--epochs", "1"])]:
        main(["train", "mnist", "--subset", "--model", model, "--adversarial", "fgsm-rs", *extra,
              "--store", str(tmp_path), "--quiet"])
    assert seen == [adversarial.DEFAULT_EPS_WARMUP, 0, adversarial.DEFAULT_EPS_WARMUP, 1, 0]  # an epoch at full eps
    assert capsys.readouterr().err.count("eps warm-up: 2 epochs, the default (--eps-warmup 0 turns it off)") == 2
