"""Model registry and the models in it. Importing this package registers every model."""

from capsrobust.models import capsnet, cnn, efficient_capsnet, em_capsnet  # noqa: F401  (registration side effect)
from capsrobust.models.base import POSES, RECONSTRUCTION, SCORES, CapsrobustModel
from capsrobust.models.registry import (ModelSpec, Recipe, create_model, get_model_spec, list_models, model_config,
                                        register_model, register_variant)

__all__ = ["POSES", "RECONSTRUCTION", "SCORES", "CapsrobustModel", "ModelSpec", "Recipe", "create_model", "get_model_spec",
           "list_models", "model_config", "register_model", "register_variant"]
