"""Heads shared by capsule models and CNNs with a reconstruction decoder: lengths, masking, the decoder."""

import math

import keras
from keras import ops

from capsrobust.ops import safe_norm


def capsule_lengths(poses):
    """Class scores of a capsule layer: the length of each capsule.

    Args:
        poses: `(batch_size, num_capsules, capsule_dim)`.

    Returns:
        `(batch_size, num_capsules)` lengths in [0, 1) for squashed capsules.
    """
    return safe_norm(poses, axis=-1)


def mask_poses(poses, mask):
    """Keeps one class's pose and zeroes the rest, flattened for the decoder.

    Args:
        poses: `(batch_size, num_classes, pose_dim)`.
        mask: `(batch_size, num_classes)` one-hot rows: the true label in training, the prediction at test time.

    Returns:
        `(batch_size, num_classes * pose_dim)`.
    """
    masked = poses * ops.expand_dims(ops.cast(mask, poses.dtype), -1)
    return ops.reshape(masked, (-1, poses.shape[1] * poses.shape[2]))


class ReconstructionDecoder(keras.layers.Layer):
    """The reconstruction network of Sabour et al. (2017), Fig. 2: FC 512 ReLU, FC 1024 ReLU, FC sigmoid.

    Args:
        image_shape: `(height, width, channels)` of the images it reconstructs.
        hidden_units: widths of the hidden ReLU layers; the paper uses (512, 1024).

    Input shape:
        `(batch_size, num_classes * pose_dim)`, the masked poses.

    Output shape:
        `(batch_size, height, width, channels)` with values in (0, 1).
    """

    def __init__(self, image_shape, hidden_units=(512, 1024), **kwargs):
        super().__init__(**kwargs)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.hidden_units = tuple(int(u) for u in hidden_units)
        self.hidden = [keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}")
                       for i, units in enumerate(self.hidden_units)]
        self.output_layer = keras.layers.Dense(math.prod(self.image_shape), activation="sigmoid",
                                               name=f"fc{len(self.hidden_units) + 1}")

    def build(self, input_shape):
        shape = input_shape
        for layer in [*self.hidden, self.output_layer]:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def call(self, inputs):
        x = inputs
        for layer in self.hidden:
            x = layer(x)
        return ops.reshape(self.output_layer(x), (-1, *self.image_shape))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.image_shape)

    def get_config(self):
        return {**super().get_config(), "image_shape": self.image_shape, "hidden_units": self.hidden_units}
