"""CNN baselines: Sabour et al.'s baseline, a small CNN, CNNs with the capsule models' reconstruction decoder, and CNNs
matched to Efficient-CapsNet's layers and size."""

import random

import keras
from keras import ops

from capsrobust.losses import softmax_cross_entropy
from capsrobust.models.base import CapsrobustModel
from capsrobust.models.registry import (EFFICIENT_CAPSNET_RECIPE, SMALL_MODELS_FASHION_RECIPE, SMALL_MODELS_RECIPE,
                                        register_model, register_variant)


class ClassPoseLogits(keras.layers.Layer):
    """One logit per class from that class's pose only: `logit_k = w_k . pose_k + b_k`.

    Gives a CNN the capsule models' structure (a pose per class, the decoder reads the predicted class's pose), as in
    the CNN+reconstruction baselines of Frosst et al. (2018) and Qin et al. (2020).

    Input shape:
        `(batch_size, num_classes, pose_dim)`.

    Output shape:
        `(batch_size, num_classes)`.
    """

    def build(self, input_shape):
        _, num_classes, pose_dim = input_shape
        self.kernel = self.add_weight(shape=(num_classes, pose_dim), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight(shape=(num_classes,), initializer="zeros", name="bias")

    def call(self, poses):
        return ops.sum(poses * self.kernel, axis=-1) + self.bias

    def compute_output_shape(self, input_shape):
        return input_shape[:2]


def _per_conv(value, count: int, name: str) -> list[int]:
    """`value` for each of `count` convolutions: an int for all of them, or a list with one entry each."""
    values = [value] * count if isinstance(value, int) else list(value)
    if len(values) != count:
        raise ValueError(f"{name} needs one entry per convolution ({count}). Received: {name}={value!r}")
    return values


class CNN(CapsrobustModel):
    """Conv ReLU stack -> dense ReLU stack -> dropout -> class logits, trained with softmax cross-entropy.

    Each convolution may be followed by batch norm (`batch_norm`) and max pooling (`pool`), and the stack by a ReLU
    depthwise convolution (`depthwise_kernel`), the layer that makes Efficient-CapsNet's primary capsules.

    With `reconstruction=True` the last hidden layer feeds `num_classes * pose_dim` features grouped into one pose per
    class; each class's logit reads only its own pose and the decoder reads the predicted class's pose, exactly as in
    CapsNet, so reconstruction-based detection compares like with like.
    """

    score_kind = "logits"

    def __init__(self, *, image_shape, num_classes, conv_channels, conv_kernel, conv_strides, padding, batch_norm, pool,
                 depthwise_kernel, dense_units, dropout, reconstruction, pose_dim, decoder_units, recon_weight,
                 **kwargs):
        super().__init__(image_shape, num_classes, decoder_units=decoder_units if reconstruction else None,
                         recon_weight=recon_weight, **kwargs)
        kernels = _per_conv(conv_kernel, len(conv_channels), "conv_kernel")
        strides = _per_conv(conv_strides, len(conv_channels), "conv_strides")
        self.convs = [keras.layers.Conv2D(c, k, strides=s, padding=padding, activation="relu", name=f"conv{i + 1}")
                      for i, (c, k, s) in enumerate(zip(conv_channels, kernels, strides))]
        # Empty without batch norm: the weights of the models trained before it existed keep their paths.
        self.norms = [keras.layers.BatchNormalization(name=f"norm{i + 1}")
                      for i in range(len(conv_channels))] if batch_norm else []
        self.pool = keras.layers.MaxPooling2D(2, name="pool") if pool else None
        self.depthwise = (keras.layers.DepthwiseConv2D(depthwise_kernel, activation="relu", name="depthwise")
                          if depthwise_kernel else None)
        self.flatten = keras.layers.Flatten(name="flatten")
        self.dense = [keras.layers.Dense(u, activation="relu", name=f"fc{i + 1}") for i, u in enumerate(dense_units)]
        # An explicit seed, drawn from Python's `random` as Keras draws a missing one: without it the torch backend
        # takes dropout masks from torch's global generator, whose state no checkpoint holds (a resume would differ).
        self.dropout = keras.layers.Dropout(dropout, seed=random.randint(1, 10**9), name="dropout") if dropout else None
        if reconstruction:
            self.pose_dim = int(pose_dim)
            self.poses = keras.layers.Dense(num_classes * self.pose_dim, name="poses")
            self.logits = ClassPoseLogits(name="logits")
        else:
            self.logits = keras.layers.Dense(num_classes, name="logits")

    def classify(self, images, training=None):
        x = images
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms:
                x = self.norms[i](x, training=training)
            if self.pool is not None:
                x = self.pool(x)
        if self.depthwise is not None:
            x = self.depthwise(x)
        x = self.flatten(x)
        for dense in self.dense:
            x = dense(x)
        if self.dropout is not None:
            x = self.dropout(x, training=training)
        if self.decoder is None:
            return self.logits(x), None
        poses = ops.reshape(self.poses(x), (-1, self.num_classes, self.pose_dim))
        return self.logits(poses), poses

    def classification_loss(self, labels, scores):
        return softmax_cross_entropy(labels, scores)


@register_model("cnn-baseline", family="cnn",
                description="Sabour et al.'s CNN baseline: conv 256-256-128 5x5, FC 328-192, dropout; 35.4M parameters")
def cnn(image_shape=(28, 28, 1), num_classes=10, conv_channels=(256, 256, 128), conv_kernel=5, conv_strides=1,
        padding="same", batch_norm=False, pool=False, depthwise_kernel=None, dense_units=(328, 192), dropout=0.5,
        reconstruction=False, pose_dim=16, decoder_units=(512, 1024), recon_weight=0.0005) -> CNN:
    """Builds a CNN; every argument is a configuration key. `conv_kernel` and `conv_strides` are one int for every
    convolution or a list with one entry each."""
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid'. Received: padding={padding!r}")
    return CNN(**{k: v for k, v in locals().items()}, name="cnn")


_SMALL = dict(conv_channels=(32, 64), pool=True, dense_units=(208,))

register_variant("cnn-small", base="cnn-baseline", recipe=SMALL_MODELS_RECIPE,
                 dataset_recipes={"fashion-mnist": SMALL_MODELS_FASHION_RECIPE},
                 description="small CNN (conv 32-64 5x5 with pooling, FC 208) with about capsnet-small's "
                             "parameter count without its decoder", **_SMALL)
register_variant("cnn-recon", base="cnn-small",  # and so its recipes
                 description="cnn-small with a pose per class and capsnet-small's reconstruction decoder "
                             "(for reconstruction-error detection)",
                 reconstruction=True, decoder_units=(256, 512))

# Efficient-CapsNet with its capsules replaced by dense layers: the same convolutions and batch norm, its primary
# capsules' depthwise convolution (with a ReLU instead of the squash), then a 160-unit layer where the class capsules
# (10 x 16) were. 163,434 trainable parameters against efficient-capsnet's 161,824, as the paper's CNN baseline (173K)
# is matched to it. The `-recon` variant feeds the 128 features straight to the 10 x 16 class poses, a dense layer
# the size of the class capsules' weights plus priors (20,640): 161,994 trainable parameters without the decoder.
_MATCHED = dict(conv_channels=(32, 64, 64, 128), conv_kernel=(5, 3, 3, 3), conv_strides=(1, 1, 1, 2),
                padding="valid", batch_norm=True, depthwise_kernel=9, dropout=0.0)

register_variant("cnn-matched", base="cnn-baseline", recipe=EFFICIENT_CAPSNET_RECIPE,
                 description="CNN matched to efficient-capsnet: its conv + batch norm stack and depthwise conv, "
                             "FC 160; 163,434 trainable parameters (efficient-capsnet: 161,824 without decoder)",
                 **_MATCHED, dense_units=(160,))
register_variant("cnn-matched-recon", base="cnn-baseline", recipe=EFFICIENT_CAPSNET_RECIPE,
                 description="cnn-matched with a pose per class (10 x 16) instead of its FC 160, and "
                             "efficient-capsnet's decoder; 161,994 trainable parameters without the decoder, "
                             "1,573,338 with",
                 **_MATCHED, dense_units=(), reconstruction=True)
