"""Every command with missing, unknown, out-of-range and malformed arguments, and output directories that are empty
strings, files or read-only: exit status 2, one error line naming what is wrong, no traceback."""

import pytest

import capsrobust.sweep
from capsrobust.models import create_model, model_config
from capsrobust.store import ModelStore

from conftest import assert_one_line_error

# (command line, what the error line says). Argparse rejects these before any model or data set is touched.
PARSE_ERRORS = {
    "no-command": ([], "the following arguments are required: COMMAND"),
    "unknown-command": (["fit"], "invalid choice: 'fit'"),
    "train-missing-dataset": (["train"], "the following arguments are required: dataset"),
    "train-unknown-option": (["train", "mnist", "--bogus"], "unrecognized arguments: --bogus"),
    "train-epochs-zero": (["train", "mnist", "--epochs", "0"], "argument --epochs: expected a positive integer"),
    "train-epochs-word": (["train", "mnist", "--epochs", "three"], "expected a positive integer, got 'three'"),
    "train-batch-size-negative": (["train", "mnist", "--batch-size", "-8"], "argument --batch-size"),
    "train-lr-nan": (["train", "mnist", "--lr", "nan"], "argument --lr: expected a positive number"),
    "train-lr-inf": (["train", "mnist", "--lr", "inf"], "argument --lr: expected a positive number"),
    "train-lr-malformed": (["train", "mnist", "--lr", "1e"], "expected a positive number, got '1e'"),
    "train-seed-negative": (["train", "mnist", "--seed", "-1"], "argument --seed: expected an integer >= 0"),
    "train-early-stopping-zero": (["train", "mnist", "--early-stopping", "0"], "argument --early-stopping"),
    "train-config-no-value": (["train", "mnist", "--config", "routings"], "expected KEY=VALUE, got 'routings'"),
    "train-old-recon-weight": (["train", "mnist", "--recon-weight", "0.1"], "use --recon-loss-weight (train"),
    "attack-old-recon-weight": (["attack", "--method", "rbim", "--recon-weight", "0.1"],
                                "or --detector-penalty (attack"),
    "train-adversarial-unknown": (["train", "mnist", "--adversarial", "free"],
                                  "argument --adversarial: invalid choice: 'free'"),
    "train-eps-zero": (["train", "mnist", "--adversarial", "pgd", "--eps", "0"],
                       "argument --eps: expected a number in (0, 1], got '0'"),
    "train-eps-above-1": (["train", "mnist", "--adversarial", "pgd", "--eps", "1.5"],
                          "argument --eps: expected a number in (0, 1], got '1.5'"),
    "train-eps-nan": (["train", "mnist", "--adversarial", "pgd", "--eps", "nan"], "argument --eps: expected a number"),
    "train-attack-steps-zero": (["train", "mnist", "--adversarial", "pgd", "--attack-steps", "0"],
                                "argument --attack-steps: expected a positive integer"),
    "train-beta-negative": (["train", "mnist", "--adversarial", "trades", "--beta", "-1"],
                            "argument --beta: expected a number >= 0"),
    "train-config-bad-key": (["train", "mnist", "--config", "1x=2"], "expected KEY=VALUE, got '1x=2'"),
    "train-data-dir-empty": (["train", "mnist", "--data-dir", ""], "argument --data-dir: expected a directory"),
    "train-store-empty": (["train", "mnist", "--store", ""], "argument --store: expected a directory"),
    "test-limit-zero": (["test", "--limit", "0"], "argument --limit: expected a positive integer"),
    "models-unknown-option": (["models", "--all"], "unrecognized arguments: --all"),
    "attack-eps-negative": (["attack", "--eps", "-0.1"], "eps must be a finite number >= 0"),
    "attack-eps-nan": (["attack", "--eps", "nan"], "eps must be a finite number >= 0"),
    "attack-l2-eps-negative": (["attack", "--norm", "2", "--eps", "-2"], "eps must be a finite number >= 0"),
    "attack-l2-eps-nan": (["attack", "--norm", "2", "--eps", "nan"], "eps must be a finite number >= 0"),
    "attack-eps-empty-item": (["attack", "--eps", "0.1,,0.2"], "expected numbers >= 0 separated by commas"),
    "attack-eps-word": (["attack", "--eps", "small"], "expected numbers >= 0 separated by commas"),
    "attack-restarts-zero": (["attack", "--restarts", "0"], "argument --restarts: expected a positive integer"),
    "attack-steps-zero": (["attack", "--steps", "0"], "argument --steps: expected a positive integer"),
    "attack-step-size-zero": (["attack", "--step-size", "0"], "argument --step-size: expected a positive number"),
    "attack-step-size-inf": (["attack", "--step-size", "inf"], "argument --step-size: expected a positive number"),
    "attack-norm-unknown": (["attack", "--norm", "1"], "argument --norm: invalid choice: '1'"),
    "attack-loss-unknown": (["attack", "--loss", "hinge"], "argument --loss: invalid choice: 'hinge'"),
    "attack-output-empty": (["attack", "--output", ""], "argument --output: expected a directory"),
    "attack-eps-missing-value": (["attack", "--eps"], "argument --eps: expected one argument"),
    "detect-limit-malformed": (["detect", "--limit", "10.5"], "argument --limit: expected a positive integer"),
    "compare-missing-dataset": (["compare"], "the following arguments are required: dataset"),
    "compare-models-empty": (["compare", "mnist", "--models", ","], "expected one or more names"),
    "demo-epochs-zero": (["demo", "--epochs", "0"], "argument --epochs: expected a positive integer"),
    "demo-output-empty": (["demo", "--output", " "], "argument --output: expected a directory"),
    "visualize-images-zero": (["visualize", "--images", "0"], "argument --images: expected a positive integer"),
    "visualize-first-negative": (["visualize", "--first", "-1"], "argument --first: expected an integer >= 0"),
}


