"""The attack registry: named attacks with every parameter set from the literature, never a library's defaults.

ART's FastGradientMethod, BasicIterativeMethod and ProjectedGradientDescent default to `eps_step=0.1` and
`max_iter=100`, which are nobody's protocol, and return each image's last iterate, so an image that an earlier step
had fooled and a later one moved back counts as robust. Each registered attack carries its published rule
(`AttackSpec.rule`) and `create_attack` resolves every parameter from it unless given. FGSM, BIM and PGD run on
`attacks.iterative`, which keeps each image's first successful iterate and chains the losses (cross-entropy, then
DLR on the survivors, by default); `tests/test_attacks.py` checks that loop against ART's BIM and PGD step for step.
Every attack records its parameters (`attack.record()`) for reports.

Rules (`eps` on the [0, 1] pixel scale):

- `fgsm` (Goodfellow et al. 2015): one step of size `eps`.
- `bim` (Kurakin et al. 2017, "Adversarial examples in the physical world"): L-inf, step 1/255 and
  `ceil(min(255 eps + 4, 1.25 * 255 eps))` iterations (at least 1), no random start. ART's BIM is exactly its PGD
  without a random start.
- `pgd` (Madry et al. 2018, MNIST protocol): L-inf, step 0.01, 40 steps, a uniform random start in the eps-ball.
  The protocol fixes eps = 0.3; at other eps we keep step 0.01 and 40 steps.
- L2 (`norm="2"`) for BIM and PGD: 40 steps of 2.5 * eps / 40 (Madry et al.'s robustness library), since pixel-scale
  L-inf steps are meaningless there; PGD keeps its random start.
- `pgd100`: Madry et al.'s MNIST evaluation attack, 100 steps of 0.01 from a random start, 5 restarts (each on the
  images the earlier ones left; Madry et al. used 50 on their challenge).
- A step count given without a step size gets steps of 2.5 * eps / steps (the rule above), since a short run at a
  fixed small step could not reach the budget; attacks that set their own step (APGD) keep theirs.

The attacks that target capsules, and the stronger and black-box ones, have their own modules (each documents its
defaults and sources): `vote` and `vote-da` (attacks/vote.py), `rbim` (attacks/rbim.py), `autoattack`
(attacks/autoattack.py) and `transfer` (attacks/transfer.py). Method-specific parameters are `options`, recorded
with the rest. What an attack requires of a model (`requires`) is compared with what the model provides in one
place, `attacks.base.unmet_requirement`.

>>> attack = create_attack("pgd", to_art_classifier(model), eps=0.3, seed=0)
>>> adversarial = attack.generate(images)  # (num_images, 28, 28, 1) float32 in [0, 1]
"""

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from art.attacks import EvasionAttack

from attacks.autoattack import build_autoattack
from attacks.base import NORMS, AttackParams, unmet_requirement
from attacks.iterative import gradient_attack
from attacks.rbim import ReconstructionAwareBIM
from attacks.transfer import TransferAttack
from attacks.vote import VoteAttack
from capsrobust.art_bridge import BatchedBridge
from capsrobust.errors import ConfigError

L2_STEPS = 40
PGD_STEP, PGD_STEPS = 0.01, 40
PGD_EVAL_STEPS = 100  # Madry et al.'s MNIST evaluation (and challenge leaderboard) PGD: 100 steps of 0.01
PGD_EVAL_RESTARTS = 5
BIM_STEP = 1 / 255
TRANSFER_BASE = "pgd"
# R-BIM's reconstruction weight: Frosst et al. (2018) and Qin et al. (2020) tune it and publish no value for
# MNIST, so this is ours, recorded in every report. See attacks/rbim.py for how it was chosen.
DETECTOR_PENALTY = 0.1
# Andriushchenko et al. (2020) Square's query budget in the reference AutoAttack "standard" version.
SQUARE_QUERIES = 5000

