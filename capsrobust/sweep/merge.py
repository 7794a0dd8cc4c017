"""Merging the shards of one sweep: each shard ran the same configuration on a disjoint, contiguous slice of the
test images (`capsrobust attack ... --shard K/N`); the merged report is the one a single run on all of them gives.

Every figure is recomputed from the concatenated per-image outcomes (`metrics.figures`), and the worst case,
verdicts and trust checks from those, so nothing is averaged that cannot be (an AUROC, a worst case). Attacks with a
random start draw their starts per batch, so a shard's draws differ from the whole run's; deterministic attacks
(FGSM, BIM) and the noise baseline (drawn per image) give the same figures exactly (`tests/test_shards.py`).
"""

import numpy as np

from capsrobust.detection import ReconstructionDetector
from capsrobust.errors import ConfigError
from capsrobust.sweep import metrics
from capsrobust.sweep.plan import ModelUnderTest
from capsrobust.sweep.records import SweepRecord
from capsrobust.sweep.results import Cell, CleanPass, Outcome, SweepResult
from capsrobust.sweep.run import summarise

# What must be equal in every shard's report for them to be parts of one sweep.
_SAME = ("config", "command", "models", "transfer_sources")
_SAME_DATA = ("name", "source", "limit")


def merge_records(records: list[SweepRecord]) -> tuple[SweepResult, dict]:
    """One sweep from its shards.

    Args:
        records: the finished reports of shards 1 to N of one sweep (`records.read_record`), in any order.

    Returns:
        `(result, metadata)`: the merged result and the report metadata (the first shard's, over all the images).

    Raises:
        ConfigError: a report that is not finished, reports of different sweeps (configuration, models, data,
            seeds), or shards missing, repeated or not contiguous.
    """
    if not records:
        raise ConfigError("merge needs the directories of the shards to merge")
    for record in records:
        if not record.complete:
            raise ConfigError(f"{record.directory} holds a stopped sweep; finish it with --resume first")
        if not (record.content.get("data") or {}).get("shard"):
            raise ConfigError(f"{record.directory} is not a shard (it was run without --shard)")
    records = sorted(records, key=lambda r: r.content["data"]["shard"][0])
    first = records[0].content
    for record in records[1:]:
        for key in _SAME:
            if record.content.get(key) != first.get(key):
                raise ConfigError(f"{record.directory} is a shard of another sweep: its {key} differs from "
                                  f"{records[0].directory}'s")
        for key in _SAME_DATA:
            if record.content["data"].get(key) != first["data"].get(key):
                raise ConfigError(f"{record.directory} is a shard of another sweep: its data {key} differs from "
                                  f"{records[0].directory}'s")
    shards = [r.content["data"]["shard"] for r in records]
    count = shards[0][1]
    if [k for k, _ in shards] != list(range(1, count + 1)):
        raise ConfigError(f"merge needs shards 1 to {count} of the sweep, each once. Received shards "
                          f"{', '.join(f'{k}/{n}' for k, n in shards)}")
    for before, after in zip(records, records[1:]):
        end = before.content["data"]["first_index"] + before.content["data"]["evaluated"]
        if after.content["data"]["first_index"] != end:
            raise ConfigError(f"{after.directory} does not start where {before.directory} ends (image {end})")
    keys = [[(c.model_id, c.attack, c.eps) for c in r.result.cells] for r in records]
    if any(k != keys[0] for k in keys[1:]):
        raise ConfigError("the shards ran different cells (models, attacks or eps); merge shards of one sweep")
    return _merged(records), _metadata(records)


def _merged(records: list[SweepRecord]) -> SweepResult:
    parts = [r.result for r in records]
    result = SweepResult(parts[0].config, skipped=parts[0].skipped)
    for model_id in parts[0].clean:
        distances = [p.clean[model_id].distances for p in parts]
        result.clean[model_id] = CleanPass(
            np.concatenate([p.clean[model_id].correct for p in parts]),
            None if distances[0] is None else np.concatenate(distances))
        if model_id in parts[0].noise_correct:
            result.noise_correct[model_id] = {eps: np.concatenate([p.noise_correct[model_id][eps] for p in parts])
                                              for eps in parts[0].noise_correct[model_id]}
    for index, cell in enumerate(parts[0].cells):
        key = (cell.model_id, cell.attack, cell.eps)
        outcome = Outcome.concatenate([p.outcomes[key] for p in parts])
        merged = Cell.from_dict({**cell.to_dict(),
                                 **metrics.figures(outcome, result.clean[cell.model_id], cell.detector_threshold),
                                 "seconds": round(sum(p.cells[index].seconds for p in parts), 2),
                                 "members_run": _summed([p.cells[index].members_run for p in parts])})
        if merged.transfer_source is not None:
            whitebox = result.cell(cell.model_id, cell.attack_options["base"], cell.eps)
            merged.whitebox_accuracy = None if whitebox is None else whitebox.adversarial_accuracy
        result.cells.append(merged)
        result.outcomes[key] = outcome
        result.survivors[key] = outcome.robust
        roc = metrics.roc_data(outcome, result.clean[cell.model_id])
        if roc is not None:
            result.roc[key] = roc
    # The unbounded-attack check runs on the first attacked images of a run: the first shard's are the whole run's.
    result.checks = [c for c in records[0].content.get("checks", []) if c["check"] == "unbounded attack wins"]
    summarise(result, _models(records[0].content))
    result.seconds = sum(r.content.get("seconds", 0.0) for r in records)
    return result


def _models(content: dict) -> list[ModelUnderTest]:
    """The models of a report, as its metadata describes them (no weights needed to summarise)."""
    models = []
    for model_id, described in content["models"].items():
        card = described.get("card") or {}
        detector = described.get("detector")
        models.append(ModelUnderTest(model_id, card.get("model", model_id), card.get("family", "?"), None, card,
                                     ReconstructionDetector(**detector) if detector else None))
    return models


def _summed(runs: list[dict | None]) -> dict | None:
    """The shards' `members_run` as one run's: images fooled per member and per restart, and survivors, added."""
    if any(run is None for run in runs):
        return None
    members = {name: {"ran": any(r["members"][name]["ran"] for r in runs),
                      "fooled": sum(r["members"][name]["fooled"] for r in runs)} for name in runs[0]["members"]}
    summed = {"members": members, "survived": sum(r["survived"] for r in runs)}
    if "restarts" in runs[0]:
        summed["restarts"] = [sum(counts) for counts in zip(*(r["restarts"] for r in runs))]
    return summed


def _metadata(records: list[SweepRecord]) -> dict:
    first = records[0].content
    data = {**first["data"], "evaluated": sum(r.content["data"]["evaluated"] for r in records), "shard": None,
            "merged_from": [str(r.directory) for r in records]}
    return {key: first[key] for key in _SAME if key in first} | {"data": data}
