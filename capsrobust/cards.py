"""The model card: what a trained model's `card.json` holds, built in one place and checked in one place.

A card describes a trained model well enough to rebuild it from plain JSON (registry name and configuration; the
weights file is read with `load_weights`, never deserialised code) and to say how it was made (data, settings,
epochs, time, command, library versions) and how good it is (validation and test accuracy, the detector's threshold).
The trainer builds cards (`build_card`), the store seals them with their id and the weights' sha256 (`seal`) and
refuses any card `card_problem` finds fault with; the zoo ships store entries, so its cards are the same.

Version history: 1, the first; 2 adds `threat_model`, what an adversarially trained model was trained against
(method, eps, steps, step size, norm, beta, eps warm-up). A card is written with the lowest version that describes it
(`seal`): a plainly trained model's card stays version 1, which every capsrobust reads; an adversarially trained one's
is version 2, which an older capsrobust refuses rather than mistake the model for an undefended one.
"""

import math

import datetime
import platform

import keras
import numpy as np

import capsrobust
from capsrobust.backend import devices
from capsrobust.errors import ConfigError
from capsrobust.models import get_model_spec, model_config

CARD_FORMAT = "capsrobust-model-card"
CARD_VERSION = 2
THREAT_MODEL_VERSION = 2  # the first version with `threat_model`

# What a card must hold for the store to load its model: field -> type; then the optional fields.
_REQUIRED = {"model": str, "config": dict, "dataset": dict, "weights": dict}
_OPTIONAL = {"metrics": dict, "training": dict, "family": str, "created": str, "backend": str, "command": str,
             "detector": (dict, type(None)), "threat_model": (dict, type(None))}


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
               detector: dict | None, command: str | None = None, threat_model: dict | None = None) -> dict:
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
        threat_model: `ThreatModel.to_dict()` of an adversarially trained model; None for plain training.
    """
    card = {"model": model_name, "family": get_model_spec(model_name).family, "score_kind": model.score_kind,
            "config": config, "parameters": int(model.count_params()), "dataset": dataset, "training": training,
            "metrics": metrics, "detector": detector, "backend": keras.backend.backend(), "devices": devices(),
            "versions": library_versions(),
            "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if command is not None:
        card["command"] = command
    if threat_model is not None:
        card["threat_model"] = threat_model
    return card


def seal(card: dict, entry_id: str, weights_file: str, sha256: str) -> dict:
    """`card` as the store writes it: format, version, id first, and the weights file with its sha256."""
    version = THREAT_MODEL_VERSION if card.get("threat_model") is not None else 1
    return {"format": CARD_FORMAT, "version": version, "id": entry_id, **card,
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
    threat = card.get("threat_model")
    if threat is not None:
        if version < THREAT_MODEL_VERSION:
            return f"card version {version} cannot hold a threat_model (it came with version {THREAT_MODEL_VERSION})"
        problem = threat_model_problem(threat)
        if problem:
            return f"card.json threat_model: {problem}"
    try:
        model_config(card["model"], **card["config"])
    except ConfigError as error:
        return f"card.json: {error}"
    return ""


def threat_model_problem(threat: dict) -> str:
    """Why a card's `threat_model` is not one `ThreatModel` could have written, in a few words; empty if it is."""
    from capsrobust.training.adversarial import METHODS, NORMS

    if threat.get("method") not in METHODS:
        return f"unknown method {threat.get('method')!r}"
    eps = threat.get("eps")
    if not (_is_number(eps) and math.isfinite(eps) and 0 < eps <= 1):
        return f"eps must be a number in (0, 1]. Received: eps={eps!r}"
    steps = threat.get("steps")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        return f"steps must be a positive integer. Received: steps={steps!r}"
    if threat.get("norm") not in NORMS:
        return f"unknown norm {threat.get('norm')!r}"
    beta = threat.get("beta")
    if beta is not None and not (_is_number(beta) and math.isfinite(beta) and beta >= 0):
        return f"beta must be a number >= 0. Received: beta={beta!r}"
    return ""


def threat_model_summary(threat: dict | None) -> str:
    """`threat_model` in a few words for tables, e.g. "pgd-7 eps 0.3", "trades-7 eps 0.3 beta 6"; "" if None."""
    if not threat:
        return ""
    text = f"{threat.get('method')}-{threat.get('steps')} eps {threat.get('eps'):g}"
    if threat.get("norm", "inf") != "inf":
        text += f" L{threat.get('norm')}"
    return text + (f" beta {threat['beta']:g}" if threat.get("beta") is not None else "")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
