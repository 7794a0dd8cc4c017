"""The shared trainer, its batch stream and its checkpoints."""

from capsrobust.training.checkpoint import RunState, has_checkpoint, load_state
from capsrobust.training.trainer import TrainResult, TrainSettings, fit, seed_everything

__all__ = ["RunState", "TrainResult", "TrainSettings", "fit", "has_checkpoint", "load_state", "seed_everything"]
