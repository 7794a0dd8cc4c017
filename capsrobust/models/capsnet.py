"""CapsNet with dynamic routing (Sabour, Frosst & Hinton 2017)."""

import keras
from keras import ops

from capsrobust.layers import PrimaryCapsules, RoutingCapsules, capsule_lengths
from capsrobust.losses import margin_loss
from capsrobust.models.base import CapsrobustModel
from capsrobust.models.registry import (SMALL_MODELS_FASHION_RECIPE, SMALL_MODELS_RECIPE, register_model,
                                        register_variant)
from capsrobust.ops import squash


class CapsNet(CapsrobustModel):
    """Conv -> PrimaryCaps -> class capsules by routing-by-agreement, with an optional reconstruction decoder.

    Paper configuration: Conv 256 9x9 ReLU -> 32x8D primary capsules (9x9, stride 2; 1,152 capsules on MNIST) ->
    10x16D class capsules, 3 routing iterations, margin loss, decoder FC 512-1024-784 weighted 0.0005. Scores are
    capsule lengths.
    """

    score_kind = "lengths"
    supports_votes = True

    def __init__(self, *, image_shape, num_classes, conv_channels, conv_kernel, primary_types, primary_dim,
                 primary_kernel, primary_strides, capsule_dim, routings, routing_stop_gradient, reconstruction,
                 decoder_units, recon_weight, m_plus, m_minus, down_weight, **kwargs):
        super().__init__(image_shape, num_classes, decoder_units=decoder_units if reconstruction else None,
                         recon_weight=recon_weight, **kwargs)
        self.margins = (float(m_plus), float(m_minus), float(down_weight))
        self.conv = keras.layers.Conv2D(conv_channels, conv_kernel, activation="relu", name="conv1")
        self.primary_capsules = PrimaryCapsules(primary_types, primary_dim, primary_kernel, primary_strides,
                                                name="primary_capsules")
        self.class_capsules = RoutingCapsules(num_classes, capsule_dim, routings, routing_stop_gradient,
                                              name="class_capsules")

    def classify(self, images, training=None):
        poses = self.class_capsules(self.primary_capsules(self.conv(images)))
        return capsule_lengths(poses), poses

    def votes(self, images):
        """The class capsules' votes `u_hat_j|i`, `(batch_size, num_children, num_classes, capsule_dim)`."""
        return self.class_capsules.votes(self.primary_capsules(self.conv(images)))

    def vote_scores(self, images):
        """Lengths of `squash(mean_i u_hat_j|i)`, `(batch_size, num_classes)`: the class capsules with routing
        replaced by the plain average of the votes, as Gu et al. (2021, section 4) attack them."""
        return capsule_lengths(squash(ops.mean(self.votes(images), axis=1)))

    def classification_loss(self, labels, scores):
        m_plus, m_minus, down_weight = self.margins
        return margin_loss(labels, scores, m_plus, m_minus, down_weight)


@register_model("capsnet", family="capsule",
                description="CapsNet, dynamic routing (Sabour et al. 2017); paper configuration, 8.2M parameters")
def capsnet(image_shape=(28, 28, 1), num_classes=10, conv_channels=256, conv_kernel=9, primary_types=32,
            primary_dim=8, primary_kernel=9, primary_strides=2, capsule_dim=16, routings=3,
            routing_stop_gradient=False, reconstruction=True, decoder_units=(512, 1024), recon_weight=0.0005,
            m_plus=0.9, m_minus=0.1, down_weight=0.5) -> CapsNet:
    """Builds a CapsNet; every argument is a configuration key (`capsrobust train --routings 1` sets `routings`)."""
    return CapsNet(**{k: v for k, v in locals().items()}, name="capsnet")


register_variant("capsnet-small", base="capsnet",
                 description="CapsNet with 64 conv channels, 8x8D primary capsule types and a 256-512 decoder",
                 recipe=SMALL_MODELS_RECIPE,
                 dataset_recipes={"fashion-mnist": SMALL_MODELS_FASHION_RECIPE},
                 conv_channels=64, primary_types=8, decoder_units=(256, 512))
