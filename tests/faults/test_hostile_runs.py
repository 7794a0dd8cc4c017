"""Hostile run directories: a resume from a run whose files were damaged says so in one line.

A run interrupted after epoch 1 is copied once per fault, damaged, and resumed with `capsrobust train --resume`.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error


@pytest.fixture(scope="module")
def interrupted_store(tmp_path_factory):
    """A store holding one cnn-small run that completed epoch 1 of 2 and was never published; returns (root, id)."""
    from capsrobust.cli import main

    root = tmp_path_factory.mktemp("store")
    assert main(["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64",
                 "--val-size", "32", "--batch-size", "16", "--quiet", "--store", str(root)]) == 0
    shutil.rmtree(root / "models")
    (run_dir,) = (root / "runs").iterdir()
    spec = json.loads((run_dir / "run.json").read_text())
    spec.pop("published")
    (run_dir / "run.json").write_text(json.dumps(spec))
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "finished": False}))
    return root, run_dir.name


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])  # a zip's local header, cut off: what a full disk leaves


def _write(name: str, text: str):
    return lambda run: (run / name).write_text(text)


# fault -> (damage, what the error says)
FAULTS = {
    "state-not-json": (_write("state.json", "{not json"), "state.json: not a readable run state"),
    "state-unknown-key": (_write("state.json", '{"epoch": 1, "evil": true}'), "unexpected keyword argument 'evil'"),
    "state-not-an-object": (_write("state.json", "[1]"), "state.json: not a readable run state"),
    "checkpoint-weights-missing": (lambda run: (run / "epoch-0001.weights.h5").unlink(),
                                   "the checkpoint of epoch 1 is missing or damaged"),
    "checkpoint-weights-truncated": (lambda run: (run / "epoch-0001.weights.h5").write_bytes(b"\x89HDF\r\n"),
                                     "the checkpoint of epoch 1 is missing or damaged"),
    "checkpoint-optimizer-pickled": (_write("epoch-0001.optimizer.npz", "junk"),
                                     "the checkpoint of epoch 1 is missing or damaged"),
    "checkpoint-optimizer-truncated": (lambda run: _truncate(run / "epoch-0001.optimizer.npz"),
                                       "the checkpoint of epoch 1 is missing or damaged"),
    "checkpoint-seed-state-truncated": (lambda run: _truncate(run / "epoch-0001.rng.npz"),
                                        "the checkpoint of epoch 1 is missing or damaged"),
    "checkpoint-seed-state-foreign": (lambda run: np.savez(run / "epoch-0001.rng.npz", np.zeros(3)),
                                      "seed states that do not fit this model"),
    "run-json-not-json": (_write("run.json", "{not json"), "run.json is missing, unreadable or incomplete"),
    "run-json-incomplete": (_write("run.json", "{}"), "run.json is missing, unreadable or incomplete"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_resume_of_a_damaged_run_is_one_line(fault, interrupted_store, tmp_path, cli):
    root, run_id = interrupted_store
    store = tmp_path / "store"
    shutil.copytree(root, store)
    damage, expected = FAULTS[fault]
    damage(store / "runs" / run_id)
    status, _, err = cli("train", "mnist", "--resume", run_id, "--epochs", "2", "--store", store, "--quiet")
    assert status == 2
    assert_one_line_error(err, run_id, expected)
    assert not (store / "models").exists()


@pytest.mark.slow
def test_the_undamaged_copy_resumes(interrupted_store, tmp_path, cli):
    """The control: the same copy without damage resumes and publishes, so each fault above is what fails."""
    root, run_id = interrupted_store
    shutil.copytree(root, tmp_path / "store")
    status, _, err = cli("train", "mnist", "--resume", run_id, "--epochs", "2", "--store", tmp_path / "store",
                         "--quiet")
    assert status == 0, err
    (entry,) = Path(tmp_path / "store" / "models").iterdir()
    assert json.loads((entry / "card.json").read_text())["training"]["epochs_completed"] == 2
