"""Capsule layers and the heads shared with the CNN baselines (`keras.ops` only)."""

from capsrobust.layers.heads import ReconstructionDecoder, capsule_lengths, mask_poses
from capsrobust.layers.matrix_capsules import (ClassMatrixCapsules, ConvMatrixCapsules, PrimaryMatrixCapsules,
                                               receptive_field_centres)
from capsrobust.layers.primary_capsules import PrimaryCapsules
from capsrobust.layers.routing_capsules import RoutingCapsules
from capsrobust.layers.self_attention_capsules import SelfAttentionCapsules
from capsrobust.layers.standardize import PerImageStandardization

__all__ = ["ClassMatrixCapsules", "ConvMatrixCapsules", "PerImageStandardization", "PrimaryCapsules",
           "PrimaryMatrixCapsules", "ReconstructionDecoder", "RoutingCapsules", "SelfAttentionCapsules",
           "capsule_lengths", "mask_poses", "receptive_field_centres"]
