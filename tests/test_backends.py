"""Every Keras backend: `capsrobust backends`, and models trained under JAX or torch that load under TensorFlow."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

from capsrobust import backend as backends_module
from capsrobust.backend import BACKENDS, BackendReport, is_installed, report_backends
from capsrobust.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSIONS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}  # the package whose version a row shows


def _installed_version(backend: str) -> str:
    if backend == "tensorflow":
        import tensorflow as tf  # the distribution may be tensorflow-cpu; the module's version is the one shown

        return tf.__version__
    return importlib.metadata.version(VERSIONS[backend])


@pytest.mark.slow
def test_backends_lists_every_installed_backend_and_marks_the_active_one():
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "capsrobust", "backends", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["active"] == "tensorflow"
    rows = {row["backend"]: row for row in answer["backends"]}
    assert list(rows) == list(BACKENDS)
    for backend, row in rows.items():
        assert row["installed"] == is_installed(backend)
        assert row["active"] == (backend == "tensorflow")
        if row["installed"]:
            assert row["error"] == ""
            assert row["version"] == _installed_version(backend) and row["keras"] == keras.__version__
            assert row["devices"] and all(isinstance(name, str) for name in row["devices"])
            assert row["gpu"] == any(("gpu" in d.lower() or "cuda" in d.lower()) for d in row["devices"])
    assert "cpu" in rows["tensorflow"]["devices"][-1].lower()


def test_backends_table(monkeypatch, capsys):
    reports = [BackendReport("tensorflow", True, active=True, version="2.99.0", keras="3.99.0",
                             devices=["/device:CPU:0", "/device:GPU:0"]),
               BackendReport("jax", True, version="0.9.9", keras="3.99.0", error="no answer within 60s"),
               BackendReport("torch", False)]
    monkeypatch.setattr(backends_module, "report_backends", lambda timeout: reports)
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = {name: next(line for line in lines if f"│ {name}" in line) for name in BACKENDS}
    assert "(active)" in row["tensorflow"] and "2.99.0" in row["tensorflow"] and "/device:GPU:0" in row["tensorflow"]
    assert row["tensorflow"].rstrip(" │").endswith("yes")
    assert "unusable" in row["jax"] and "no answer within 60s" in row["jax"] and "(active)" not in row["jax"]
    assert "not installed" in row["torch"]
    assert any("KERAS_BACKEND=jax capsrobust" in line for line in lines)


def test_a_backend_that_fails_to_start_shows_one_line(monkeypatch, tmp_path):
    broken = tmp_path / "torch"  # shadows the real torch in the probe, and makes it count as installed here
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('this torch is broken on purpose')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(backends_module, "BACKENDS", ("tensorflow", "torch"))
    active, torch = report_backends(timeout=120)
    assert active.active and active.devices and not active.error
    assert torch.installed and not torch.active and not torch.devices
    assert torch.error == "import failed: ImportError: this torch is broken on purpose"


def test_a_backend_that_does_not_answer_in_time(monkeypatch):
    monkeypatch.setattr(backends_module, "BACKENDS", ("tensorflow", "jax"))
    if not is_installed("jax"):
        pytest.skip("the jax backend is not installed")
    _, jax = report_backends(timeout=0.01)
    assert jax.error == "no answer within 0.01s" and not jax.devices


def test_a_ctrl_c_that_keras_swallowed_is_raised_again():
    from capsrobust.training.callbacks import InterruptRelay

    # A shell starts background jobs with SIGINT ignored (and the relay rightly leaves such a process alone); this
    # test is about a process that takes Ctrl-C, as an interactive `capsrobust train` does.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        relay = InterruptRelay()
        with relay.watching():
            # The handler Ctrl-C would run, called here rather than sent with os.kill: a real signal is handled at
            # whatever bytecode runs next, sometimes inside hypothesis's gc callback, where its KeyboardInterrupt
            # becomes an unraisable-exception warning in the log instead of reaching this try.
            try:  # what Keras's pythonify_logs does with a Ctrl-C that lands while JAX finishes a step
                signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
            except:  # noqa: E722
                pass
            with pytest.raises(KeyboardInterrupt):
                relay.on_train_batch_end(0)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


# In one subprocess per backend (each start costs a framework import and a trace): test_training's straight-vs-resumed
# pair of runs, then a CLI training whose stored weights this process loads.
TRAIN_RESUME_AND_PREDICT = """
import json
import sys
from pathlib import Path
import numpy as np
from capsrobust.cli import main
from capsrobust.data import load_dataset
from capsrobust.models.predict import predict_batched
from capsrobust.store import ModelStore
sys.path.insert(0, "tests")
from test_training import _straight_and_resumed

subset = load_dataset("mnist", subset=True)
straight, resumed = _straight_and_resumed("cnn-small", subset, Path({run_dir!r}))
difference = max(float(np.abs(a - b).max()) for a, b in zip(straight.model.get_weights(), resumed.model.get_weights()))
assert main(["train", "mnist", "--subset", "--model", "capsnet-small", "--epochs", "1", "--limit", "256",
             "--batch-size", "64", "--quiet"]) == 0
store = ModelStore()
(entry,) = store.entries()
outputs = predict_batched(store.load(entry), subset.x_test[:8])
print(json.dumps({{"id": entry.id, "outputs": {{key: value.tolist() for key, value in outputs.items()}},
                  "resume_difference": difference, "tensorflow_imported": "tensorflow" in sys.modules}}))
"""


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != keras.backend.backend()])
def test_under_another_backend_a_resume_is_exact_and_the_weights_load_here(backend, run_under_backend, tmp_path):
    """A resumed run equals an uninterrupted one under `backend` (this process's backend: test_training.py), and
    weights trained there give the same outputs here (TensorFlow in CI).

    cnn-small has dropout: under torch its masks come from Keras's seed generator, whose state the checkpoint keeps,
    not from torch's global generator, whose state it does not.
    """
    from capsrobust.data import load_dataset
    from capsrobust.models.predict import accuracy, predict_batched
    from capsrobust.store import ModelStore

    output = run_under_backend(backend, TRAIN_RESUME_AND_PREDICT.format(run_dir=str(tmp_path)))
    answer = json.loads(output.strip().splitlines()[-1])
    assert answer["resume_difference"] == 0.0
    assert not answer["tensorflow_imported"]  # seconds of start-up and a screen of log lines, for nothing
    store = ModelStore()
    entry = store.resolve(answer["id"])
    card = entry.card
    assert card["backend"] == backend and backend in card["versions"]
    assert card["devices"] and all(isinstance(name, str) for name in card["devices"])
    assert card["detector"] is not None and card["training"]["epochs_completed"] == 1

    model = store.load(entry)
    dataset = load_dataset("mnist", subset=True)
    here = predict_batched(model, dataset.x_test[:8])
    assert set(here) == set(answer["outputs"]) >= {"scores", "reconstruction"}
    for key, there in answer["outputs"].items():
        np.testing.assert_allclose(here[key], np.asarray(there, dtype="float32"), atol=1e-5, err_msg=key)
    # The card's accuracy was measured by the trained model in memory under `backend`: the same weights, here.
    assert accuracy(model, dataset.x_test, dataset.y_test) == pytest.approx(card["metrics"]["test_accuracy"],
                                                                            abs=2 / len(dataset.x_test))
