"""Capsule pose manipulation (Sabour et al. 2017, Fig. 4): step one pose dimension at a time, decode each result."""

import numpy as np
from keras import ops

from capsrobust.errors import ConfigError

# The paper's intervals of 0.05 in [-0.25, 0.25].
OFFSETS = tuple(round(float(x), 2) for x in np.linspace(-0.25, 0.25, 11))


def pose_perturbations(model, images: np.ndarray, offsets=OFFSETS) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructions of each image's predicted-class pose with one dimension shifted by each offset.

    Args:
        model: a `CapsrobustModel` with a decoder and class poses.
        images: `(num_images, height, width, channels)` in [0, 1].
        offsets: the values added to one pose dimension at a time.

    Returns:
        `(reconstructions, predictions)`: `(num_images, pose_dim, len(offsets), height, width, channels)` and the
        predicted class `(num_images,)` whose pose was decoded.
    """
    if not model.has_decoder:
        raise ConfigError(f"{model.registry_name} has no reconstruction decoder, so there is nothing to decode poses "
                          f"with")
    outputs = model(images, training=False)
    poses = ops.convert_to_numpy(outputs["poses"])  # (n, classes, dim)
    predictions = ops.convert_to_numpy(ops.argmax(outputs["scores"], axis=-1))
    n, num_classes, dim = poses.shape
    offsets = np.asarray(offsets, dtype=poses.dtype)
    chosen = poses[np.arange(n), predictions]  # (n, dim)
    shifts = np.eye(dim, dtype=poses.dtype)[:, None, :] * offsets[None, :, None]  # (dim, steps, dim)
    perturbed = chosen[:, None, None, :] + shifts[None]  # (n, dim, steps, dim)
    # The decoder reads all class poses with every class but the decoded one masked to zero.
    masked = np.zeros((n, dim, len(offsets), num_classes, dim), dtype=poses.dtype)
    masked[np.arange(n), :, :, predictions] = perturbed
    decoded = model.decoder(masked.reshape(-1, num_classes * dim), training=False)
    return ops.convert_to_numpy(decoded).reshape(n, dim, len(offsets), *model.image_shape), predictions
