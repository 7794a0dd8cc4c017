"""Primary capsules: a convolution whose channels are grouped into capsule vectors and squashed."""

import keras
from keras import ops

from capsrobust.ops import squash


class PrimaryCapsules(keras.layers.Layer):
    """Convolutional primary capsules (Sabour et al. 2017, section 4).

    A `Conv2D` with `capsule_types * capsule_dim` channels; every position of every capsule type is one capsule, so a
    6x6 grid of 32 types gives 1,152 capsules. Consecutive groups of `capsule_dim` channels form one capsule.

    Args:
        capsule_types: number of capsule types (channel groups), e.g. 32.
        capsule_dim: components per capsule, e.g. 8.
        kernel_size: convolution kernel size, e.g. 9.
        strides: convolution stride, e.g. 2.

    Input shape:
        `(batch_size, height, width, channels)`.

    Output shape:
        `(batch_size, out_height * out_width * capsule_types, capsule_dim)`, lengths in [0, 1).

    >>> PrimaryCapsules(32, 8, 9, 2)(keras.ops.ones((2, 20, 20, 256))).shape
    (2, 1152, 8)
    """

    def __init__(self, capsule_types: int, capsule_dim: int, kernel_size: int = 9, strides: int = 2, **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("capsule_types", capsule_types), ("capsule_dim", capsule_dim),
                           ("kernel_size", kernel_size), ("strides", strides)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PrimaryCapsules expected a positive integer. Received: {arg}={value!r}")
        self.capsule_types = capsule_types
        self.capsule_dim = capsule_dim
        self.kernel_size = kernel_size
        self.strides = strides
        self.conv = keras.layers.Conv2D(capsule_types * capsule_dim, kernel_size, strides=strides, name="conv")

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs):
        features = ops.cast(self.conv(inputs), self.compute_dtype)  # the convolution may compute in bfloat16
        height, width = features.shape[1], features.shape[2]
        capsules = ops.reshape(features, (-1, height * width * self.capsule_types, self.capsule_dim))
        return squash(capsules)

    def compute_output_shape(self, input_shape):
        height, width, _ = self.conv.compute_output_shape(input_shape)[1:]
        return (input_shape[0], height * width * self.capsule_types, self.capsule_dim)

    def get_config(self):
        config = {"capsule_types": self.capsule_types, "capsule_dim": self.capsule_dim,
                  "kernel_size": self.kernel_size, "strides": self.strides}
        return {**super().get_config(), **config}
