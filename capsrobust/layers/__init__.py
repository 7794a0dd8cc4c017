"""Capsule layers and the heads shared with the CNN baselines (`keras.ops` only)."""

from capsrobust.layers.heads import ReconstructionDecoder, capsule_lengths, mask_poses
from capsrobust.layers.primary_capsules import PrimaryCapsules
from capsrobust.layers.routing_capsules import RoutingCapsules

__all__ = ["PrimaryCapsules", "ReconstructionDecoder", "RoutingCapsules", "capsule_lengths", "mask_poses"]
