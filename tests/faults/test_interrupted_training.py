"""Interrupted training: SIGKILL at exact points of one run, each followed by `--resume`.

One run of 3 epochs is killed mid-epoch 2, then (resumed) while epoch 2's weights are being written, then (resumed)
right after epoch 2's checkpoint, then (resumed) between its entry's rename into the store and the run's record of
it, then resumed to the end. Every resume must continue from the last completed epoch
with the optimizer state it had (and so the learning-rate schedule, a function of the optimizer's step), and the
final entry must be complete. A chain rather than separate runs: each kill also tests the resume before it, at a
third of the cost. Writes interrupted in-process (card, entry, checkpoint) are in `test_atomic_writes.py`.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from capsrobust.models import get_model_spec
from capsrobust.store import CARD_FILE, ModelStore

from conftest import ROOT, subprocess_env

KILLPOINT = Path(__file__).with_name("killpoint.py")
TRAIN = ["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "3", "--limit", "64", "--val-size", "32",
         "--batch-size", "16", "--quiet"]
STEPS = 4  # 64 images in batches of 16


def _run_until(point: str, args: list[str], home: Path, tmp_path: Path) -> subprocess.CompletedProcess | None:
    """Runs capsrobust to `point` and SIGKILLs it there (returns None), or to the end with point "none"."""
    ready = tmp_path / f"ready-{point.replace(':', '-')}"
    process = subprocess.Popen([sys.executable, str(KILLPOINT), point, str(ready), *args], cwd=ROOT,
                               env=subprocess_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            if point == "none":
                return subprocess.CompletedProcess(process.args, process.returncode, out, err)
            pytest.fail(f"exited with {process.returncode} before reaching {point}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"did not reach {point} in 300 s")
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    return None


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def _optimizer_step(run_dir: Path, epoch: int) -> int:
    with np.load(run_dir / f"epoch-{epoch:04d}.optimizer.npz", allow_pickle=False) as saved:
        return int(saved["0"])  # Adam's first variable is its iteration count


def _visible_files(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
def test_sigkill_at_every_point_then_resume_loses_no_finished_epoch(tmp_path):
    home = tmp_path / "home"
    store = ModelStore(home)

    # 1. Mid-epoch 2: epoch 1 is checkpointed, epoch 2 is lost.
    assert _run_until("batch:2:2", TRAIN, home, tmp_path) is None
    (run_dir,) = store.runs_dir.iterdir()
    after_kill = _state(run_dir)
    assert after_kill["epoch"] == 1 and not after_kill["finished"]
    assert {"epoch-0001.weights.h5", "epoch-0001.optimizer.npz", "state.json"} <= _visible_files(run_dir)
    assert _optimizer_step(run_dir, 1) == STEPS
    epoch_1 = after_kill["history"][0]
    weights_1 = (run_dir / "epoch-0001.weights.h5").read_bytes()

    # 2. Resumed, then killed while epoch 2's weights are being written: epoch 1's checkpoint is still the one.
    assert _run_until("checkpoint-write:2", ["train", "mnist", "--resume", "--quiet"], home, tmp_path) is None
    assert _state(run_dir)["epoch"] == 1
    assert (run_dir / "epoch-0001.weights.h5").read_bytes() == weights_1
    assert "epoch-0002.weights.h5" not in _visible_files(run_dir)

    # 3. Resumed, then killed right after epoch 2's checkpoint: epoch 2 is kept, with its optimizer's step.
    assert _run_until("after-checkpoint:2", ["train", "mnist", "--resume", "--quiet"], home, tmp_path) is None
    state = _state(run_dir)
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    assert state["history"][0] == epoch_1, "epoch 1 was trained again instead of resumed"
    assert _optimizer_step(run_dir, 2) == 2 * STEPS, "the optimizer restarted instead of resuming"
    best = f"epoch-{state['best_epoch']:04d}.weights.h5"
    assert {p.name for p in run_dir.glob("epoch-*")} == {
        "epoch-0002.weights.h5", "epoch-0002.optimizer.npz", "epoch-0002.rng.npz", best}
    assert not list(run_dir.glob(".*")), "temporary files of the killed checkpoint write were left"
    epoch_2 = state["history"][1]

    # 4. Resumed, then killed between the entry's rename into the store and run.json's record of it.
    assert _run_until("after-publish-rename", ["train", "mnist", "--resume", "--quiet"], home, tmp_path) is None
    assert [e.id for e in store.entries()] == [run_dir.name] and store.unfinished_runs()

    # 5. Resumed again: publishing is idempotent, so it completes with the one entry, trained for 3 epochs.
    done = _run_until("none", ["train", "mnist", "--resume", "--quiet"], home, tmp_path)
    assert done.returncode == 0, done.stderr
    (entry,) = store.entries(verify=True)
    assert not entry.problem and entry.id == run_dir.name
    card = json.loads((entry.path / CARD_FILE).read_text())
    training = card["training"]
    assert training["epochs_completed"] == 3 and [h["epoch"] for h in training["history"]] == [1, 2, 3]
    assert training["history"][:2] == [epoch_1, epoch_2]
    recipe = get_model_spec("cnn-small").recipe  # the settings the first command left to the recipe, kept by resumes
    assert (training["learning_rate"], training["lr_decay"], training["epochs"]) == (recipe.learning_rate,
                                                                                     recipe.lr_decay, 3)
    assert card["metrics"]["test_accuracy"] is not None and card["weights"]["sha256"]
    assert store.load(entry).count_params() == card["parameters"]
    assert _optimizer_step(run_dir, 3) == 3 * STEPS
    assert [p.name for p in store.models_dir.iterdir()] == [entry.id]
    assert store.unfinished_runs() == []
