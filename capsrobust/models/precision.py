"""Mixed precision for the convolutions: they compute in bfloat16, everything else (weights, routing, squash, losses)
in float32.

Convolutions bound training on a CPU: 85% of the paper CapsNet's step is its primary capsules' 9x9 convolution
(`benchmarks/test_training_profile.py`), and on a CPU with AVX512_BF16 oneDNN runs it, forward and backward, about 1.8
times as fast in bfloat16. Routing stays in float32: its sums over hundreds of votes and EM's log-domain Gaussians are
written for float32, and they are not what bounds a step. The weights stay float32, so a checkpoint or store entry is
the same either way, and evaluation runs in float32 (an attack's gradients are not rounded to 8 bits).
"""

import keras

_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}  # `--conv-dtype` -> the convolutions' Keras policy
CONV_DTYPES = tuple(_POLICIES)


def compute_convolutions_in(model: keras.Layer, dtype: str) -> int:
    """Sets the compute dtype of every `Conv2D` in `model` (at any depth) to `dtype`, one of `CONV_DTYPES`;
    returns how many there are. Works on a built model: the variables stay float32 either way."""
    if dtype not in _POLICIES:
        raise ValueError(f"dtype must be one of {', '.join(CONV_DTYPES)}. Received: dtype={dtype!r}")
    # `_flatten_layers` is how Keras itself walks nested layers; there is no public recursive walk.
    convolutions = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
                    if isinstance(layer, keras.layers.Conv2D)]
    for layer in convolutions:
        layer.dtype_policy = _POLICIES[dtype]
    return len(convolutions)
