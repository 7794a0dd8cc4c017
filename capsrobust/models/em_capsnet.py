"""Matrix capsules with EM routing (Hinton, Sabour & Frosst 2018)."""

import keras
from keras import ops

from capsrobust.layers import (ClassMatrixCapsules, ConvMatrixCapsules, PerImageStandardization, PrimaryMatrixCapsules,
                               receptive_field_centres)
from capsrobust.losses import spread_loss
from capsrobust.models.base import CapsrobustModel
from capsrobust.models.registry import register_model, register_variant


class EMCapsNet(CapsrobustModel):
    """ReLU Conv -> PrimaryCaps -> ConvCaps1 -> ConvCaps2 -> class capsules, EM routing between capsule layers.

    Paper configuration (section 4): Conv 5x5 stride 2 with A=32 channels, B=32 primary capsule types (1x1), ConvCaps1
    K=3 stride 2 with C=32 types, ConvCaps2 K=3 stride 1 with D=32 types, class capsules with coordinate addition,
    3 EM iterations, spread loss. No padding anywhere: 28x28 MNIST gives 12x12 -> 5x5 -> 3x3 capsule grids.

    Scores are the class capsules' activations in (0, 1); class poses are the flattened 4x4 matrices, which the
    optional decoder reads like CapsNet's (so reconstruction-error detection works on this model too).

    The spread loss margin is a non-trainable variable, raised during training by the trainer's `MarginSchedule`
    callback; it is saved with the weights, so a resumed run continues from its last value.
    """

    score_kind = "activations"
    supports_votes = True

    def __init__(self, *, image_shape, num_classes, conv_channels, primary_types, conv_types, conv_kernels,
                 conv_strides, em_iterations, inverse_temperature, normalize_cost, routing_stop_gradient, standardize,
                 reconstruction, decoder_units, recon_weight, margin_start, margin_end, **kwargs):
        super().__init__(image_shape, num_classes, decoder_units=decoder_units if reconstruction else None,
                         recon_weight=recon_weight, **kwargs)
        if len(conv_types) != len(conv_kernels) or len(conv_types) != len(conv_strides):
            raise ValueError("conv_types, conv_kernels and conv_strides need one entry per convolutional capsule layer")
        self.margin_range = (float(margin_start), float(margin_end))
        self.standardize = PerImageStandardization(name="standardize") if standardize else None
        routing = {"iterations": em_iterations, "temperatures": tuple(inverse_temperature),
                   "normalize_cost": normalize_cost, "stop_gradient": routing_stop_gradient}
        self.conv = keras.layers.Conv2D(conv_channels, 5, strides=2, activation="relu", name="conv1")
        self.primary_capsules = PrimaryMatrixCapsules(primary_types, name="primary_capsules")
        self.conv_capsules = [ConvMatrixCapsules(types, kernel, strides, **routing, name=f"conv_capsules{i + 1}")
                              for i, (types, kernel, strides) in enumerate(zip(conv_types, conv_kernels,
                                                                               conv_strides))]
        centres = receptive_field_centres(image_shape, [(5, 2), (1, 1), *zip(conv_kernels, conv_strides)])
        self.class_capsules = ClassMatrixCapsules(num_classes, centres, **routing, name="class_capsules")
        self.spread_margin = self.add_weight(shape=(), initializer=keras.initializers.Constant(margin_start),
                                             trainable=False, name="spread_margin")

    def _last_capsules(self, images):
        if self.standardize is not None:
            images = self.standardize(images)
        capsules = self.primary_capsules(self.conv(images))
        for layer in self.conv_capsules:
            capsules = layer(capsules)
        return capsules

    def classify(self, images, training=None):
        poses, activations = self.class_capsules(self._last_capsules(images))
        return activations, poses

    def votes(self, images):
        """The class capsules' votes and the activations of the capsules casting them: `(votes (batch_size,
        num_children, num_classes, 16), child activations (batch_size, num_children))`."""
        return self.class_capsules.votes(self._last_capsules(images))

    def vote_scores(self, images):
        """Class activations `(batch_size, num_classes)` from the votes with routing skipped.

        Our extension of Gu et al. (2021) to EM routing, where the mean of the poses is not a score: one M-step on
        uniform assignments and no E-step, i.e. each class's Gaussian is fitted to all its votes weighted by the
        child activations (the activation-weighted mean vote and its spread), and its activation
        `logistic(lambda (beta_a - cost))` is computed exactly as the model's own (Hinton et al. 2018, Procedure 1),
        at the last inverse temperature. Only the class-capsule routing is skipped; the convolutional capsule layers
        below route as usual.
        """
        _, activations = self.class_capsules.route(*self.votes(images), iterations=1)
        return activations

    def classification_loss(self, labels, scores):
        return spread_loss(labels, scores, ops.cast(self.spread_margin, scores.dtype))


@register_model("em-capsnet", family="capsule",
                description="Matrix capsules, EM routing (Hinton et al. 2018); paper configuration A=B=C=D=32")
def em_capsnet(image_shape=(28, 28, 1), num_classes=10, conv_channels=32, primary_types=32, conv_types=(32, 32),
               conv_kernels=(3, 3), conv_strides=(2, 1), em_iterations=3, inverse_temperature=(0.5, 1.0),
               normalize_cost=True, routing_stop_gradient=False, standardize=False, reconstruction=False,
               decoder_units=(512, 1024), recon_weight=0.0005, margin_start=0.2, margin_end=0.9) -> EMCapsNet:
    """Builds an EM capsule network; every argument is a configuration key (`--em-iterations` sets `em_iterations`).

    `inverse_temperature` is the (first, last) lambda of the EM iterations, rising linearly. `normalize_cost=True`
    standardises each position's activation costs over its parents before the logistic; `False` is the paper's raw
    cost, for which lambda must be about 0.01 and which did not train on MNIST in our runs (README, EM routing).
    """
    return EMCapsNet(**{k: v for k, v in locals().items()}, name="em_capsnet")


register_variant("em-capsnet-small", base="em-capsnet",
                 description="Matrix capsules, EM routing, the paper's small configuration A=64, B=8, C=D=16",
                 conv_channels=64, primary_types=8, conv_types=(16, 16))
