"""Per-image outcomes, resume and shards: a sweep split into shards and merged is the sweep run whole, sweeps of
different models on the same images joined are the sweep of all of them, and a stopped sweep resumed is the sweep run
through; reports from other sweeps, or edited ones, are refused in one line.

A CNN with a decoder trained for one epoch on the bundled subset, and the zoo's cnn-small, keep this fast: what is
tested is the bookkeeping, not robustness.
Batches of one image make every gradient independent of which other images share its batch, so a shard computes
exactly what the whole run computes for each of its images.
"""

import dataclasses
import json

import numpy as np
import pytest

from capsrobust import report
from capsrobust.cli import main
from capsrobust.data import load_dataset
from capsrobust.detection import ReconstructionDetector, reconstruction_distances
from capsrobust.errors import ConfigError
from capsrobust.models import model_config
from capsrobust.sweep import ModelUnderTest, SweepConfig, checks, run_sweep
from capsrobust.sweep.merge import combine_records, join_records, merge_records
from capsrobust.sweep.records import PARTIAL_FILE, SWEEP_FILE, read_record
from capsrobust.training import TrainSettings, fit

pytestmark = pytest.mark.slow  # trains a small CNN

IMAGES = 12
CONFIG = SweepConfig(methods=("fgsm", "bim"), eps_values=(0.05, 0.1), steps=3, batch_size=1, examples=2)


@pytest.fixture(scope="module")
def setup(mnist_subset, trained_small_models, tmp_path_factory):
    # A decoder and a detector are what matter here, not accuracy: 1,000 images (as the CLI test) train them.
    recon = fit("cnn-recon", model_config("cnn-recon"), load_dataset("mnist", subset=True, limit=1000),
                TrainSettings(epochs=1, batch_size=64), tmp_path_factory.mktemp("cnn-recon")).model
    cnn = trained_small_models["cnn-small"]
    images, labels = mnist_subset.x_test[:IMAGES], mnist_subset.y_test[:IMAGES]
    detector = ReconstructionDetector.fit(reconstruction_distances(recon, mnist_subset.x_val[:50]))
    models = [ModelUnderTest("cnn-recon-mnist-20260101-000000-aaaaaa", "cnn-recon", "cnn", recon, {}, detector),
              ModelUnderTest("cnn-small-mnist-20260101-000000-bbbbbb", "cnn-small", "cnn", cnn, {})]
    # The first shard must hold the images the unbounded-attack check runs on (the first attacked ones).
    correct = [m.model.predict(images, verbose=0)["scores"].argmax(-1) == labels for m in models]
    split = next(i for i in range(1, IMAGES) if all(c[:i].sum() >= 2 for c in correct))
    return models, images, labels, split


@pytest.fixture(scope="module")
def whole(setup):
    """The sweep run in one process on all `IMAGES` images: what merged shards and a resumed run must equal.

    The unbounded-attack check runs on the first 2 attacked images (the first shard holds them), as in every test here.
    """
    models, images, labels, _ = setup
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checks, "EPS_ONE_IMAGES", 2)
        return run_sweep(models, CONFIG, images, labels)


def _metadata(models, first: int, count: int, shard) -> dict:
    return {"command": "compare", "data": {"name": "mnist", "source": "subset", "limit": IMAGES, "evaluated": count,
                                           "first_index": first, "shard": shard},
            "models": {m.id: {"card": {"model": m.name, "family": m.family},
                              "detector": m.detector.to_dict() if m.detector else None} for m in models},
            "transfer_sources": {}}


def _same(first, second) -> None:
    """Two results agree in every figure, worst case, verdict, check and noise baseline (not in wall time)."""
    def cells(result):
        return [json.loads(json.dumps({**c.to_dict(), "seconds": None})) for c in result.cells]

    assert cells(first) == cells(second)
    for name in ("worst_case", "verdicts", "checks", "noise"):
        assert json.loads(json.dumps(getattr(first, name))) == json.loads(json.dumps(getattr(second, name))), name


def test_merged_shards_equal_the_whole_run(setup, whole, tmp_path, monkeypatch):
    models, images, labels, split = setup
    monkeypatch.setattr(checks, "EPS_ONE_IMAGES", 2)
    directories = []
    for k, (start, stop) in enumerate([(0, split), (split, IMAGES)], start=1):
        part = run_sweep(models, CONFIG, images[start:stop], labels[start:stop], first_index=start)
        directories.append(tmp_path / f"shard{k}")
        report.write_results(part, directories[-1], _metadata(models, start, stop - start, [k, 2]))
    merged, metadata = merge_records([read_record(d) for d in reversed(directories)])  # any order
    _same(merged, whole)
    assert any(c.attack_success_rate for c in whole.cells) and whole.verdicts  # there was something to merge
    assert metadata["data"]["evaluated"] == IMAGES and metadata["data"]["shard"] is None

    # The merge command writes the same report; and refuses shards that do not make one sweep.
    status = main(["merge", *map(str, directories), "--output", str(tmp_path / "merged")])
    saved = read_record(tmp_path / "merged").content
    assert status == 0 and saved["verdicts"] == json.loads(json.dumps(whole.verdicts))
    with pytest.raises(ConfigError, match="shards 1 to 2"):
        merge_records([read_record(directories[0])])
    other = tmp_path / "other"
    report.write_results(run_sweep(models, dataclasses.replace(CONFIG, seed=1, methods=("fgsm",)), images[split:],
                                   labels[split:], first_index=split), other,
                         _metadata(models, split, IMAGES - split, [2, 2]))
    with pytest.raises(ConfigError, match="its config differs"):
        merge_records([read_record(directories[0]), read_record(other)])


