"""Hostile store: tampered cards, weights that do not match, a read-only store directory.

One store holds a healthy entry and one copy of it per fault; each fault must show up as that entry's `problem` (or,
where only loading can tell, as a `StoreError` from `load`), must never hide the healthy entry, and must never run
code from the store.
"""

import json
import pickle
import shutil
from pathlib import Path

import pytest

from capsrobust.errors import StoreError
from capsrobust.models import create_model, model_config
from capsrobust.store import CARD_FILE, WEIGHTS_FILE, ModelStore, sha256_of

from conftest import assert_one_line_error

MARKER = Path("/tmp/capsrobust-fault-suite-pwned")


class _RunsCode:
    """Unpickling this creates MARKER: proof that something unpickled the store's bytes."""

    def __reduce__(self):
        return (MARKER.touch, ())


def _edit_card(change):
    def damage(path: Path) -> None:
        card = json.loads((path / CARD_FILE).read_text())
        (path / CARD_FILE).write_text(json.dumps(change(card)))
    return damage


def _replace_weights(content: bytes):
    """Replaces the weights and updates the card's sha256 to match, so only loading can catch it."""
    def damage(path: Path) -> None:
        (path / WEIGHTS_FILE).write_bytes(content)
        _edit_card(lambda c: {**c, "weights": {**c["weights"], "sha256": sha256_of(path / WEIGHTS_FILE)}})(path)
    return damage


