"""Data-parallel training on two logical CPU devices trains like one device on the same data and seed.

TensorFlow fixes its logical devices when it first lists them, so each check runs in a fresh process.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from capsrobust.errors import ConfigError
from capsrobust.training.distribute import resolve_strategy

_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from capsrobust.data import load_dataset
    from capsrobust.models import create_model, model_config
    from capsrobust.training import TrainSettings, fit, seed_everything
    from capsrobust.training.distribute import scope

    data = load_dataset("mnist", subset=True, limit=256, val_size=64)
    images, labels = data.x_train[:64], np.eye(10, dtype="float32")[data.y_train[:64]]

    def one_sgd_step(strategy, devices):
        # Plain SGD: an update is the gradient itself, so a mis-scaled loss (Adam would hide it) shows at once.
        seed_everything(0)
        with scope(strategy, devices) as replicas:
            model = create_model("capsnet-small")
            model.compile(optimizer=keras.optimizers.SGD(0.1))
            before = [w.numpy().copy() for w in model.trainable_weights]
            batches = tf.data.Dataset.from_tensor_slices(({"image": images, "label": labels}, labels)).batch(64)
            loss = model.fit(batches, epochs=1, verbose=0).history["loss"][0]
            steps = [w.numpy() - b for w, b in zip(model.trainable_weights, before)]
        return replicas, loss, steps

    one, loss_one, steps_one = one_sgd_step("none", None)
    two, loss_two, steps_two = one_sgd_step("mirrored", 2)
    update_error = max(float(np.abs(a - b).max() / (np.abs(a).max() + 1e-12)) for a, b in zip(steps_one, steps_two))

    histories = {}
    for strategy, devices in (("none", None), ("mirrored", 2)):
        settings = TrainSettings(epochs=2, batch_size=64, strategy=strategy, devices=devices)
        result = fit("capsnet-small", model_config("capsnet-small"), data, settings, sys.argv[1] + "/" + strategy)
        histories[strategy] = {"replicas": result.replicas, "history": result.state.history}
    print(json.dumps({"replicas": [one, two], "sgd_loss": [loss_one, loss_two], "update_error": update_error,
                      "histories": histories}))
""")


@pytest.fixture(scope="module")
def two_device_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distribute")
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(out)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CAPSROBUST_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_mirrored_strategy_splits_each_batch_across_two_devices(two_device_run):
    assert two_device_run["replicas"] == [1, 2]
    assert two_device_run["histories"]["mirrored"]["replicas"] == 2


def test_one_step_on_two_devices_equals_one_step_on_one(two_device_run):
    one, two = two_device_run["sgd_loss"]
    assert two == pytest.approx(one, rel=1e-6)
    # Float rounding of the all-reduce only: a loss counted once per replica would make this 1.0 (a 2x update).
    assert two_device_run["update_error"] < 1e-2


def test_training_on_two_devices_follows_one_device(two_device_run):
    one, two = (two_device_run["histories"][k]["history"] for k in ("none", "mirrored"))
    assert len(one) == len(two) == 2
    # Adam's first steps move every weight by about the learning rate whatever its gradient's size, so the
    # all-reduce's rounding (the first step's loss agrees to 1e-6, above) flips a few tiny gradients' signs and the
    # runs drift apart slowly: 5e-4 in the first epoch's mean loss, about 1% after 8 steps.
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=5e-3)
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=5e-2)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=5e-2)


@pytest.mark.parametrize("strategy, devices, expected", [
    ("auto", None, "none"), ("auto", 1, "none"), ("auto", 2, "mirrored"), ("mirrored", None, "mirrored"),
    ("multi-worker", None, "multi-worker"), ("none", 1, "none")])
def test_strategy_resolution(strategy, devices, expected):
    if strategy == "multi-worker" and keras.backend.backend() == "tensorflow":
        pytest.skip("refused under TensorFlow: test_multi_worker_under_tensorflow_is_refused_in_one_line")
    assert resolve_strategy(strategy, devices) == expected


@pytest.mark.parametrize("strategy, devices", [("ring", None), ("none", 2), ("mirrored", 0)])
def test_bad_strategies_are_config_errors(strategy, devices):
    with pytest.raises(ConfigError):
        resolve_strategy(strategy, devices)


def test_jax_data_parallel_training_takes_batches_that_do_not_split_evenly(run_under_backend, tmp_path):
    """301 training and 333 validation images at batch 128 leave last batches of 45 and 77; JAX shards evenly."""
    script = f"""
    import json
    from capsrobust.cli import main
    from capsrobust.store import ModelStore

    status = main(["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "301",
                   "--devices", "2", "--store", {str(tmp_path)!r}])
    card = ModelStore({str(tmp_path)!r}).entries()[0].card
    print(json.dumps({{"status": status, "devices": card["devices"], "replicas": card["training"]["replicas"]}}))
    """
    answer = json.loads(run_under_backend("jax", script).strip().splitlines()[-1])
    assert answer == {"status": 0, "devices": ["cpu:0", "cpu:1"], "replicas": 2}


def test_batches_for_replicas_hold_a_multiple_of_them():
    import numpy as np

    from capsrobust.training.augment import ShiftedBatches

    images, labels = np.zeros((301, 28, 28, 1), "float32"), np.zeros(301, int)
    sizes = [len(batch[1]) for batch in ShiftedBatches(images, labels, 10, 128, 2, seed=0, multiple_of=2)]
    assert sizes == [128, 128, 44]
    odd = ShiftedBatches(images[:257], labels[:257], 10, 128, 2, seed=0, multiple_of=2)
    assert [len(odd[i][1]) for i in range(len(odd))] == [128, 128]  # a last batch of one image is dropped whole
    assert [len(b[1]) for b in ShiftedBatches(images, labels, 10, 128, 2, seed=0)] == [128, 128, 45]


