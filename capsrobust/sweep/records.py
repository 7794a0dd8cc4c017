"""A sweep's record on disk, enough to resume it or merge it with other shards: the JSON report (`sweep.json`, or
`sweep.partial.json` while it runs) and the per-image outcomes beside it (`outcomes.npz`, numpy arrays only, read
with `allow_pickle=False`).

Both carry digests: the JSON the sha256 of its own canonical content and of the outcomes file, so a record that was
edited or damaged is refused instead of resumed or merged.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from capsrobust.errors import ConfigError
from capsrobust.io import atomic_path, read_json, write_json
from capsrobust.sweep.plan import SweepConfig, config_dict
from capsrobust.sweep.results import Cell, CleanPass, Outcome, SweepResult

SWEEP_FILE, PARTIAL_FILE, OUTCOMES_FILE = "sweep.json", "sweep.partial.json", "outcomes.npz"


def write_record(result: SweepResult, out_dir: Path, metadata: dict, complete: bool, extra: dict | None = None) -> Path:
    """Writes the outcomes, then the JSON that vouches for them (each atomically); returns the JSON's path.

    Args:
        metadata: what ran on what: command, data (with the evaluated image range), models and their cards.
        complete: the final `sweep.json` (the partial file is then removed) or `sweep.partial.json`.
        extra: more top-level JSON fields (the final report's worst case, checks, verdicts).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / OUTCOMES_FILE, suffix=".npz") as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **_arrays(result))
    content = {"config": config_dict(result.config), **metadata, "complete": complete,
               "cells": [c.to_dict() for c in result.cells], "skipped": result.skipped, **(extra or {}),
               "outcomes_sha256": _sha256_of(out_dir / OUTCOMES_FILE)}
    path = out_dir / (SWEEP_FILE if complete else PARTIAL_FILE)
    write_json(path, {**content, "digest": _digest(content)})
    if complete:
        (out_dir / PARTIAL_FILE).unlink(missing_ok=True)
    return path


@dataclass
class SweepRecord:
    """A sweep read back from disk.

    Attributes:
        directory: where it was read from.
        content: the JSON report (config, metadata, cells, and in a complete one the worst case, checks, verdicts).
        result: a `SweepResult` with the cells, their outcomes, each model's clean pass and noise baseline (no
            images, examples or ROC data: those stay with the run that made them).
    """

    directory: Path
    content: dict
    result: SweepResult

    @property
    def complete(self) -> bool:
        return bool(self.content.get("complete"))


def read_record(directory: Path, partial: bool = False) -> SweepRecord:
    """The sweep in `directory`: its `sweep.json` (or with `partial`, `sweep.partial.json`), checked.

    Raises:
        ConfigError: no such report, or one that was edited or damaged since it was written (digests).
    """
    path = Path(directory) / (PARTIAL_FILE if partial else SWEEP_FILE)
    try:
        content = read_json(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist: not a{' stopped' if partial else ' finished'} sweep") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is unreadable ({type(error).__name__})") from None
    if not isinstance(content, dict) or content.pop("digest", None) != _digest(content):
        raise ConfigError(f"{path} was edited or damaged since the sweep wrote it (its digest does not match)")
    outcomes = Path(directory) / OUTCOMES_FILE
    if not outcomes.is_file() or _sha256_of(outcomes) != content.get("outcomes_sha256"):
        raise ConfigError(f"{outcomes} is missing, or not the one {path.name} was written with")
    with np.load(outcomes, allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    config = SweepConfig(**{**content["config"], "methods": tuple(content["config"]["methods"]),
                            "eps_values": tuple(content["config"]["eps_values"])})
    result = SweepResult(config, cells=[Cell.from_dict(c) for c in content["cells"]], skipped=content["skipped"])
    for index, cell in enumerate(result.cells):
        prefix = f"cell/{index}/"
        result.outcomes[_key(cell)] = Outcome.from_arrays({k[len(prefix):]: v for k, v in arrays.items()
                                                           if k.startswith(prefix)})
    for model_id in dict.fromkeys(c.model_id for c in result.cells):
        result.clean[model_id] = CleanPass(arrays[f"clean/{model_id}/correct"],
                                           arrays.get(f"clean/{model_id}/distances"))
        noise = {float(k.rsplit("/", 1)[1]): v for k, v in arrays.items() if k.startswith(f"noise/{model_id}/")}
        if noise:
            result.noise_correct[model_id] = noise
    for key, outcome in result.outcomes.items():
        result.survivors[key] = outcome.robust
    return SweepRecord(Path(directory), content, result)


def _key(cell: Cell) -> tuple[str, str, float]:
    return cell.model_id, cell.attack, cell.eps


def _arrays(result: SweepResult) -> dict[str, np.ndarray]:
    arrays = {}
    for index, cell in enumerate(result.cells):
        for name, values in result.outcomes[_key(cell)].arrays().items():
            arrays[f"cell/{index}/{name}"] = values
    for model_id, clean in result.clean.items():
        arrays[f"clean/{model_id}/correct"] = clean.correct
        if clean.distances is not None:
            arrays[f"clean/{model_id}/distances"] = clean.distances
    for model_id, per_eps in result.noise_correct.items():
        for eps, correct in per_eps.items():
            arrays[f"noise/{model_id}/{eps!r}"] = correct
    return arrays


def _digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, allow_nan=True).encode()).hexdigest()


def _sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