@pytest.mark.parametrize("case", PARSE_ERRORS)
def test_malformed_arguments_are_refused_by_the_parser(case, cli):
    args, expected = PARSE_ERRORS[case]
    status, out, err = cli(*args)
    assert status == 2 and out == ""
    assert_one_line_error(err, "error:", expected)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with an untrained cnn-small and cnn-recon 'trained on' the bundled subset."""
    store = ModelStore(tmp_path_factory.mktemp("store"))
    for name in ("cnn-small", "cnn-recon"):
        spec = {"model": name, "config": model_config(name), "dataset": {"name": "mnist", "source": "subset"}}
        card = {"model": name, "family": "cnn", "config": spec["config"], "dataset": spec["dataset"]}
        store.publish(store.new_run(spec), create_model(name), card)
    return store


# (command line, what the error line says). These pass the parser and fail on what the values mean.
VALUE_ERRORS = {
    "train-unknown-dataset": (["train", "svhn", "--subset"], "unknown data set"),
    "train-unknown-model": (["train", "mnist", "--subset", "--model", "resnet"], "unknown model 'resnet'"),
    "train-option-the-model-lacks": (["train", "mnist", "--subset", "--model", "cnn-small", "--routings", "2"],
                                     "does not take routings"),
    "train-config-unknown-key": (["train", "mnist", "--subset", "--config", "depth=3"], "does not take depth"),
    "train-config-bad-value": (["train", "mnist", "--subset", "--model", "cnn-small", "--config", "dense_units=-5"],
                               "cannot build 'cnn-small'"),
    "train-eps-without-adversarial": (["train", "mnist", "--subset", "--eps", "0.3"],
                                      "only apply to adversarial training: add --adversarial"),
    "train-fgsm-rs-steps": (["train", "mnist", "--subset", "--adversarial", "fgsm-rs", "--attack-steps", "3"],
                            "fgsm-rs takes one step"),
    "train-beta-without-trades": (["train", "mnist", "--subset", "--adversarial", "pgd", "--beta", "6"],
                                  "beta is TRADES's weight; pgd takes none"),
    "train-lr-above-1": (["train", "mnist", "--subset", "--lr", "5"], "learning_rate=5.0"),
    "train-lr-decay-above-1": (["train", "mnist", "--subset", "--lr-decay", "1.5"], "lr_decay=1.5"),
    "train-shift-too-large": (["train", "mnist", "--subset", "--shift", "9"], "max_shift=9"),
    "train-val-size-too-large": (["train", "mnist", "--subset", "--val-size", "4000"], "val_size=4000"),
    "train-data-dir-missing": (["train", "mnist", "--data-dir", "/nonexistent/capsrobust"], "does not exist"),
    "train-resume-unknown-run": (["train", "mnist", "--resume", "no-such-run"], "no unfinished run 'no-such-run'"),
    "train-no-data-offline": (["train", "mnist"], "no MNIST files found"),
    "test-unknown-model": (["test", "--model", "capsnet"], "no trained 'capsnet'"),
    "attack-unknown-method": (["attack", "--model", "cnn-small", "--method", "deepfool"], "deepfool"),
    "attack-no-method": (["attack", "--model", "cnn-small", "--method", ","], "needs at least one attack"),
    "attack-linf-eps-above-1": (["attack", "--model", "cnn-small", "--eps", "1.5"], "an L-inf eps must be in [0, 1]"),
    "detect-model-without-decoder": (["detect", "--model", "cnn-small"], "no reconstruction decoder"),
    "compare-unknown-dataset": (["compare", "svhn"], "unknown data set"),
    "visualize-first-past-the-end": (["visualize", "--model", "cnn-recon", "--first", "1000"],
                                     "--first 1000 is past the 1000 test images"),
}


@pytest.mark.parametrize("case", VALUE_ERRORS)
def test_out_of_range_and_unknown_values_are_one_line(case, store, cli):
    args, expected = VALUE_ERRORS[case]
    status, _, err = cli(*args, "--store", store.root)
    assert status == 2
    assert_one_line_error(err, expected)
    assert sorted(p.name for p in store.runs_dir.iterdir()) == sorted(e.id for e in store.entries())  # no new run


def _file(tmp_path, read_only):
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file"


def _read_only(tmp_path, read_only):
    read_only(tmp_path / "read-only")
    return tmp_path / "read-only"


@pytest.mark.parametrize("output", [_file, _read_only], ids=["output-is-a-file", "output-read-only"])
@pytest.mark.parametrize("command", [
    ["attack", "--model", "cnn-small", "--method", "fgsm", "--limit", "4", "--no-checks"],
    ["visualize", "--model", "cnn-recon", "--images", "1"],
    ["demo", "--epochs", "1"],
], ids=["attack", "visualize", "demo"])
def test_unwritable_output_fails_before_any_work(command, output, store, tmp_path, read_only, cli, monkeypatch):
    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran before the output directory was checked")

    monkeypatch.setattr(capsrobust.sweep, "run_sweep", no_sweep)
    monkeypatch.setattr("capsrobust.cli.train.train_new", no_sweep)
    directory = output(tmp_path, read_only)
    status, _, err = cli(*command, "--output", directory, "--store", store.root)
    assert status == 2
    assert_one_line_error(err, "cannot write to", str(directory))