def test_sweeps_of_different_models_join_into_the_sweep_of_both(setup, whole, tmp_path, monkeypatch, capsys):
    models, images, labels, _ = setup
    monkeypatch.setattr(checks, "EPS_ONE_IMAGES", 2)
    directories = []
    for mut, config in zip(models, [CONFIG, dataclasses.replace(CONFIG, skip_inapplicable=True)]):  # attack, compare
        directories.append(tmp_path / mut.name)
        report.write_results(run_sweep([mut], config, images, labels), directories[-1],
                             _metadata([mut], 0, IMAGES, None))
    joined, metadata = combine_records([read_record(d) for d in directories])
    _same(joined, whole)
    assert whole.verdicts and metadata["data"]["joined_from"] == [str(d) for d in directories]

    status = main(["merge", *map(str, directories), "--output", str(tmp_path / "joined")])
    saved = read_record(tmp_path / "joined").content
    assert status == 0 and saved["verdicts"] == json.loads(json.dumps(whole.verdicts))
    assert list(saved["models"]) == [m.id for m in models]

    # Refused: other settings, other images, a model in two whole reports.
    alone = read_record(directories[1]).result
    report.write_results(dataclasses.replace(alone, config=dataclasses.replace(CONFIG, seed=1)), tmp_path / "seed1",
                         _metadata([models[1]], 0, IMAGES, None))
    report.write_results(alone, tmp_path / "elsewhere", _metadata([models[1]], 1, IMAGES, None))
    for other, message in [("seed1", "another seed"), ("elsewhere", "on other images"),
                           (models[0].name, "joined only when no model is in two")]:
        with pytest.raises(ConfigError, match=message):
            combine_records([read_record(directories[0]), read_record(tmp_path / other)])
    with pytest.raises(ConfigError, match="a model is in two"):
        join_records([read_record(directories[0]), read_record(directories[0])])
    capsys.readouterr()
    assert main(["merge", str(directories[0]), str(tmp_path / "seed1"), "--output", str(tmp_path / "no")]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "no").exists()


def test_a_stopped_sweep_resumes_from_its_finished_cells(setup, whole, tmp_path, monkeypatch):
    models, images, labels, _ = setup
    monkeypatch.setattr(checks, "EPS_ONE_IMAGES", 2)
    metadata = _metadata(models, 0, IMAGES, None)

    def stop_after_three(so_far):
        report.write_partial(so_far, tmp_path, metadata)
        if len(so_far.cells) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(models, CONFIG, images, labels, on_cell=stop_after_three)
    stopped = read_record(tmp_path, partial=True)
    assert len(stopped.result.cells) == 3 and not stopped.complete

    import capsrobust.sweep.run as run_module

    attacked = []
    attack_cell = run_module._attack_cell
    monkeypatch.setattr(run_module, "_attack_cell", lambda step, eps, *a: attacked.append((step.attack, eps))
                        or attack_cell(step, eps, *a))
    resumed = run_sweep(models, CONFIG, images, labels, previous=stopped.result)
    _same(resumed, whole)
    assert len(attacked) == len(whole.cells) - 3  # the finished cells were not run again


def test_edited_or_foreign_reports_are_refused_in_one_line(setup, tmp_path, capsys):
    models, images, labels, _ = setup
    run = run_sweep(models, SweepConfig(methods=("fgsm",), eps_values=(0.1,), batch_size=8, trust_checks=False),
                    images[:8], labels[:8])
    report.write_partial(run, tmp_path, _metadata(models, 0, 8, None))
    content = json.loads((tmp_path / PARTIAL_FILE).read_text())
    content["cells"][0]["adversarial_accuracy"] = 1.0
    (tmp_path / PARTIAL_FILE).write_text(json.dumps(content))
    with pytest.raises(ConfigError, match="was edited or damaged"):
        read_record(tmp_path, partial=True)
    report.write_results(run, tmp_path / "done", _metadata(models, 0, 8, None))
    with pytest.raises(ConfigError, match="not a shard"):
        merge_records([read_record(tmp_path / "done")])
    np.savez(tmp_path / "done" / "outcomes.npz", other=np.zeros(3))
    with pytest.raises(ConfigError, match="not the one sweep.json was written with"):
        read_record(tmp_path / "done")
    capsys.readouterr()
    assert main(["merge", str(tmp_path), "--output", str(tmp_path / "m")]) == 2  # a stopped sweep, not a shard
    err = capsys.readouterr().err
    assert "sweep.json does not exist" in err and "Traceback" not in err and not (tmp_path / "m").exists()
    for shard in ("3/2", "0/4", "a/b"):
        with pytest.raises(SystemExit) as exit_:
            main(["attack", "--model", "cnn-small", "--shard", shard])
        assert exit_.value.code == 2 and "expected K/N with 1 <= K <= N" in capsys.readouterr().err
    assert not (tmp_path / SWEEP_FILE).exists()
