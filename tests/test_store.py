import json

import numpy as np
import pytest

from capsrobust.errors import StoreError
from capsrobust.models import create_model, model_config
from capsrobust.store import CARD_FILE, WEIGHTS_FILE, ModelStore


def _publish(store, tmp_path, name="cnn-small", val_accuracy=0.5, dataset="mnist"):
    model = create_model(name)
    spec = {"model": name, "config": model_config(name), "dataset": {"name": dataset, "source": "subset"}}
    run_dir = store.new_run(spec)
    card = {"model": name, "config": spec["config"], "dataset": spec["dataset"],
            "metrics": {"val_accuracy": val_accuracy, "test_accuracy": val_accuracy}}
    return store.publish(run_dir, model, card), model


def test_publish_load_round_trip(tmp_path):
    store = ModelStore(tmp_path)
    entry, model = _publish(store, tmp_path)
    loaded = store.load(store.resolve("cnn-small"))
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert entry.card["weights"]["sha256"] and (entry.path / WEIGHTS_FILE).is_file()
    assert not [p for p in store.models_dir.iterdir() if p.name.startswith(".")]
    assert store.unfinished_runs() == []  # the run is marked published


def test_resolve_prefers_best_validation_and_filters_dataset(tmp_path):
    store = ModelStore(tmp_path)
    _publish(store, tmp_path, val_accuracy=0.6)
    best, _ = _publish(store, tmp_path, val_accuracy=0.9)
    other, _ = _publish(store, tmp_path, val_accuracy=0.95, dataset="fashion-mnist")
    assert store.resolve("cnn-small", dataset="mnist").id == best.id
    assert store.resolve("cnn-small").id == other.id
    assert store.resolve(best.id).id == best.id
    with pytest.raises(StoreError, match="no trained 'capsnet'"):
        store.resolve("capsnet")


def test_tampered_weights_are_refused(tmp_path):
    store = ModelStore(tmp_path)
    entry, _ = _publish(store, tmp_path)
    weights = bytearray((entry.path / WEIGHTS_FILE).read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (entry.path / WEIGHTS_FILE).write_bytes(weights)
    with pytest.raises(StoreError, match="does not match the card"):
        store.load(store.resolve("cnn-small"))


def test_weights_for_another_architecture_are_refused(tmp_path):
    store = ModelStore(tmp_path)
    entry, _ = _publish(store, tmp_path)
    card = json.loads((entry.path / CARD_FILE).read_text())
    card["config"]["dense_units"] = [100]
    (entry.path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(StoreError, match="cannot load into cnn-small"):
        store.load(store.resolve(entry.id))


@pytest.mark.parametrize("damage, problem", [
    (lambda p: (p / CARD_FILE).write_text("{not json"), "unreadable card.json"),
    (lambda p: (p / CARD_FILE).unlink(), "no card.json"),
    (lambda p: (p / WEIGHTS_FILE).unlink(), "missing model.weights.h5"),
    (lambda p: (p / CARD_FILE).write_text(json.dumps({"format": "capsrobust-model-card", "version": 99})),
     "card version 99 is newer"),
])
def test_broken_entries_are_listed_with_their_problem(tmp_path, damage, problem):
    store = ModelStore(tmp_path)
    healthy, _ = _publish(store, tmp_path, val_accuracy=0.1)
    broken, _ = _publish(store, tmp_path, val_accuracy=0.9)
    damage(broken.path)
    entries = {e.id: e for e in store.entries()}
    assert problem in entries[broken.id].problem and not entries[healthy.id].problem
    assert store.resolve("cnn-small").id == healthy.id
    with pytest.raises(StoreError, match="broken"):
        store.resolve(broken.id)
