"""A command-line run prints capsrobust's own output and real errors, not its libraries' start-up chatter."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from capsrobust.backend import silence_known_noise

ROOT = Path(__file__).resolve().parents[1]

# What a user saw on stderr before: TensorFlow's C++ log line when Keras first builds its tf.data pipeline, and ART's
# import-time warning on machines without PyTorch.
NOISE = ("E0000", "use_unbounded_threadpool", "PyTorch not found", "DeepZ")

# Runs two commands in one process as if PyTorch were not installed, so that ART warns as it does on such a machine.
_WITHOUT_TORCH = """
import importlib.util, sys
find_spec = importlib.util.find_spec
def without_torch(name, package=None):
    return None if name.partition(".")[0] == "torch" else find_spec(name, package)
importlib.util.find_spec = without_torch
from capsrobust.cli import main
store = sys.argv[1]
# The default validation split (333 images): TensorFlow logs its line only for a validation set that big.
assert main(["train", "mnist", "--subset", "--model", "cnn-small", "--epochs", "1", "--limit", "64",
             "--batch-size", "16", "--store", store]) == 0
assert main(["attack", "--model", "cnn-small", "--method", "fgsm", "--limit", "8", "--no-checks", "--store", store,
             "--output", store + "/out"]) == 0
assert "art" in sys.modules
print("both ran")
"""


@pytest.mark.slow
def test_train_and_attack_print_no_library_noise_on_stderr(tmp_path):
    env = {**os.environ, "CAPSROBUST_HOME": str(tmp_path), "CAPSROBUST_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "store")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "both ran" in done.stdout, done.stderr[-3000:]
    assert "training cnn-small on mnist" in done.stderr  # capsrobust's own progress still reaches stderr
    noisy = [line for line in done.stderr.splitlines() if any(part in line for part in NOISE)]
    assert not noisy, "\n".join(noisy)


def test_only_arts_missing_torch_warning_is_silenced():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        art_message = "PyTorch not found. Not importing DeepZ or Interval Bound Propagation functionality"
        warnings.warn_explicit(art_message, UserWarning, "certification/__init__.py", 30,
                               module="art.estimators.certification")
        warnings.warn_explicit(art_message, UserWarning, "elsewhere.py", 1, module="someone_else")
        warnings.warn_explicit("a real problem", UserWarning, "certification/__init__.py", 31,
                               module="art.estimators.certification")
    assert [(str(w.message), w.filename) for w in caught] == [(art_message, "elsewhere.py"),
                                                              ("a real problem", "certification/__init__.py")]


@pytest.mark.parametrize("before, after", [(None, "3"), ("2", "3"), ("1", "1"), ("0", "0"), ("3", "3")])
def test_tensorflow_log_level_is_raised_unless_the_user_asked_for_more(before, after, monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)  # TensorFlow reads the level when imported
    if before is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", before)
    with warnings.catch_warnings():
        silence_known_noise()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == after


def test_tensorflow_log_level_is_left_alone_once_tensorflow_is_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", sys.modules.get("tensorflow") or object())
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings():
        silence_known_noise()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
