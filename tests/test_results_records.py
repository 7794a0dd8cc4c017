"""The evaluation records in `results/`, where the README's adversarially-trained figures come from: each reads back
with its digests intact, merging a record's shards gives that record again image for image, and joining two models'
records gives the paired verdict stored beside them."""

import functools
from pathlib import Path

import numpy as np
import pytest

from capsrobust.sweep.merge import combine_records
from capsrobust.sweep.records import read_record

RESULTS = Path(__file__).resolve().parents[1] / "results"
RECORDS = sorted(p for p in RESULTS.glob("*") if (p / "sweep.json").is_file())
# Each record is read (and its digests checked) once; merging and joining leave the records they are given unchanged.
_read = functools.cache(read_record)
WHOLE = [p for p in RECORDS if (RESULTS / f"{p.name}-shard1of2").is_dir()]
JOINED = [p for p in RECORDS if "joined_from" in _read(p).content["data"]]


def _same_outcomes(result, expected) -> None:
    assert result.clean.keys() == expected.clean.keys()
    for model_id, clean in expected.clean.items():
        assert np.array_equal(result.clean[model_id].correct, clean.correct), model_id
    assert result.survivors.keys() == expected.survivors.keys()
    for key, survived in expected.survivors.items():
        assert np.array_equal(result.survivors[key], survived), key


def test_the_records_are_there():
    # The README cites these; an empty glob would let every test below pass by collecting nothing.
    assert len(RECORDS) >= 12 and len(WHOLE) >= 3 and len(JOINED) >= 2


@pytest.mark.parametrize("directory", RECORDS, ids=lambda p: p.name)
def test_every_record_reads_back_intact(directory):
    record = _read(directory)  # raises if sweep.json or outcomes.npz changed since the sweep wrote them
    assert record.complete and record.result.cells


@pytest.mark.parametrize("whole", WHOLE, ids=lambda p: p.name)
def test_merging_the_shards_gives_the_merged_record(whole):
    merged, _ = combine_records([_read(RESULTS / f"{whole.name}-shard{k}of2") for k in (1, 2)])
    _same_outcomes(merged, _read(whole).result)


@pytest.mark.parametrize("pair", JOINED, ids=lambda p: p.name)
def test_joining_the_models_records_gives_the_stored_verdict(pair):
    stored = _read(pair)
    assert stored.content["verdicts"]
    eps_values = stored.content["config"]["eps_values"]

    def own_record(model_id: str):
        (record,) = [r for r in map(_read, RECORDS)
                     if list(r.content["models"]) == [model_id] and r.content["data"]["shard"] is None
                     and r.content["config"]["eps_values"] == eps_values]
        return record

    joined, _ = combine_records([own_record(model_id) for model_id in stored.content["models"]])
    _same_outcomes(joined, stored.result)
    assert joined.verdicts == stored.content["verdicts"]