Rule = Callable[[float, str, dict], dict]  # (eps, norm, options) -> {"step_size", "steps", "random_start", "restarts"}
Builder = Callable[[object, AttackParams], EvasionAttack]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its published rule, its builder and what it needs.

    Attributes:
        name: the method's name (`--method`).
        description: one line for listings and reports.
        rule: `(eps, norm, options) -> {"step_size", "steps", "random_start", "restarts"}`, the published defaults.
        build: `(classifier, AttackParams) -> EvasionAttack`.
        single_step: the method takes exactly one step of size eps (no `steps` or `step_size` to choose).
        random_start_allowed: whether `random_start=True` is meaningful (BIM with one is PGD).
        adapts_step: the attack sets its own step size from its initial one (APGD halves it), so fewer steps do
            not call for a larger step.
        norms: the norms it runs under.
        options: the method's own parameters and their defaults (`AttackParams.options`).
        requires: what the attacked model must provide (`attacks.base.REQUIREMENTS`): `"votes"`, `"decoder"`.
        white_box: crafted with the attacked model's own gradients (transfer is not, so the sweep's white-box
            checks leave it out).
    """

    name: str
    description: str
    rule: Rule
    build: Builder
    single_step: bool = False
    random_start_allowed: bool = True
    adapts_step: bool = False
    norms: tuple[str, ...] = ("inf", "2")
    options: dict = field(default_factory=dict)
    requires: frozenset = frozenset()
    white_box: bool = True

    def stepping(self, options: dict) -> "AttackSpec":
        """The spec whose step rules apply: a transfer attack steps as the white-box method it crafts with."""
        return get_attack_spec(options["base"]) if "base" in self.options else self

    def settings(self, eps: float, norm: str, options: dict, step_size: float | None = None,
                 steps: int | None = None, random_start: bool | None = None, restarts: int | None = None) -> dict:
        """The step settings a sweep gives every attack, less those that mean nothing for this one: steps and
        step size for one-step FGSM, a random start for BIM (with one it is PGD), restarts without a random start.

        Args:
            eps, norm: the budget the attack will run at.
            options: the method's resolved options (a transfer attack steps as its base method).
            step_size, steps, random_start, restarts: the sweep's settings; None keeps the method's rule.

        Returns:
            The keyword arguments of `create_attack` that apply, None-valued ones left out.
        """
        stepping = self.stepping(options)
        settings = {} if stepping.single_step else {"step_size": step_size, "steps": steps}
        if stepping.random_start_allowed:
            settings["random_start"] = random_start
            if random_start or stepping.rule(eps, norm, options)["random_start"]:
                settings["restarts"] = restarts
        return {key: value for key, value in settings.items() if value is not None}

    def unmet(self, model) -> str | None:
        """Why `model` cannot be attacked by this method, or None."""
        return unmet_requirement(self.requires, model)


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, description: str, *, rule: Rule, **traits) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder `(classifier, AttackParams) -> EvasionAttack` under `name`; `traits` are
    the other `AttackSpec` fields. Stack it to register one builder under several names."""

    def decorate(build: Builder) -> Builder:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        _ATTACKS[name] = AttackSpec(name, description, rule, build, **traits)
        return build

    return decorate


def list_attacks(pattern: str = "*", white_box: bool | None = None) -> list[str]:
    """Registered attack names matching a shell-style pattern, in registration order."""
    return [n for n, s in _ATTACKS.items()
            if fnmatch.fnmatch(n, pattern) and (white_box is None or s.white_box == white_box)]


def get_attack_spec(method: str) -> AttackSpec:
    """The spec of `method`; a `ConfigError` listing the known methods if there is none."""
    if method not in _ATTACKS:
        raise ConfigError(f"unknown attack method; known methods: {', '.join(_ATTACKS)}. Received: method={method!r}")
    return _ATTACKS[method]


# The published rules.

def _fgsm_rule(eps: float, norm: str, options: dict) -> dict:
    return {"step_size": eps, "steps": 1, "random_start": False, "restarts": 1}


