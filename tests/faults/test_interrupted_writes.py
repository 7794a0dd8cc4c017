"""A crash while the card, the weights or a checkpoint is being written leaves the previous version intact.

Each writer is made to die half-way (a partial file, then an exception no `except Exception` catches, as close to a
kill as a process can do to itself), and the test checks what a later reader finds.
"""

import errno
import json
import os
import pathlib

import keras
import numpy as np
import pytest

from capsrobust.errors import StoreError
from capsrobust.io import write_json
from capsrobust.models import create_model, model_config
from capsrobust.store import CARD_FILE, WEIGHTS_FILE, ModelStore
from capsrobust.training.checkpoint import RunState, best_weights, load_state, restore_checkpoint, save_checkpoint

from conftest import assert_one_line_error


class Killed(BaseException):
    """Stands in for the process dying mid-write."""


def _die_half_way(real):
    """A writer that writes the first half of what it was given, then dies."""
    def write(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise Killed
    return write


def _publish(store):
    spec = {"model": "cnn-small", "config": model_config("cnn-small"), "dataset": {"name": "mnist",
                                                                                     "source": "subset"}}
    return store.publish(store.new_run(spec), create_model("cnn-small"),
                         {"model": "cnn-small", "config": spec["config"], "dataset": spec["dataset"]})


def test_card_rewrite_killed_half_way_keeps_the_old_card(tmp_path, monkeypatch):
    card = tmp_path / CARD_FILE
    write_json(card, {"version": 1, "note": "old"})
    monkeypatch.setattr(pathlib.Path, "write_text", _die_half_way(pathlib.Path.write_text))
    with pytest.raises(Killed):
        write_json(card, {"version": 1, "note": "new" * 1000})
    monkeypatch.undo()
    assert json.loads(card.read_text()) == {"version": 1, "note": "old"}
    assert [p.name for p in tmp_path.iterdir()] == [CARD_FILE]


@pytest.mark.parametrize("dies_in", ["weights", "card", "rename"])
def test_publish_killed_half_way_leaves_no_entry_and_the_old_ones_intact(dies_in, tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    kept = _publish(store)
    if dies_in == "weights":
        real = keras.Model.save_weights

        def save_weights(self, path, *args, **kwargs):
            real(self, path, *args, **kwargs)
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            raise Killed

        monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    elif dies_in == "card":
        monkeypatch.setattr(pathlib.Path, "write_text", _die_half_way(pathlib.Path.write_text))
    else:
        def rename(src, dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "rename", rename)
    with pytest.raises((Killed, StoreError)) as excinfo:
        _publish(store)
    monkeypatch.undo()
    if dies_in == "rename":
        assert_one_line_error(str(excinfo.value), "No space left on device")
    # A real kill skips the clean-up handlers; either way no reader ever sees the half-written entry.
    assert [e.id for e in store.entries(verify=True)] == [kept.id]
    assert not store.entries(verify=True)[0].problem
    store.load(store.resolve("cnn-small"))


def test_staging_directory_of_a_killed_publish_is_ignored_then_removed(tmp_path):
    store = ModelStore(tmp_path)
    spec = {"model": "cnn-small", "config": model_config("cnn-small"), "dataset": {"name": "mnist",
                                                                                     "source": "subset"}}
    run_dir = store.new_run(spec)
    stale = store.models_dir / f".staging-{run_dir.name}-dead00"
    stale.mkdir(parents=True)
    (stale / WEIGHTS_FILE).write_bytes(b"half")
    assert store.entries() == []
    entry = store.publish(run_dir, create_model("cnn-small"),
                          {"model": "cnn-small", "config": spec["config"], "dataset": spec["dataset"]})
    assert [p.name for p in store.models_dir.iterdir()] == [entry.id]


@pytest.mark.parametrize("dies_in", ["weights", "optimizer", "state"])
def test_checkpoint_killed_half_way_keeps_the_previous_epoch(dies_in, tmp_path, monkeypatch):
    model = create_model("cnn-small")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    state = RunState(epoch=1, best_epoch=1, best_val_accuracy=0.5)
    save_checkpoint(tmp_path, model, state)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    model.set_weights([w + 1 for w in model.get_weights()])

    if dies_in == "weights":
        real = keras.Model.save_weights

        def save_weights(self, path, *args, **kwargs):
            real(self, path, *args, **kwargs)
            raise Killed

        monkeypatch.setattr(keras.Model, "save_weights", save_weights)
    elif dies_in == "optimizer":
        monkeypatch.setattr(np, "savez", lambda f, **arrays: (f.write(b"PK\x03\x04"), (_ for _ in ()).throw(Killed)))
    else:
        monkeypatch.setattr(pathlib.Path, "write_text", _die_half_way(pathlib.Path.write_text))
    state.epoch = state.best_epoch = 2  # an improved epoch: its weights would become the best
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, model, state)
    monkeypatch.undo()

    assert load_state(tmp_path).epoch == 1
    assert best_weights(tmp_path, load_state(tmp_path)).read_bytes() == saved["epoch-0001.weights.h5"]
    for name, content in saved.items():
        assert (tmp_path / name).read_bytes() == content, f"{name} changed"
    fresh = create_model("cnn-small")
    fresh.compile(optimizer=keras.optimizers.Adam(1e-3))
    restore_checkpoint(tmp_path, fresh, load_state(tmp_path))
    for a, b in zip(fresh.get_weights(), [w - 1 for w in model.get_weights()]):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_store_files_get_the_users_umask_not_0600(tmp_path):
    """Atomic writes once made every card, weights file and checkpoint 0600: unreadable in a shared store."""
    old = os.umask(0o022)
    try:
        entry = _publish(ModelStore(tmp_path))
    finally:
        os.umask(old)
    for name in (CARD_FILE, WEIGHTS_FILE):
        assert (entry.path / name).stat().st_mode & 0o777 == 0o644, name
