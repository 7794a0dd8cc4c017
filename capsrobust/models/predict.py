"""Batched inference: whole test sets never go through the model in one call."""

import numpy as np
from keras import ops

from capsrobust.models.base import SCORES


def predict_batched(model, images: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Runs `model` over `images` in batches.

    Args:
        model: a `CapsrobustModel`.
        images: `(num_images, height, width, channels)` float32 in [0, 1].
        batch_size: images per forward pass.

    Returns:
        The model's outputs (`"scores"`, and `"poses"` / `"reconstruction"` where it has them) as numpy arrays with
        `num_images` rows.
    """
    chunks: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        outputs = model(images[start:start + batch_size], training=False)
        for key, value in outputs.items():
            chunks.setdefault(key, []).append(ops.convert_to_numpy(value))  # a torch tensor still tracks gradients
    return {key: np.concatenate(values) for key, values in chunks.items()}


def accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Fraction of `images` whose arg-max score equals `labels` (`(num_images,)` integers)."""
    if len(images) == 0:
        return float("nan")
    predictions = predict_batched(model, images, batch_size)[SCORES].argmax(axis=-1)
    return float(np.mean(predictions == labels))
