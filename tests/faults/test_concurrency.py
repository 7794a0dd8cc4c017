"""Two trainings and an attack sweep on one store at the same time: no entry corrupts another.

The processes start together and overlap for most of their run (each spends its first seconds importing TensorFlow,
so they reach the store at about the same time); the test then checks that every entry verifies and loads, that
each run is published once, and that `capsrobust models` lists all of them as healthy.
"""

import json

import pytest

from capsrobust.models import create_model, model_config
from capsrobust.store import ModelStore

from conftest import start_capsrobust

TINY = ["--subset", "--model", "cnn-small", "--epochs", "2", "--limit", "64", "--val-size", "32", "--batch-size", "16",
        "--quiet"]


@pytest.mark.slow
def test_two_trainings_and_an_attack_at_once_leave_every_entry_whole(tmp_path, cli, monkeypatch):
    home = tmp_path / "home"
    store = ModelStore(home)
    spec = {"model": "cnn-recon", "config": model_config("cnn-recon"),
            "dataset": {"name": "mnist", "source": "subset"}}
    target = store.publish(store.new_run(spec), create_model("cnn-recon"),
                           {"model": "cnn-recon", "family": "cnn", "config": spec["config"], "dataset": spec["dataset"],
                            "metrics": {"val_accuracy": 0.1}})

    processes = [
        start_capsrobust("train", "mnist", *TINY, "--seed", "1", home=home),
        start_capsrobust("train", "mnist", *TINY, "--seed", "2", home=home),
        start_capsrobust("attack", "--model", target.id, "--method", "fgsm,bim", "--eps", "0.1", "--steps", "2",
                         "--limit", "20", "--no-checks", "--output", home / "reports", home=home),
    ]
    results = [(p.args[3], *p.communicate(timeout=600), p.returncode) for p in processes]
    for command, out, err, status in results:
        assert status == 0, f"{command} failed:\n{err[-3000:]}"

    entries = store.entries(verify=True)
    assert len(entries) == 3 and not [e.problem for e in entries if e.problem]
    trained = [e for e in entries if e.id != target.id]
    assert {e.card["training"]["seed"] for e in trained} == {1, 2}
    for entry in entries:
        store.load(entry)
    assert sorted(p.name for p in store.models_dir.iterdir()) == sorted(e.id for e in entries)  # no staging left
    assert store.unfinished_runs() == []
    for run_dir in store.runs_dir.iterdir():
        assert json.loads((run_dir / "run.json").read_text())["published"] == run_dir.name
    (report,) = (home / "reports").iterdir()
    cells = json.loads((report / "sweep.json").read_text())["cells"]
    assert [(c["model_id"], c["attack"]) for c in cells] == [(target.id, "fgsm"), (target.id, "bim")]

    # The registry table of `models` builds every model (seconds); the store listing is what is under test here.
    monkeypatch.setattr("capsrobust.models.list_models", lambda: [])
    status, out, _ = cli("models", "--store", home)
    assert status == 0
    for entry in entries:
        (row,) = [line for line in out.splitlines() if entry.id in line]
        assert row.rstrip(" │").endswith("ok"), row


def test_two_identical_sweeps_in_the_same_second_write_separate_reports(tmp_path, cli, monkeypatch):
    """Report directories are named to the second; two identical attacks then must not share (and overwrite) one."""
    store = ModelStore(tmp_path / "home")
    spec = {"model": "cnn-small", "config": model_config("cnn-small"), "dataset": {"name": "mnist", "source": "subset"}}
    entry = store.publish(store.new_run(spec), create_model("cnn-small"),
                          {"model": "cnn-small", "family": "cnn", "config": spec["config"], "dataset": spec["dataset"]})
    monkeypatch.setattr("capsrobust.report.output_dir_name", lambda *args: "attack-same-second")
    for seed in ("1", "2"):
        status, _, err = cli("attack", "--model", entry.id, "--method", "fgsm", "--limit", "8", "--no-checks",
                             "--seed", seed, "--output", tmp_path / "reports", "--store", store.root)
        assert status == 0, err
    reports = sorted((tmp_path / "reports").iterdir())
    assert [p.name for p in reports] == ["attack-same-second", "attack-same-second-2"]
    assert [json.loads((p / "sweep.json").read_text())["config"]["seed"] for p in reports] == [1, 2]
