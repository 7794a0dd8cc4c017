"""Efficient-CapsNet: capsules with self-attention routing (Mazzia, Salvetti & Chiaberge 2021)."""

import math

import keras
from keras import ops

from capsrobust.layers import SelfAttentionCapsules, capsule_lengths
from capsrobust.losses import margin_loss
from capsrobust.models.base import CapsrobustModel
from capsrobust.models.registry import EFFICIENT_CAPSNET_RECIPE, register_model
from capsrobust.ops import exponential_squash


class EfficientCapsNet(CapsrobustModel):
    """Conv + batch norm stack -> depthwise primary capsules -> class capsules by self-attention routing.

    Paper configuration on MNIST: Conv 32@5x5, 64@3x3, 64@3x3, 128@3x3 stride 2 (valid padding, ReLU, each followed by
    batch norm as in the authors' code: 28 -> 24 -> 22 -> 20 -> 9), a 9x9 depthwise convolution over the 9x9x128 map
    whose 128 outputs are 16 primary capsules of 8 D (`exponential_squash`), 10x16D class capsules with
    self-attention routing, margin loss, decoder FC 512-1024-784. Scores are capsule lengths.

    161,824 trainable parameters without the decoder, as the paper counts them (batch norm's scales and offsets
    included, its 576 moving statistics not); the decoder adds 1,411,344.
    """

    score_kind = "lengths"
    supports_votes = True

    def __init__(self, *, image_shape, num_classes, conv_channels, conv_kernels, conv_strides, primary_kernel,
                 primary_dim, capsule_dim, reconstruction, decoder_units, recon_weight, m_plus, m_minus, down_weight,
                 **kwargs):
        super().__init__(image_shape, num_classes, decoder_units=decoder_units if reconstruction else None,
                         recon_weight=recon_weight, **kwargs)
        if not len(conv_channels) == len(conv_kernels) == len(conv_strides):
            raise ValueError(f"conv_channels, conv_kernels and conv_strides need one entry per convolution. Received: "
                             f"conv_channels={conv_channels}, conv_kernels={conv_kernels}, conv_strides={conv_strides}")
        if conv_channels[-1] % primary_dim:
            raise ValueError(f"the last convolution's channels must split into capsules of primary_dim. Received: "
                             f"conv_channels[-1]={conv_channels[-1]}, primary_dim={primary_dim}")
        self.margins = (float(m_plus), float(m_minus), float(down_weight))
        self.primary_dim = int(primary_dim)
        self.convs = [keras.layers.Conv2D(c, k, strides=s, activation="relu", kernel_initializer="he_normal",
                                          name=f"conv{i + 1}")
                      for i, (c, k, s) in enumerate(zip(conv_channels, conv_kernels, conv_strides))]
        self.norms = [keras.layers.BatchNormalization(name=f"norm{i + 1}") for i in range(len(conv_channels))]
        self.primary_conv = keras.layers.DepthwiseConv2D(primary_kernel, name="primary_capsules")
        self.class_capsules = SelfAttentionCapsules(num_classes, capsule_dim, name="class_capsules")

    def primary_capsules(self, images, training=None):
        """The primary capsules, `(batch_size, num_primary, primary_dim)`: 16 of 8 D on MNIST."""
        x = images
        for conv, norm in zip(self.convs, self.norms):
            x = norm(conv(x), training=training)
        features = self.primary_conv(x)  # (b, 1, 1, 128) on MNIST: the kernel covers the whole map
        count = math.prod(features.shape[1:]) // self.primary_dim
        return exponential_squash(ops.reshape(features, (-1, count, self.primary_dim)))

    def classify(self, images, training=None):
        poses = self.class_capsules(self.primary_capsules(images, training=training))
        return capsule_lengths(poses), poses

    def votes(self, images):
        """The class capsules' votes `u_hat_j|i`, `(batch_size, num_primary, num_classes, capsule_dim)`."""
        return self.class_capsules.votes(self.primary_capsules(images))

    def vote_scores(self, images):
        """Lengths of `exponential_squash(mean_i u_hat_j|i)`, `(batch_size, num_classes)`: the class capsules with
        routing (and its learned priors) replaced by the plain average of the votes, as Gu et al. (2021) attack
        CapsNet (`CapsNet.vote_scores`), squashed as this model squashes."""
        return capsule_lengths(exponential_squash(ops.mean(self.votes(images), axis=1)))

    def classification_loss(self, labels, scores):
        m_plus, m_minus, down_weight = self.margins
        return margin_loss(labels, scores, m_plus, m_minus, down_weight)


# recon_weight: the authors weight the reconstruction's squared error averaged over the pixels by 0.392; our
# `reconstruction_loss` sums it over the 784 pixels, so the same weight is 0.392 / 784 = 0.0005, Sabour et al.'s.
@register_model("efficient-capsnet", family="capsule", recipe=EFFICIENT_CAPSNET_RECIPE,
                description="Efficient-CapsNet, self-attention routing (Mazzia et al. 2021); paper configuration, "
                            "161,824 trainable parameters without the decoder (paper), 1,573,168 with")
def efficient_capsnet(image_shape=(28, 28, 1), num_classes=10, conv_channels=(32, 64, 64, 128),
                      conv_kernels=(5, 3, 3, 3), conv_strides=(1, 1, 1, 2), primary_kernel=9, primary_dim=8,
                      capsule_dim=16, reconstruction=True, decoder_units=(512, 1024), recon_weight=0.0005,
                      m_plus=0.9, m_minus=0.1, down_weight=0.5) -> EfficientCapsNet:
    """Builds an Efficient-CapsNet; every argument is a configuration key.

    `primary_kernel` should equal the side of the last convolution's output (9 on 28x28 images), so that each primary
    capsule sees the whole map, as in the paper; a smaller kernel gives more primary capsules.
    """
    return EfficientCapsNet(**{k: v for k, v in locals().items()}, name="efficient_capsnet")
