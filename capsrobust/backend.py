"""The Keras backends: which are installed, the devices the running one sees, and starting it quietly.

Keras fixes its backend when it is first imported (`KERAS_BACKEND`, else `~/.keras/keras.json`), so one process runs
one backend; questions about another backend are asked of a subprocess started with `KERAS_BACKEND` set.
"""

import importlib.util
import os
import re
import sys
import tempfile
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

# Lines TensorFlow's C++ runtime prints at import and device start-up whatever TF_CPP_MIN_LOG_LEVEL says
# (oneDNN notices, CUDA probes on machines without a GPU, absl's pre-initialisation warning).
_NOISE = re.compile(r"^(I0000|W0000|E0000 .*(cuInit|cuda)|WARNING: All log messages before absl)")


def start_backend_quietly(before_devices: Callable[[], None] | None = None) -> None:
    """Imports Keras and initialises the backend's devices, dropping the known start-up noise from stderr.

    Anything else written to stderr meanwhile (a real error) is passed through.

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
