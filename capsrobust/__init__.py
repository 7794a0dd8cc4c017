"""capsrobust: adversarial robustness of capsule networks against CNNs.

data -> models -> trainer -> store -> ART bridge -> attacks / detection -> sweeps -> reports.
"""

import os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probes) buries the CLI's output; keep warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from capsrobust.art_config import write_default_art_config  # noqa: E402  (stdlib only; before anything imports ART)

write_default_art_config()

__version__ = "0.1.0"
