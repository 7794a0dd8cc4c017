"""The model registry: a dict of builders, a decorator to add one, `list_models`, `create_model`.

A model's configuration is the keyword arguments of its builder. `model_config` resolves a name and overrides to the
full configuration (JSON-able, stored in the model card), and `create_model` builds from it, so a stored model is
rebuilt from plain JSON without deserialising any code.
"""

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from keras import ops

from capsrobust.errors import ConfigError


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its builder and the defaults that distinguish it from the builder's own."""

    name: str
    family: str
    description: str
    builder: Callable[..., Any]
    defaults: dict = field(default_factory=dict)

    def parameters(self) -> dict:
        """The full default configuration: the builder's keyword defaults updated with this entry's."""
        signature = inspect.signature(self.builder)
        config = {name: p.default for name, p in signature.parameters.items()}
        return _jsonable({**config, **self.defaults})


_MODELS: dict[str, ModelSpec] = {}


def _jsonable(config: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def register_model(name: str, *, family: str, description: str, **defaults):
    """Decorator that registers a builder function under `name`."""

    def decorate(builder):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelSpec(name, family, description, builder, defaults)
        return builder

    return decorate


def register_variant(name: str, *, base: str, description: str, **defaults) -> None:
    """Registers `name` as `base` with other defaults (e.g. a small configuration)."""
    spec = get_model_spec(base)
    register_model(name, family=spec.family, description=description, **{**spec.defaults, **defaults})(spec.builder)


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
    """Builds model `name` (with `config` overrides) and creates its weights with one forward pass.

    Returns:
        A built `CapsrobustModel`.

    Raises:
        ConfigError: unknown model, unknown key, or a value the model rejects.
    """
    full = model_config(name, **config)
    try:
        model = get_model_spec(name).builder(**full)
        model._registry_name = name  # messages name the registry entry (`cnn-recon`), not the builder (`cnn`)
        model(ops.zeros((1, *full["image_shape"])))
    except (ValueError, TypeError) as error:
        raise ConfigError(f"cannot build {name!r}: {str(error).splitlines()[0]}") from None
    return model
