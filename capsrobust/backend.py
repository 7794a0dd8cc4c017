"""The Keras backends: which are installed, the devices the running one sees, and starting it quietly.

Keras fixes its backend when it is first imported (`KERAS_BACKEND`, else `~/.keras/keras.json`), so one process runs
one backend; questions about another backend are asked of a subprocess started with `KERAS_BACKEND` set.
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

BACKENDS = ("tensorflow", "jax", "torch")  # the Keras 3 backends capsrobust runs on, its default first


def is_installed(backend: str) -> bool:
    """Whether `backend`'s framework (the `tensorflow`, `jax` or `torch` package) can be imported here."""
    return importlib.util.find_spec(backend) is not None


def installed_backends() -> list[str]:
    """The backends of `BACKENDS` whose framework is installed, in that order."""
    return [backend for backend in BACKENDS if is_installed(backend)]


def backend_environment(backend: str, **extra: str) -> dict[str, str]:
    """This process's environment with `KERAS_BACKEND=backend`, for a subprocess that must run that backend."""
    return {**os.environ, "KERAS_BACKEND": backend, **extra}


def devices() -> list[str]:
    """The devices the running Keras backend computes on, by its own names (e.g. `/device:GPU:0`, `cuda:0`)."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices()]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
        return ["cpu"]
    return []


def has_gpu(device_names: list[str]) -> bool:
    """Whether any of `devices()`'s names is a GPU (`/device:GPU:0` under TensorFlow, `cuda:0` under JAX and torch)."""
    return any(re.search(r"gpu|cuda|rocm", name, re.IGNORECASE) for name in device_names)


@dataclass
class BackendReport:
    """What one backend says about itself: its framework's and Keras's versions and the devices it computes on.

    Attributes:
        backend: one of `BACKENDS`.
        installed: whether its framework can be imported here.
        active: whether it is the backend this process runs.
        version, keras: the framework's and Keras's versions ("" when unknown).
        devices: `devices()` as that backend answers it.
        error: why it could not be asked, in one line ("" when it answered).
    """

    backend: str
    installed: bool
    active: bool = False
    version: str = ""
    keras: str = ""
    devices: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def gpu(self) -> bool:
        return has_gpu(self.devices)


# Run with KERAS_BACKEND set; prints one JSON line. Start-up noise goes to stderr, which is read only on failure.
_PROBE = """
import importlib, json, keras
from capsrobust.backend import devices
backend = keras.backend.backend()
print(json.dumps({"backend": backend, "version": importlib.import_module(backend).__version__,
                  "keras": keras.__version__, "devices": devices()}))
"""


def report_backends(timeout: float = 60.0) -> list[BackendReport]:
    """Asks every backend of `BACKENDS` for its versions and devices, one subprocess per backend, all at once.

    The running backend answers in this process. A backend whose subprocess fails, answers nonsense or takes longer
    than `timeout` seconds gets the reason in `error`.

    Returns:
        One report per backend, in `BACKENDS` order.
    """
    import keras

    active = keras.backend.backend()
    root = str(Path(__file__).resolve().parents[1])  # the subprocess imports this copy of capsrobust
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    reports, probes = [], {}
    for backend in BACKENDS:
        report = BackendReport(backend, is_installed(backend), active=backend == active)
        reports.append(report)
        if report.active:
            report.version = importlib.import_module(backend).__version__
            report.keras, report.devices = keras.__version__, devices()
        elif report.installed:
            probes[backend] = subprocess.Popen([sys.executable, "-c", _PROBE], stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                               env=backend_environment(backend, PYTHONPATH=python_path))
    deadline = time.monotonic() + timeout
    for report in reports:
        if report.backend in probes:
            _read_probe(report, probes[report.backend], max(deadline - time.monotonic(), 0.0), timeout)
    return reports


def _read_probe(report: BackendReport, probe: subprocess.Popen, wait: float, timeout: float) -> None:
    try:
        stdout, stderr = probe.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        report.error = f"no answer within {timeout:g}s"
        return
    if probe.returncode != 0:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {probe.returncode}"  # a traceback's last line names the error
        report.error = f"import failed: {reason[:200]}"
        return
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
        report.version, report.keras, report.devices = answer["version"], answer["keras"], list(answer["devices"])
    except (IndexError, ValueError, KeyError, TypeError):
        report.error = f"unreadable answer: {stdout.strip()[-200:]!r}"


# Lines TensorFlow's C++ runtime prints at import and device start-up whatever TF_CPP_MIN_LOG_LEVEL says
# (oneDNN notices, CUDA probes on machines without a GPU, absl's pre-initialisation warning).
_NOISE = re.compile(r"^(I0000|W0000|E0000 .*(cuInit|cuda)|WARNING: All log messages before absl)")


# ART warns when it is imported without PyTorch that its PyTorch-only certification (DeepZ, interval bound
# propagation) is unavailable; capsrobust uses neither.
_ART_WITHOUT_TORCH = r"PyTorch not found\. Not importing DeepZ or Interval Bound Propagation"


def silence_known_noise() -> None:
    """Silences, for the rest of this process, the messages a command-line run prints that mean nothing to its user.

    - TensorFlow's C++ runtime logs an ERROR-level line when Keras first builds its tf.data input pipeline
      (`E0000 ... NodeDef mentions attribute use_unbounded_threadpool which is not in the op definition`), harmless
      and unavoidable from outside TensorFlow. Its C++ log is lowered to FATAL (`TF_CPP_MIN_LOG_LEVEL=3`): a failing
      TensorFlow operation still reaches the user as a Python exception carrying its message, and a crash still
      prints its FATAL line. TensorFlow reads the level when it is imported, so this acts only before that. A user
      who sets 0 or 1 (INFO or WARNING and up) keeps that; 2 is what importing capsrobust sets when it is unset.
    - ART's warning that its PyTorch-only parts are unavailable (see `_ART_WITHOUT_TORCH`), matched by message and
      by module so that no other warning goes with it.
    """
    if "tensorflow" not in sys.modules and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") == "2":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    warnings.filterwarnings("ignore", message=_ART_WITHOUT_TORCH, category=UserWarning, module=r"art(\.|$)")


def start_backend_quietly(before_devices: Callable[[], None] | None = None) -> None:
    """Imports Keras and initialises the backend's devices, dropping the known start-up noise from stderr.

    Anything else written to stderr meanwhile (a real error) is passed through. Call `silence_known_noise` first for
    the messages that come later (when a command first trains, or imports ART).

    Args:
        before_devices: run after Keras is imported and before the devices are initialised (to split a CPU into
            logical devices, which TensorFlow allows only until then).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            if before_devices is not None:
                before_devices()
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                tf.config.list_logical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode(errors="replace")
    kept = [line for line in text.splitlines() if line.strip() and not _NOISE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
