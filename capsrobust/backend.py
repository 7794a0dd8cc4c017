"""Starting the Keras backend without TensorFlow's C++ start-up log lines on the terminal."""

import os
import re
import sys
import tempfile
from typing import Callable

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
