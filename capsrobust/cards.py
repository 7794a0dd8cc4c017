"""The model card: what a trained model's `card.json` holds, built in one place and checked in one place.

A card describes a trained model well enough to rebuild it from plain JSON (registry name and configuration; the
weights file is read with `load_weights`, never deserialised code) and to say how it was made (data, settings,
epochs, time, command, library versions) and how good it is (validation and test accuracy, the detector's threshold).
The trainer builds cards (`build_card`), the store seals them with their id and the weights' sha256 (`seal`) and
refuses any card `card_problem` finds fault with; the zoo ships store entries, so its cards are the same.

Version history: 1, the first.
"""

import datetime
import platform

import keras
import numpy as np

import capsrobust
from capsrobust.backend import devices
from capsrobust.errors import ConfigError
from capsrobust.models import get_model_spec, model_config

CARD_FORMAT = "capsrobust-model-card"
CARD_VERSION = 1

# What a card must hold for the store to load its model: field -> type; then the optional fields.
_REQUIRED = {"model": str, "config": dict, "dataset": dict, "weights": dict}
_OPTIONAL = {"metrics": dict, "training": dict, "family": str, "created": str, "backend": str, "command": str,
             "detector": (dict, type(None))}


def library_versions() -> dict:
    """The versions a card records: capsrobust, Python, Keras, numpy and the running backend's library."""
    versions = {"capsrobust": capsrobust.__version__, "python": platform.python_version(), "keras": keras.__version__,
                "numpy": np.__version__}
    backend = keras.backend.backend()
    try:
        module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
        versions[module] = __import__(module).__version__
    except (KeyError, ImportError):
        pass
    return versions


def build_card(*, model_name: str, config: dict, model, dataset: dict, training: dict, metrics: dict,
               detector: dict | None, command: str | None = None) -> dict:
    """A new card for a model just trained, everything but what the store adds when it publishes (`seal`).

    Args:
        model_name: the registry name.
        config: the full model configuration (`capsrobust.models.model_config`).
        model: the trained `CapsrobustModel`.
        dataset: `Dataset.describe()`: name, source, split sizes.
        training: the settings and what the run did (epochs, best epoch, stop reason, seconds, images/s, history).
        metrics: `val_accuracy`, `test_accuracy`, `test_images` and any other figures.
        detector: the reconstruction detector's `to_dict()`, or None without a decoder.
        command: the command line that trained it, as a user would type it.
    """
    card = {"model": model_name, "family": get_model_spec(model_name).family, "score_kind": model.score_kind,
            "config": config, "parameters": int(model.count_params()), "dataset": dataset, "training": training,
            "metrics": metrics, "detector": detector, "backend": keras.backend.backend(), "devices": devices(),
            "versions": library_versions(),
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if command is not None:
        card["command"] = command
    return card


def seal(card: dict, entry_id: str, weights_file: str, sha256: str) -> dict:
    """`card` as the store writes it: format, version, id first, and the weights file with its sha256."""
    return {"format": CARD_FORMAT, "version": CARD_VERSION, "id": entry_id, **card,
            "weights": {"file": weights_file, "sha256": sha256}}


def card_problem(card) -> str:
    """Why a card cannot describe a loadable model, in a few words; empty if it can.

    Checks the format and version, the types the store and the commands rely on, and that the registry knows the
    model and every key of its configuration, so a tampered card is reported as broken instead of failing later
    with a traceback.
    """
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        return "card.json is not a capsrobust model card"
    version = card.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"card.json has an invalid version {version!r}"
    if version > CARD_VERSION:
        return f"card version {version} is newer than this capsrobust supports ({CARD_VERSION}); upgrade capsrobust"
    for name, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if name not in card:
            if name in _REQUIRED:
                return f"card.json has no {name!r}"
            continue
        if not isinstance(card[name], kind):
            return f"card.json field {name!r} has the wrong type ({type(card[name]).__name__})"
    if not isinstance(card["dataset"].get("name"), str):
        return "card.json has no dataset name"
    sha256 = card["weights"].get("sha256")
    if not (isinstance(sha256, str) and len(sha256) == 64 and all(c in "0123456789abcdef" for c in sha256)):
        return "card.json has no valid weights sha256"
    for key in ("val_accuracy", "test_accuracy"):
        value = card.get("metrics", {}).get(key)
        if value is not None and not _is_number(value):
            return f"card.json metric {key!r} is not a number"
    detector = card.get("detector")
    if detector is not None and not _is_number(detector.get("threshold")):
        return "card.json detector has no numeric threshold"
    try:
        model_config(card["model"], **card["config"])
    except ConfigError as error:
        return f"card.json: {error}"
    return ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