def _bim_rule(eps: float, norm: str, options: dict) -> dict:
    if norm != "inf":
        return {"step_size": 2.5 * eps / L2_STEPS, "steps": L2_STEPS, "random_start": False, "restarts": 1}
    pixels = eps * 255  # Kurakin et al. count in 0-255 pixel units; round away float noise (8/255*255 = 8.000000001)
    return {"step_size": BIM_STEP, "steps": max(1, math.ceil(round(min(pixels + 4, 1.25 * pixels), 6))),
            "random_start": False, "restarts": 1}


def _pgd_rule(eps: float, norm: str, options: dict) -> dict:
    step = PGD_STEP if norm == "inf" else 2.5 * eps / L2_STEPS
    return {"step_size": step, "steps": PGD_STEPS if norm == "inf" else L2_STEPS, "random_start": True,
            "restarts": 1}


def _pgd100_rule(eps: float, norm: str, options: dict) -> dict:
    step = PGD_STEP if norm == "inf" else 2.5 * eps / PGD_EVAL_STEPS
    return {"step_size": step, "steps": PGD_EVAL_STEPS, "random_start": True, "restarts": PGD_EVAL_RESTARTS}


def _apgd_rule(eps: float, norm: str, options: dict) -> dict:
    # Croce & Hein (2020): APGD starts with a step of 2 eps (it halves the step itself) and runs 100 iterations.
    return {"step_size": 2 * eps, "steps": 100, "random_start": True, "restarts": 1}


def _transfer_rule(eps: float, norm: str, options: dict) -> dict:
    return get_attack_spec(options["base"]).rule(eps, norm, options)


# The registry. Builders get a checked `AttackParams`; requirements are checked before they run.

@register_attack("pgd100", "PGD as Madry et al. evaluate MNIST models: 100 steps of 0.01, random start, 5 restarts",
                 rule=_pgd100_rule)
@register_attack("pgd", "Projected Gradient Descent (Madry et al. 2018): 40 steps of 0.01 from a random start",
                 rule=_pgd_rule)
@register_attack("bim", "Basic Iterative Method (Kurakin et al. 2017): steps of 1/255, no random start",
                 rule=_bim_rule, random_start_allowed=False)
@register_attack("fgsm", "Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps",
                 rule=_fgsm_rule, single_step=True)
def _gradient(classifier, params: AttackParams) -> EvasionAttack:
    return gradient_attack(classifier, params)


@register_attack("vote-da", "detection-aware vote attack (Gu et al. 2021): vote loss minus reconstruction distance",
                 rule=_pgd_rule, norms=("inf",), requires=frozenset({"votes", "decoder"}),
                 options={"detector_penalty": DETECTOR_PENALTY, "detector_threshold": None})
@register_attack("vote", "vote attack (Gu et al. 2021): PGD on the averaged votes, routing skipped",
                 rule=_pgd_rule, norms=("inf",), requires=frozenset({"votes"}))
def _vote(classifier, params: AttackParams) -> EvasionAttack:
    return VoteAttack(classifier, params)


@register_attack("rbim", "reconstruction-aware BIM (Frosst et al. 2018): loss minus reconstruction distance",
                 rule=_bim_rule, norms=("inf",), random_start_allowed=False,
                 options={"detector_penalty": DETECTOR_PENALTY, "detector_threshold": None},
                 requires=frozenset({"decoder"}))
def _rbim(classifier, params: AttackParams) -> EvasionAttack:
    return ReconstructionAwareBIM(classifier, params)


@register_attack("autoattack-fast", "AutoAttack's gradient members only: APGD-CE, then APGD-T (9 targets)",
                 rule=_apgd_rule, adapts_step=True)
@register_attack("autoattack", "standard AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square-5000",
                 rule=_apgd_rule, adapts_step=True, options={"queries": SQUARE_QUERIES})
def _autoattack(classifier, params: AttackParams) -> EvasionAttack:
    return build_autoattack(classifier, params, fast=params.method == "autoattack-fast")


@register_attack("transfer", "black-box transfer: crafted on a source model with a white-box attack, tested here",
                 rule=_transfer_rule, options={"base": TRANSFER_BASE, "source": None}, white_box=False)
