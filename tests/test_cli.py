"""The command line end to end, as a user runs it: real processes (then, for later steps, `main` in this process),
a temporary store, the bundled subset."""

import json
import os
import subprocess
import sys

import pytest


def capsrobust(*args, home):
    env = {**os.environ, "CAPSROBUST_HOME": str(home), "CAPSROBUST_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "capsrobust", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_train_models_test_end_to_end(tmp_path, in_process):
    trained = capsrobust("train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "2000",
                         home=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "test accuracy" in trained.stdout and "stored in" in trained.stdout
    entry = next((tmp_path / "models").iterdir())
    assert (entry / "card.json").is_file() and (entry / "model.weights.h5").is_file()

    code, listed, _ = in_process(tmp_path, "models")
    assert code == 0 and entry.name in listed and "capsnet-small" in listed

    code, tested, error = in_process(tmp_path, "test", "--model", "cnn-small", "--dataset", "mnist")
    assert code == 0, error
    accuracy = float(tested.split("│")[-4])  # the accuracy cell of the result row
    assert accuracy > 0.7

    code, _, error = in_process(tmp_path, "visualize", "--model", "cnn-small")
    assert code == 2 and "no reconstruction decoder" in error


# Two kinds, as a real process: an argument argparse refuses and a name the registry refuses.
# tests/faults/test_cli_arguments.py runs every other bad input in-process.
@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["train", "mnist", "--epochs", "0"], "expected a positive integer"),
    (["train", "mnist", "--subset", "--model", "resnet"], "unknown model 'resnet'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = capsrobust(*args, home=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not any((tmp_path / "models").glob("*"))


@pytest.mark.slow
def test_attack_and_detect_end_to_end(tmp_path, in_process):
    # What follows needs a stored model with a decoder and a detector, not a good one: 1,000 images train it.
    trained = capsrobust("train", "mnist", "--subset", "--model", "cnn-recon", "--epochs", "1", "--limit", "1000",
                         home=tmp_path)
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "out"
    # The rest in this process (the process above tested the exit code and what a real process leaves).
    code, attacked, error = in_process(tmp_path, "attack", "--model", "cnn-recon", "--method", "fgsm,bim", "--eps",
                                       "0.1,0.2", "--steps", "5", "--limit", "50", "--output", str(out))
    assert code == 0, error
    assert "trust checks" in attacked and "undetected" in attacked
    (result_dir,) = out.iterdir()
    assert result_dir.name.startswith("attack-cnn-recon-mnist-fgsm+bim-eps0.1,0.2-")
    written = {p.name for p in result_dir.iterdir()}
    assert {"sweep.json", "sweep.csv", "accuracy_vs_eps.png", "roc.png"} <= written
    assert "sweep.partial.json" not in written  # the finished results replaced the per-cell saves

    code, _, error = in_process(tmp_path, "visualize", "--model", "cnn-recon", "--images", "2", "--first", "7",
                                "--output", str(out))
    assert code == 0, error
    (grid_dir,) = out.glob("visualize-cnn-recon-mnist-*")
    assert sorted(p.name for p in grid_dir.iterdir()) == ["pose-grid-7.png", "pose-grid-8.png"]

    for args, message in ((["--method", "vote"], "vote does not apply: cnn-recon has no capsule votes"),
                          (["--method", "transfer", "--source", "resnet"], "no trained 'resnet' on mnist")):
        code, _, error = in_process(tmp_path, "attack", "--model", "cnn-recon", *args)
        assert code == 2
        assert message in error and error.count("\n") == 1 and "Traceback" not in error


def test_transfer_without_a_source_is_one_line_and_exit_2(tmp_path, in_process):
    code, _, error = in_process(tmp_path, "attack", "--method", "fgsm,transfer", "--eps", "0.1")
    assert code == 2
    assert "needs a source model to craft on: add --source MODEL" in error and error.count("\n") == 1


@pytest.mark.slow
def test_em_capsules_train_and_are_attacked_like_any_model(tmp_path, in_process):
    # In this process: the tests above train as a real process.
    code, _, error = in_process(tmp_path, "train", "mnist", "--subset", "--model", "em-capsnet-small", "--em-iterations",
                                "1", "--config", "reconstruction=true", "--config", "primary_types=4",
                                "--config", "conv_types=[8,8]", "--epochs", "1", "--limit", "192",
                                "--val-size", "64", "--batch-size", "32", "--quiet")
    assert code == 0, error
    (entry,) = (tmp_path / "models").iterdir()
    card = json.loads((entry / "card.json").read_text())
    assert card["config"]["em_iterations"] == 1 and card["config"]["reconstruction"] is True  # --config survives
    assert card["config"]["conv_types"] == [8, 8]
    assert card["detector"]["threshold"] > 0 and card["score_kind"] == "activations"
    code, detected, error = in_process(tmp_path, "detect", "--model", "em-capsnet-small", "--method", "fgsm",
                                       "--eps", "0.1", "--limit", "20", "--no-checks",
                                       "--output", str(tmp_path / "out"))
    assert code == 0, error
    assert "em-capsnet-small" in detected and "AUROC" in detected
