"""Per-epoch checkpoints of a training run: weights, optimizer state and progress, written so a kill loses nothing.

A run directory holds `epoch-NNNN.weights.h5`, `epoch-NNNN.optimizer.npz` (Adam's moments and step count) and
`epoch-NNNN.rng.npz` (the states of the model's random seed generators, e.g. dropout's) for the last completed
epoch, the `epoch-NNNN.weights.h5` of the best validation epoch, and `state.json`, which names all of them. Files
are written under temporary names and renamed; `state.json` is replaced last and files it no longer names are
deleted after it, so after a kill at any instant it points at a complete checkpoint and at the weights of the best
epoch it records (a separate `best.weights.h5` replaced before `state.json` could hold an epoch the state never
recorded). Nothing here uses pickle: all of it is HDF5, `.npz` arrays loaded with `allow_pickle=False`, and JSON.
"""

import os
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np

from capsrobust.errors import StoreError
from capsrobust.io import atomic_path, read_json, write_json

STATE_FILE = "state.json"
LEGACY_BEST_WEIGHTS = "best.weights.h5"  # runs checkpointed before the best epoch's own file was kept


@dataclass
class RunState:
    """Progress of a run after its last completed epoch (epochs count from 1; 0 means none completed)."""

    epoch: int = 0
    best_epoch: int = 0
    best_val_accuracy: float = -1.0
    best_val_robust_accuracy: float = -1.0  # adversarial training: PGD accuracy of the best epoch, which it picks
    history: list = field(default_factory=list)
    finished: bool = False
    stop_reason: str = ""
    seconds: float = 0.0
    margin_schedule: dict = field(default_factory=dict)  # spread-loss models: {"start", "end", "epochs"}

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch


def _epoch_stem(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


def load_state(run_dir: Path) -> RunState:
    """The run's state, or a fresh one if no epoch has completed.

    Raises:
        StoreError: `state.json` exists but is not a state this version wrote (damaged or edited by hand).
    """
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return RunState()
    try:
        return RunState(**read_json(path))
    except (OSError, ValueError, TypeError) as error:  # unreadable, not JSON, not an object, unknown keys
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise StoreError(f"{path}: not a readable run state ({reason}); this run cannot be resumed, "
                         f"start a new one") from None


def save_state(run_dir: Path, state: RunState) -> None:
    write_json(Path(run_dir) / STATE_FILE, asdict(state))


def save_checkpoint(run_dir: Path, model, state: RunState) -> None:
    """Saves the weights and optimizer state of `state.epoch`, then points `state.json` at them.

    Args:
        run_dir: the run directory.
        model: the compiled model being trained.
        state: progress including the epoch just completed (and `best_epoch`, which may be this one).
    """
    run_dir = Path(run_dir)
    stem = _epoch_stem(state.epoch)
    with atomic_path(run_dir / f"{stem}.weights.h5", suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
    # The optimizer's variables again, explicitly: restoring them through `load_weights` into a built optimizer did
    # not reproduce an uninterrupted run (the resume test caught it); `load_own_variables` does.
    with atomic_path(run_dir / f"{stem}.optimizer.npz") as tmp:
        variables: dict = {}
        model.optimizer.save_own_variables(variables)
        with open(tmp, "wb") as f:
            np.savez(f, **variables)
    # Dropout's seed generators are variables but not weights, so `save_weights` leaves them out: without their
    # states a resumed run would draw the dropout masks of its process's first epoch again, not the next epoch's.
    with atomic_path(run_dir / f"{stem}.rng.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, *[keras.ops.convert_to_numpy(v) for v in _seed_states(model)])
    save_state(run_dir, state)
    keep = {f"{stem}.weights.h5", f"{stem}.optimizer.npz", f"{stem}.rng.npz",
            f"{_epoch_stem(state.best_epoch)}.weights.h5"}
    for old in run_dir.glob("epoch-*"):
        if old.name not in keep:
            old.unlink(missing_ok=True)


def best_weights(run_dir: Path, state: RunState) -> Path:
    """The weights file of the run's best validation epoch."""
    path = Path(run_dir) / f"{_epoch_stem(state.best_epoch)}.weights.h5"
    legacy = Path(run_dir) / LEGACY_BEST_WEIGHTS
    return legacy if not path.exists() and legacy.exists() else path


def restore_checkpoint(run_dir: Path, model, state: RunState) -> None:
    """Loads the weights and optimizer state of `state.epoch` into a compiled `model`.

    Raises:
        StoreError: the checkpoint's files are missing or damaged.
    """
    stem = Path(run_dir) / _epoch_stem(state.epoch)
    try:
        with warnings.catch_warnings():
            # The weights file holds the optimizer's variables too, which an unbuilt optimizer skips with a warning;
            # they are loaded from the .npz below.
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(f"{stem}.weights.h5")
        model.optimizer.build(model.trainable_variables)
        with np.load(f"{stem}.optimizer.npz", allow_pickle=False) as saved:
            model.optimizer.load_own_variables({key: saved[key] for key in saved.files})
        _restore_seed_states(model, Path(f"{stem}.rng.npz"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:  # missing, truncated, pickled, foreign
        reason = str(error).splitlines()[0][:120] if str(error) else type(error).__name__
        raise StoreError(f"{run_dir}: the checkpoint of epoch {state.epoch} is missing or damaged ({reason}); "
                         f"this run cannot be resumed, start a new one") from None


def _seed_states(model) -> list:
    """The model's variables that are neither weights nor metric state: its random seed generators' states."""
    known = {id(v) for v in model.weights} | {id(v) for v in model.metrics_variables}
    return [v for v in model.variables if id(v) not in known]


def _restore_seed_states(model, path: Path) -> None:
    """Loads `_seed_states` saved by `save_checkpoint`; a checkpoint from before they were saved has none to load."""
    if not path.exists():
        return
    states = _seed_states(model)
    with np.load(path, allow_pickle=False) as saved:
        values = [saved[f"arr_{index}"] for index in range(len(saved.files))]
    if [tuple(v.shape) for v in states] != [value.shape for value in values]:
        raise ValueError(f"{path.name} holds {len(values)} seed states that do not fit this model's {len(states)}")
    for variable, value in zip(states, values):
        variable.assign(value)


def remove_temporaries(run_dir: Path) -> None:
    """Deletes the temporary files of checkpoint writes that never finished (the process was killed mid-write).

    Call it only where no other process writes this run: on resume. Each may be as large as the model's weights.
    """
    for pattern in (".epoch-*", f".{LEGACY_BEST_WEIGHTS}.*", f".{STATE_FILE}.*"):
        for stale in Path(run_dir).glob(pattern):
            stale.unlink(missing_ok=True)


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / STATE_FILE).exists()
