"""Per-image standardisation as a layer of the model, not a step of the data pipeline.

Hinton, Sabour & Frosst (2018) normalise each smallNORB image to zero mean and unit variance. Done to the data, that
would put the images on a per-image scale, while the attacks need pixels in [0, 1] and an L-inf eps on that scale. So
the data stay in [0, 1] and models that take `standardize=True` (the smallNORB default, `DatasetInfo.model_defaults`)
apply this layer first; attacks then differentiate through it like through any other layer.
"""

import math

import keras
from keras import ops


class PerImageStandardization(keras.layers.Layer):
    """Scales each image to zero mean and unit variance, like `tf.image.per_image_standardization`.

    Computes `(x - mean) / max(std, 1 / sqrt(num_pixels))` over each image's height, width and channels; the floor
    maps a constant image to zeros instead of dividing by zero.

    Input shape:
        `(batch_size, height, width, channels)`.

    Output shape:
        The same, in the layer's compute dtype.
    """

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        axes = tuple(range(1, len(x.shape)))
        centred = x - ops.mean(x, axis=axes, keepdims=True)
        variance = ops.mean(ops.square(centred), axis=axes, keepdims=True)
        # Flooring the variance, not the standard deviation, gives the same value but never takes sqrt's derivative at
        # 0, which is infinite (0 * inf is NaN where a backend does not special-case it); attacks take this gradient.
        floor = 1.0 / math.prod(x.shape[1:])
        return centred / ops.sqrt(ops.maximum(variance, floor))

    def compute_output_shape(self, input_shape):
        return input_shape
