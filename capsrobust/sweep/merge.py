"""Merging the shards of one sweep: each shard ran the same configuration on a disjoint, contiguous slice of the
test images (`capsrobust attack ... --shard K/N`); the merged report is the one a single run on all of them gives.
Joining the reports of different models run apart on the same images with the same configuration: the joined report
is the one a single `compare` of all of them gives, verdicts between every pair included, so a model trained later
is compared with earlier ones without attacking those again.

Every figure is recomputed from the concatenated per-image outcomes (`metrics.figures`), and the worst case,
verdicts and trust checks from those, so nothing is averaged that cannot be (an AUROC, a worst case). Attacks with a
random start draw their starts per batch, so a shard's draws differ from the whole run's; deterministic attacks
(FGSM, BIM) and the noise baseline (drawn per image) give the same figures exactly (`tests/test_shards.py`).
"""

import dataclasses

import numpy as np

from capsrobust.detection import ReconstructionDetector
from capsrobust.errors import ConfigError
from capsrobust.sweep import metrics
from capsrobust.sweep.checks import EPS_ONE_CHECK
from capsrobust.sweep.plan import ModelUnderTest
from capsrobust.sweep.records import SweepRecord
from capsrobust.sweep.results import Cell, CleanPass, Outcome, SweepResult
from capsrobust.sweep.run import summarise

# What must be equal in every shard's report for them to be parts of one sweep.
_SAME = ("config", "command", "models", "transfer_sources")
_SAME_DATA = ("name", "source", "limit")
# What may differ between the reports of one join: whether an inapplicable attack stops the sweep or is skipped
# (`compare` skips, `attack` stops) decides nothing about the cells that ran; and where each report came from.
_JOIN_IGNORES = ("skip_inapplicable",)
_PROVENANCE = ("merged_from", "joined_from")


def combine_records(records: list[SweepRecord]) -> tuple[SweepResult, dict]:
    """The shards of one sweep merged (`merge_records`), or reports of different models joined (`join_records`):
    reports that share no model are joined, any others must be shards of one sweep."""
    if len(records) > 1 and _disjoint_models(records):
        return join_records(records)
    return merge_records(records)


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
            raise ConfigError(f"{record.directory} is not a shard (it was run without --shard); reports of whole "
                              f"sweeps are joined only when no model is in two of them")
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


def join_records(records: list[SweepRecord]) -> tuple[SweepResult, dict]:
    """One report of all the models of `records`: sweeps of different models on the same images.

    Each model's cells, per-image outcomes, clean pass, noise baseline and unbounded-attack check are its own
    report's; the worst case, verdicts and trust checks are recomputed over all of them (`run.summarise`), as a
    single run of every model would make them.

    Args:
        records: finished reports (of whole sweeps, merged shards, or the same shard of each), in the order the
            joined report lists their models.

    Returns:
        `(result, metadata)`: the joined result and the report metadata.

    Raises:
        ConfigError: a report that is not finished, a model in two reports, or reports on other images (data set,
            image range) or with another configuration (attacks, eps, steps, seeds, batch size).
    """
    for record in records:
        if not record.complete:
            raise ConfigError(f"{record.directory} holds a stopped sweep; finish it with --resume first")
    if not _disjoint_models(records):
        raise ConfigError("a model is in two of the reports; join reports of different models")
    first = records[0]
    for record in records[1:]:
        ours, theirs = _comparable_config(first.content), _comparable_config(record.content)
        if ours != theirs:
            key = next(k for k in {**ours, **theirs} if ours.get(k) != theirs.get(k))
            raise ConfigError(f"{record.directory} was run with another {key} than {first.directory}; join "
                              f"reports run with the same attacks, eps and settings")
        if _comparable_data(record.content) != _comparable_data(first.content):
            raise ConfigError(f"{record.directory} was run on other images than {first.directory} (data set, "
                              f"--limit or image range differ); join reports on the same images")
    parts = [r.result for r in records]
    config = dataclasses.replace(parts[0].config, skip_inapplicable=any(p.config.skip_inapplicable for p in parts))
    result = SweepResult(config, skipped=[s for p in parts for s in p.skipped])
    for part in parts:
        result.clean.update(part.clean)
        result.noise_correct.update(part.noise_correct)
        for cell in part.cells:
            key = (cell.model_id, cell.attack, cell.eps)
            result.cells.append(cell)
            result.outcomes[key] = part.outcomes[key]
            result.survivors[key] = part.outcomes[key].robust
            roc = metrics.roc_data(part.outcomes[key], part.clean[cell.model_id])
            if roc is not None:
                result.roc[key] = roc
    result.checks = [c for r in records for c in r.content.get("checks", []) if c["check"] == EPS_ONE_CHECK]
    summarise(result, [m for r in records for m in _models(r.content)])
    result.seconds = sum(r.content.get("seconds", 0.0) for r in records)
    commands = {r.content.get("command") for r in records}
    metadata = {"command": commands.pop() if len(commands) == 1 else "compare", "models": {}, "transfer_sources": {},
                "data": {**_comparable_data(first.content), "joined_from": [str(r.directory) for r in records]}}
    for record in records:
        metadata["models"].update(record.content["models"])
        metadata["transfer_sources"].update(record.content.get("transfer_sources") or {})
    return result, metadata


def _disjoint_models(records: list[SweepRecord]) -> bool:
    model_ids = [model_id for record in records for model_id in record.content["models"]]
    return len(set(model_ids)) == len(model_ids)


def _comparable_config(content: dict) -> dict:
    return {k: v for k, v in content["config"].items() if k not in _JOIN_IGNORES}


def _comparable_data(content: dict) -> dict:
    return {k: v for k, v in content["data"].items() if k not in _PROVENANCE}


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
    result.checks = [c for c in records[0].content.get("checks", []) if c["check"] == EPS_ONE_CHECK]
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