def _transfer(classifier, params: AttackParams) -> EvasionAttack:
    base = create_attack(params.options["base"], classifier, params.eps, step_size=params.step_size,
                         steps=params.steps, norm=params.norm, targeted=params.targeted,
                         random_start=params.random_start, batch_size=params.batch_size, seed=params.seed,
                         restarts=params.restarts)
    return TransferAttack(classifier, params, base)


# Checking and resolving parameters.

def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _is_count(value, least: int = 1) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= least


def _check_options(spec: AttackSpec, options: dict | None) -> dict:
    given = dict(options or {})
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) or "none"
        raise ConfigError(f"{spec.name} does not take {', '.join(unknown)} (its options: {takes}). "
                          f"Received: options={given!r}")
    resolved = {**spec.options, **{k: v for k, v in given.items() if v is not None}}
    for key in ("detector_penalty", "detector_threshold"):
        value = resolved.get(key)
        if value is not None and (not _is_number(value) or not math.isfinite(value) or value < 0):
            raise ConfigError(f"{key} must be a finite number >= 0. Received: {key}={value!r}")
    queries = resolved.get("queries")
    if queries is not None and not _is_count(queries):
        raise ConfigError(f"queries must be an integer >= 1. Received: queries={queries!r}")
    if "base" in spec.options and (resolved["base"] not in _ATTACKS or not _ATTACKS[resolved["base"]].white_box):
        known = ", ".join(list_attacks(white_box=True))
        raise ConfigError(f"a transfer attack crafts with one of {known}. Received: base={resolved['base']!r}")
    return resolved


def _check_eps_and_norm(eps, norm: str) -> float:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm; known norms: {', '.join(NORMS)}. Received: norm={norm!r}")
    upper = NORMS[norm][1]
    if not _is_number(eps) or not math.isfinite(eps) or eps < 0 or (upper is not None and eps > upper):
        bound = f"in [0, {upper:g}]" if upper is not None else "finite and >= 0"
        raise ConfigError(f"eps must be a number {bound} for norm={norm!r} (pixel scale [0, 1]). Received: eps={eps!r}")
    return float(eps)


def attack_defaults(method: str, eps: float, norm: str = "inf", options: dict | None = None) -> dict:
    """The published step size, step count, random start and restarts of `method` at `eps`.

    Raises:
        ConfigError: unknown method or norm, or eps out of range.
    """
    spec = get_attack_spec(method)
    return spec.rule(_check_eps_and_norm(eps, norm), norm, _check_options(spec, options))


def resolve_params(method: str, eps: float, *, step_size: float | None = None, steps: int | None = None,
                   norm: str = "inf", targeted: bool = False, random_start: bool | None = None,
                   batch_size: int = 128, seed: int | None = None, options: dict | None = None,
                   restarts: int | None = None) -> AttackParams:
    """Checks the arguments of `create_attack` and fills the unset ones from the method's rule.

    Raises:
        ConfigError: any argument out of range, named in a one-line message that echoes it.
    """
    spec = get_attack_spec(method)
    eps = _check_eps_and_norm(eps, norm)
    if norm not in spec.norms:
        raise ConfigError(f"{method} runs under the {', '.join(spec.norms)} norm only. Received: norm={norm!r}")
    options = _check_options(spec, options)
    defaults = spec.rule(eps, norm, options)
    if step_size is not None and (not _is_number(step_size) or not math.isfinite(step_size) or step_size <= 0):
        raise ConfigError(f"step_size must be a finite number > 0. Received: step_size={step_size!r}")
    if steps is not None and not _is_count(steps):
        raise ConfigError(f"steps must be an integer >= 1. Received: steps={steps!r}")
    stepping = spec.stepping(options)
    if stepping.single_step and (steps not in (None, 1) or step_size not in (None, eps)):
        raise ConfigError(f"{method} takes one step of size eps; use bim or pgd for other steps. "
                          f"Received: steps={steps!r}, step_size={step_size!r}")
    if random_start and not stepping.random_start_allowed:
        raise ConfigError(f"{method} never starts at random (with a random start it is pgd). "
                          f"Received: random_start={random_start!r}")
    if restarts is not None and not _is_count(restarts):
        raise ConfigError(f"restarts must be an integer >= 1 (1: a single run). Received: restarts={restarts!r}")
    start = bool(defaults["random_start"] if random_start is None else random_start)
    if restarts is not None and restarts > 1 and not start:
        raise ConfigError(f"restarts need a random start (without one every restart repeats the first); {method} "
                          f"has none. Received: restarts={restarts!r}")
    if not _is_count(batch_size):
        raise ConfigError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    if seed is not None and not _is_count(seed, least=0):
        raise ConfigError(f"seed must be an integer >= 0 or None. Received: seed={seed!r}")
    if step_size is None and steps is not None and not stepping.adapts_step and not stepping.single_step:
        step_size = 2.5 * eps / steps if eps > 0 else None  # fewer steps at the rule's step could not reach eps
    return AttackParams(
        method=method, eps=eps, norm=norm,
        step_size=float(defaults["step_size"] if step_size is None else step_size),
        steps=int(defaults["steps"] if steps is None else steps),
        random_start=start, targeted=bool(targeted), batch_size=int(batch_size),
        seed=None if seed is None else int(seed), options=options,
        restarts=1 if not start else int(defaults["restarts"] if restarts is None else restarts))