def test_multi_worker_under_tensorflow_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from capsrobust.cli import main

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the refusal is TensorFlow's")
    monkeypatch.setenv("CAPSROBUST_HOME", str(tmp_path))
    assert main(["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64",
                 "--strategy", "multi-worker", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "tensorflow/tensorflow#72388" in error and "--strategy mirrored" in error
    assert not list(tmp_path.rglob("*")), "a refused run left files"


def test_processes_each_take_their_share_of_the_batch_one_process_would_take():
    import numpy as np

    from capsrobust.training.augment import ShiftedBatches, share_of_batches

    images = np.random.default_rng(0).uniform(size=(300, 28, 28, 1)).astype("float32")
    labels = np.arange(300) % 10

    def batches(share):
        return ShiftedBatches(images, labels, 10, 64, 2, seed=3, multiple_of=2, eps_at=lambda e, b: 0.1 * (b + 1),
                              share=share)
    whole, first, second = batches((0, 1)), batches((0, 2)), batches((1, 2))
    assert len(whole) == len(first) == len(second) == 5
    for index in range(len(whole)):
        (inputs, target), parts = whole[index], (first[index], second[index])
        for key in ("image", "label", "eps", "start"):
            np.testing.assert_array_equal(np.concatenate([part[0][key] for part in parts]), inputs[key])
        np.testing.assert_array_equal(np.concatenate([part[1] for part in parts]), target)
    with pytest.raises(ValueError, match="split evenly"):
        ShiftedBatches(images, labels, 10, 64, 2, seed=3, multiple_of=1, share=(0, 2))

    rows = np.arange(10)  # batches of 4: [0-3], [4-7], [8, 9]
    assert share_of_batches(rows, 4, 0, 2).tolist() == [0, 1, 4, 5, 8]
    assert share_of_batches(rows, 4, 1, 2).tolist() == [2, 3, 6, 7, 9]


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_under_jax(tmp_path):
    """`--strategy multi-worker` with two JAX processes on this machine, joined over localhost, against one process
    with `--strategy none` on the same data and seed: the same losses and validation metrics each epoch, and only
    process 0 publishes."""
    from capsrobust.backend import backend_environment, is_installed

    if not is_installed("jax"):
        pytest.skip("the jax backend is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train = [sys.executable, "-m", "capsrobust", "train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "2",
             "--limit", "256", "--val-size", "128", "--batch-size", "64", "--quiet"]
    cluster = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{_free_port()}", "KERAS_DISTRIBUTION_NUM_PROCESSES": "2"}

    def start(home, strategy, **extra):
        environment = backend_environment("jax", PYTHONPATH=root, CAPSROBUST_HOME=str(tmp_path / home), **extra)
        return subprocess.Popen([*train, "--strategy", strategy], cwd=root, env=environment, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    runs = {home: start(home, "multi-worker", **cluster, KERAS_DISTRIBUTION_PROCESS_ID=str(index))
            for index, home in enumerate(["process-0", "process-1"])}
    runs["one"] = start("one", "none")
    for home, run in runs.items():
        _, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, f"{home} failed:\n{stderr[-3000:]}"

    logs = {home: (tmp_path / home / "runs").glob("*/log.csv") for home in runs}
    rows = {home: [line.split(",") for line in next(iter(found)).read_text().splitlines()[1:]]
            for home, found in logs.items()}
    for home in ("process-0", "process-1"):
        assert len(rows[home]) == len(rows["one"]) == 2
        for theirs, ours in zip(rows["one"], rows[home]):  # epoch, accuracy, loss, val_accuracy, val_loss
            assert [float(v) for v in ours] == pytest.approx([float(v) for v in theirs], rel=1e-5)
    published = {home: list((tmp_path / home / "models").glob("*/card.json")) for home in runs}
    assert len(published["process-0"]) == len(published["one"]) == 1 and not published["process-1"]
    card = json.loads(published["process-0"][0].read_text())
    assert card["training"]["replicas"] == 2
    assert card["metrics"]["test_accuracy"] == pytest.approx(
        json.loads(published["one"][0].read_text())["metrics"]["test_accuracy"], abs=1e-3)


def test_multi_worker_refusals_under_jax(run_under_backend, tmp_path):
    """Adversarial training over processes, and processes that cannot join (no coordinator given): one line each,
    exit 2, nothing written."""
    script = f"""
    import os
    from capsrobust.cli import main
    from capsrobust.errors import ConfigError
    from capsrobust.training import TrainSettings

    try:
        TrainSettings(adversarial="pgd", strategy="multi-worker")
    except ConfigError as error:
        print(error)
    for name in ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES", "KERAS_DISTRIBUTION_PROCESS_ID"):
        os.environ.pop(name, None)
    print("exit", main(["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64",
                        "--strategy", "multi-worker", "--quiet", "--store", {str(tmp_path)!r}]))
    """
    out = run_under_backend("jax", script)
    assert "--adversarial does not run with --strategy multi-worker" in out
    assert "exit 2" in out
    assert not list(tmp_path.rglob("*")), "a refused run left files"
