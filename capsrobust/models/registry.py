"""The model registry: a dict of builders, a decorator to add one, `list_models`, `create_model`.

A model's configuration is the keyword arguments of its builder; its `Recipe` is how `capsrobust train` trains it when
no optimisation flag is given. `model_config` resolves a name and overrides to the
full configuration (JSON-able, stored in the model card), and `create_model` builds from it, so a stored model is
rebuilt from plain JSON without deserialising any code.
"""

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import keras

from capsrobust.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """How `capsrobust train DATASET --model NAME` trains a model when no optimisation flag says otherwise.

    The published recipes are for GPUs; these are what converges on a 2-core CPU. `why` says what was changed and what
    it reached, so a user can tell a measured recipe from a default.
    """

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_decay: float = 0.9  # the learning rate's factor per epoch
    max_shift: int = 2  # random shift augmentation, in pixels
    why: str = "the trainer's defaults (Sabour et al. 2017: Adam 1e-3, x0.9 per epoch, shifts of up to 2 pixels)"

    def settings(self) -> dict:
        """The `TrainSettings` keyword arguments this recipe sets."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "lr_decay": self.lr_decay, "max_shift": self.max_shift}

    def summary(self) -> str:
        """The recipe in a few words for tables, e.g. "30 ep, batch 128, Adam 1e-3 x0.9/ep, shift 2"."""
        return (f"{self.epochs} ep, batch {self.batch_size}, Adam {self.learning_rate:g} x{self.lr_decay:g}/ep, "
                f"shift {self.max_shift}")


# capsnet-small and cnn-small (and cnn-recon) train the same way, so that neither family gets the better recipe:
# Sabour et al.'s, shortened from 30+ epochs to 12 (the learning rate decays x0.8 per epoch instead of x0.9) to fit
# about 45 minutes of a 2-core CPU per model.
SMALL_MODELS_RECIPE = Recipe(epochs=12, lr_decay=0.8,
                             why="Sabour et al.'s recipe in 12 epochs instead of 30+ (x0.8 per epoch instead of "
                                 "x0.9), the same for capsnet-small and the small CNNs, to fit a 2-core CPU")


# On Fashion-MNIST the 12-epoch small recipe stopped while validation accuracy still rose (capsnet-small 88.67%,
# cnn-small 90.72% test); batch 32, four times the steps per epoch, took cnn-small to 91.63% in 10 epochs (9 minutes
# on one core). Still the same recipe for both families.
SMALL_MODELS_FASHION_RECIPE = Recipe(epochs=10, batch_size=32, lr_decay=0.8,
                                     why="the small recipe at batch 32 for 10 epochs: at batch 128 for 12 epochs "
                                         "Fashion-MNIST validation accuracy was still rising")


# Efficient-CapsNet and the CNNs matched to it. The authors train with Adam 5e-4 decaying x0.97 per epoch, batch 16,
# for 150 epochs on a GPU; on a 2-core CPU (about 170 images/s) that is days. Batch 32 keeps most of the small
# batches' benefit at a better CPU throughput.
EFFICIENT_CAPSNET_RECIPE = Recipe(epochs=10, batch_size=32, learning_rate=1e-3, lr_decay=0.8,
                                  why="the authors' recipe (Adam 5e-4 x0.97 per epoch, batch 16, 150 epochs, a GPU) "
                                      "shortened to 10 epochs at batch 32, Adam 1e-3 x0.8 per epoch, for a 2-core CPU")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder, the defaults that distinguish it from the builder's own, its recipe."""

    name: str
    family: str
    description: str
    builder: Callable[..., Any]
    defaults: dict = field(default_factory=dict)
    recipe: Recipe = field(default_factory=Recipe)
    dataset_recipes: dict[str, Recipe] = field(default_factory=dict)  # the data sets that need another recipe

    def recipe_for(self, dataset: str) -> Recipe:
        """The recipe for `dataset` (e.g. "fashion-mnist"): its own where it has one, else the model's."""
        return self.dataset_recipes.get(dataset, self.recipe)

    def parameters(self) -> dict:
        """The full default configuration: the builder's keyword defaults updated with this entry's."""
        signature = inspect.signature(self.builder)
        config = {name: p.default for name, p in signature.parameters.items()}
        return _jsonable({**config, **self.defaults})


_MODELS: dict[str, ModelSpec] = {}


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def register_model(name: str, *, family: str, description: str, recipe: Recipe | None = None,
                   dataset_recipes: dict[str, Recipe] | None = None, **defaults):
    """Decorator that registers a builder function under `name`, trained by `recipe` (default: `Recipe()`) on
    every data set but those `dataset_recipes` names."""

    def decorate(builder):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(name, family, description, builder, defaults, recipe or Recipe(),
                                  dict(dataset_recipes or {}))
        return builder

    return decorate


def register_variant(name: str, *, base: str, description: str, recipe: Recipe | None = None,
                     dataset_recipes: dict[str, Recipe] | None = None, **defaults) -> None:
    """Registers `name` as `base` with other defaults (e.g. a small configuration) and, unless given, its recipes."""
    spec = get_model_spec(base)
    register_model(name, family=spec.family, description=description, recipe=recipe or spec.recipe,
                   dataset_recipes=spec.dataset_recipes if dataset_recipes is None else dataset_recipes,
                   **{**spec.defaults, **defaults})(spec.builder)


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered model names matching a shell-style pattern, e.g. `list_models("cnn-*")`."""
    return sorted(n for n, s in _MODELS.items()
                  if fnmatch.fnmatch(n, pattern) and (family is None or s.family == family))


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`; a `ConfigError` listing the known names if there is none."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_config(name: str, **overrides) -> dict:
    """The full configuration of model `name` with `overrides` applied; `None` overrides are ignored.

    Raises:
        ConfigError: unknown model, or a key the model does not take.
    """
    spec = get_model_spec(name)
    config = spec.parameters()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise ConfigError(f"model {name!r} does not take {', '.join(unknown)}; it takes: {', '.join(config)}")
    return _jsonable({**config, **overrides})


def create_model(name: str, **config):
    """Builds model `name` (with `config` overrides) and creates its weights with one symbolic forward pass.

    Returns:
        A built `CapsrobustModel`.

    Raises:
        ConfigError: unknown model, unknown key, or a value the model rejects.
    """
    full = model_config(name, **config)
    try:
        model = get_model_spec(name).builder(**full)
        model._registry_name = name  # messages name the registry entry (`cnn-recon`), not the builder (`cnn`)
        # Symbolic: the same weights as a pass on a real batch, without computing one (under JAX, every eager op of
        # that pass would be compiled by XLA: em-capsnet-small built in 19 s instead of 5).
        model(keras.KerasTensor((1, *full["image_shape"])))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"cannot build {name!r}: {str(error).splitlines()[0]}") from None
    return model