def create_attack(method: str, classifier: BatchedBridge, eps: float, *, step_size: float | None = None,
                  steps: int | None = None, norm: str = "inf", targeted: bool = False,
                  random_start: bool | None = None, batch_size: int = 128, seed: int | None = None,
                  options: dict | None = None, restarts: int | None = None) -> EvasionAttack:
    """Builds a registered attack against `classifier` with every parameter set explicitly.

    Args:
        method: a registered name (`list_attacks()`): `"fgsm"`, `"bim"`, `"pgd"`, `"pgd100"`, `"vote"`,
            `"vote-da"`, `"rbim"`, `"autoattack"`, `"autoattack-fast"` or `"transfer"`.
        classifier: the ART bridge classifier of the model (`capsrobust.art_bridge.to_art_classifier`); for
            `transfer`, the *source* model's.
        eps: the radius of the eps-ball on the [0, 1] pixel scale: in [0, 1] for L-inf, finite and >= 0 for L2.
        step_size: the size of each step; None for the method's rule, or 2.5 eps / steps when `steps` is given.
        steps: the number of steps; None for the rule. FGSM takes exactly one step of size eps.
        norm: `"inf"` (default) or `"2"`.
        targeted: move towards target labels given to `generate` instead of away from the true ones.
        random_start: start from a uniform random point in the eps-ball; None for the rule (PGD only).
        batch_size: images per attack batch.
        seed: seeds every random draw, making the attack deterministic; None: fresh entropy.
        options: the method's own parameters (`get_attack_spec(method).options`): `detector_penalty` and
            `detector_threshold` (rbim, vote-da), `queries` (autoattack's Square), `base` and `source` (transfer:
            the white-box method it crafts with, and the source's name for the record).
        restarts: runs from new random starts, each on the images the earlier ones left; None for the rule
            (5 for pgd100, else 1). Needs a random start.

    Returns:
        An ART `EvasionAttack`; `record()` gives its parameters and, after `generate`, `last_run` (which loss,
        restart or member fooled how many images).

    Raises:
        ConfigError: unknown method or norm, a parameter out of range or that the method does not take, or a model
            that lacks what the method requires (capsule votes, a decoder).
    """
    params = resolve_params(method, eps, step_size=step_size, steps=steps, norm=norm, targeted=targeted,
                            random_start=random_start, batch_size=batch_size, seed=seed, options=options,
                            restarts=restarts)
    spec = _ATTACKS[method]
    if isinstance(classifier, BatchedBridge):  # ART's stock classifiers (benchmarks) carry no model to check
        reason = spec.unmet(classifier.source_model)
        if reason:
            raise ConfigError(f"{method} does not apply: {reason}")
    return spec.build(classifier, params)