def _flip_weights_byte(path: Path) -> None:
    raw = bytearray((path / WEIGHTS_FILE).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (path / WEIGHTS_FILE).write_bytes(bytes(raw))


def _weights_dir(path: Path) -> None:
    (path / WEIGHTS_FILE).unlink()
    (path / WEIGHTS_FILE).mkdir()


# fault -> (damage, what the listing says; None: only loading can tell, what loading says)
LISTED = {
    "card-not-json": (lambda p: (p / CARD_FILE).write_text("{not json"), "unreadable card.json", None),
    "card-empty": (lambda p: (p / CARD_FILE).write_text(""), "unreadable card.json", None),
    "card-missing": (lambda p: (p / CARD_FILE).unlink(), "no card.json", None),
    "card-not-a-card": (lambda p: (p / CARD_FILE).write_text("[1, 2]"), "not a capsrobust model card", None),
    "card-future-version": (_edit_card(lambda c: {**c, "version": 99}), "card version 99 is newer", None),
    "card-version-not-int": (_edit_card(lambda c: {**c, "version": "1"}), "invalid version '1'", None),
    "card-no-config": (_edit_card(lambda c: {k: v for k, v in c.items() if k != "config"}), "has no 'config'", None),
    "card-field-wrong-type": (_edit_card(lambda c: {**c, "metrics": [0.9]}), "'metrics' has the wrong type", None),
    "card-metric-not-number": (_edit_card(lambda c: {**c, "metrics": {"val_accuracy": "high"}}),
                               "'val_accuracy' is not a number", None),
    "card-unknown-model": (_edit_card(lambda c: {**c, "model": "os.system"}), "unknown model 'os.system'", None),
    "card-unknown-config-key": (_edit_card(lambda c: {**c, "config": {**c["config"], "__class__": "Lambda"}}),
                                "does not take __class__", None),
    "card-bad-sha256": (_edit_card(lambda c: {**c, "weights": {"sha256": "x"}}), "no valid weights sha256", None),
    "weights-missing": (lambda p: (p / WEIGHTS_FILE).unlink(), "missing model.weights.h5", None),
    "weights-a-directory": (_weights_dir, "missing model.weights.h5", None),
    "weights-sha256-mismatch": (_flip_weights_byte, "does not match the card's sha256", "does not match the card"),
    "weights-other-architecture": (_edit_card(lambda c: {**c, "config": {**c["config"], "dense_units": [100]}}),
                                   None, "cannot load into cnn-small"),
    "weights-not-hdf5": (_replace_weights(b"not an HDF5 file" * 64), None, "cannot load into cnn-small"),
    "weights-a-pickle": (_replace_weights(pickle.dumps(_RunsCode())), None, "cannot load into cnn-small"),
}


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    """A store with one healthy cnn-small entry and one damaged copy of it per fault; returns (store, healthy id)."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    name = "cnn-small"
    spec = {"model": name, "config": model_config(name), "dataset": {"name": "mnist", "source": "subset"}}
    healthy = store.publish(store.new_run(spec), create_model(name),
                            {"model": name, "config": spec["config"], "dataset": spec["dataset"], "family": "cnn",
                             "metrics": {"val_accuracy": 0.1}})
    for fault, (damage, _, _) in LISTED.items():
        broken = store.models_dir / f"{name}-mnist-20000101-000000-{fault}"
        shutil.copytree(healthy.path, broken)
        # A better validation accuracy than the healthy entry, so `resolve` would prefer it if it were not broken.
        _edit_card(lambda c: {**c, "metrics": {"val_accuracy": 0.9}})(broken)
        damage(broken)
    return store, healthy.id


@pytest.mark.parametrize("fault", LISTED)
def test_broken_entry_is_marked_and_never_loaded(hostile_store, fault):
    store, healthy_id = hostile_store
    MARKER.unlink(missing_ok=True)
    _, listed, on_load = LISTED[fault]
    entries = {e.id: e for e in store.entries(verify=True)}
    entry = entries[f"cnn-small-mnist-20000101-000000-{fault}"]
    assert not entries[healthy_id].problem
    if listed is not None:  # a marked entry never wins `--model cnn-small`, whatever its accuracy
        assert store.resolve("cnn-small").id != entry.id
    if listed is not None:
        assert listed in entry.problem, entry.problem
    else:
        assert not entry.problem
    with pytest.raises(StoreError) as excinfo:
        store.load(entry)
    assert_one_line_error(str(excinfo.value), on_load or "is broken")
    assert not MARKER.exists(), "loading ran code from the store"


def test_models_lists_healthy_and_marks_every_broken_entry(hostile_store, cli, monkeypatch):
    store, healthy_id = hostile_store
    # The registry table of `models` builds every model (seconds); the store listing is what is under test here.
    monkeypatch.setattr("capsrobust.models.list_models", lambda: [])
    status, out, err = cli("models", "--store", store.root)
    assert status == 0 and "Traceback" not in err
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 5}
    assert "ok" in rows[healthy_id]
    for fault, (_, listed, _) in LISTED.items():
        entry_id = f"cnn-small-mnist-20000101-000000-{fault}"
        assert ("broken" in rows[entry_id]) == (listed is not None), rows[entry_id]
        if listed is not None:
            assert f"broken: {entry_id}: " in out and listed in out.split(f"broken: {entry_id}: ")[1].splitlines()[0]


def test_commands_on_a_broken_entry_say_so_in_one_line(hostile_store, cli):
    store, _ = hostile_store
    status, _, err = cli("test", "--model", "cnn-small-mnist-20000101-000000-card-not-json", "--store", store.root)
    assert status == 2
    assert_one_line_error(err, "is broken: unreadable card.json")


def _publish_small(store):
    name = "cnn-small"
    spec = {"model": name, "config": model_config(name), "dataset": {"name": "mnist", "source": "subset"}}
    return store.publish(store.new_run(spec), create_model(name), {"model": name, "config": spec["config"],
                                                                    "dataset": spec["dataset"]})


def test_read_only_models_directory_refuses_publish_cleanly(tmp_path, read_only):
    store = ModelStore(tmp_path)
    kept = _publish_small(store)
    read_only(store.models_dir)
    with pytest.raises(StoreError) as excinfo:
        _publish_small(store)
    assert_one_line_error(str(excinfo.value), f"into {store.models_dir}")
    assert [p.name for p in store.models_dir.iterdir()] == [kept.id]  # no half entry, no staging directory
    assert not store.load(store.resolve(kept.id)).count_params() == 0


def test_read_only_store_root_fails_train_before_any_work(tmp_path, read_only, cli):
    read_only(tmp_path / "store")
    status, _, err = cli("train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64",
                         "--store", tmp_path / "store", "--quiet")
    assert status == 2
    assert_one_line_error(err, "cannot create a training run in")


@pytest.mark.slow
def test_publish_into_read_only_store_keeps_the_run_for_a_resume(tmp_path, read_only, cli):
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    writable_again = read_only(store / "models")
    args = ("mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64", "--batch-size", "32",
            "--store", store, "--quiet")
    status, _, err = cli("train", *args)
    assert status == 2
    line = assert_one_line_error(err, "cannot write model", "the trained run is kept", "--resume")
    run_id = line.split("--resume ")[1].split("`")[0]
    assert not list((store / "models").iterdir())

    writable_again()
    status, out, err = cli("train", "mnist", "--resume", run_id, "--store", store, "--quiet")
    assert status == 0, err
    (entry,) = ModelStore(store).entries(verify=True)
    assert entry.id == run_id and not entry.problem


def test_a_publish_killed_after_the_rename_completes_when_run_again(tmp_path, monkeypatch):
    """The window between the entry's rename and run.json's `published`: a second publish (what `--resume` does)
    returns the entry instead of failing on the existing directory, and the run is then marked published."""
    import capsrobust.store

    store = ModelStore(tmp_path)
    name = "cnn-small"
    spec = {"model": name, "config": model_config(name), "dataset": {"name": "mnist", "source": "subset"},
            "settings": {}, "data": {}}
    run_dir = store.new_run(spec)
    card = {"model": name, "config": spec["config"], "dataset": spec["dataset"]}
    write_json = capsrobust.store.write_json

    def die_on_run_file(path, value):
        if Path(path).name == "run.json":
            raise SystemExit("killed")  # the process dies here
        write_json(path, value)

    monkeypatch.setattr(capsrobust.store, "write_json", die_on_run_file)
    with pytest.raises(SystemExit):
        store.publish(run_dir, create_model(name), card)
    monkeypatch.undo()
    assert [e.id for e in store.entries()] == [run_dir.name] and "published" not in store.read_run(run_dir)
    assert [d.name for d, _ in store.unfinished_runs()] == [run_dir.name]  # what `--resume` would pick up

    again = store.publish(run_dir, create_model(name), card)
    assert again.id == run_dir.name and not again.problem
    assert store.read_run(run_dir)["published"] == run_dir.name and store.unfinished_runs() == []
    assert store.load(store.resolve(name)).count_params() == create_model(name).count_params()
