"""Named attack factories, with every parameter set from the literature, never a library's defaults.

ART's FastGradientMethod, BasicIterativeMethod and ProjectedGradientDescent default to `eps_step=0.1` and
`max_iter=100`, which are nobody's protocol, and return each image's last iterate, so an image that an earlier step
had fooled and a later one moved back counts as robust. `make_attack` resolves each parameter from the method's
published rule (`attack_defaults`) unless given and builds FGSM, BIM and PGD on `attacks.iterative`, which keeps each
image's first successful iterate and chains the losses (cross-entropy, then DLR on the survivors, by default);
`tests/test_attacks.py` checks that loop against ART's BIM and PGD step for step. Every attack records its
parameters (`attack.record()`) for reports.

Defaults (`eps` on the [0, 1] pixel scale):

- `fgsm` (Goodfellow et al. 2015): one step of size `eps`.
- `bim` (Kurakin et al. 2017, "Adversarial examples in the physical world"): L-inf, step 1/255 and
  `ceil(min(255 eps + 4, 1.25 * 255 eps))` iterations (at least 1), no random start. ART's BIM is exactly its PGD
  without a random start.
- `pgd` (Madry et al. 2018, MNIST protocol): L-inf, step 0.01, 40 steps, a uniform random start in the eps-ball.
  The protocol fixes eps = 0.3; at other eps we keep step 0.01 and 40 steps. The other common rule,
  step = 2.5 * eps / steps, is the one used here for L2.
- L2 (`norm="2"`) for BIM and PGD: 40 steps of 2.5 * eps / 40 (Madry et al.'s robustness library), since pixel-scale
  L-inf steps are meaningless there; PGD keeps its random start.
- `pgd100`: Madry et al.'s MNIST evaluation attack, 100 steps of 0.01 from a random start, 5 restarts (each on the
  images the earlier ones left; Madry et al. used 50 on their challenge). `restarts` sets it for any method with a
  random start.

The attacks that target capsules, and the stronger and black-box ones, have their own modules (each documents its
defaults and sources): `vote` and `vote-da` (attacks/vote.py), `rbim` (attacks/rbim.py), `autoattack`
(attacks/autoattack.py) and `transfer` (attacks/transfer.py). Method-specific parameters are `options`, recorded
with the rest.

>>> attack = make_attack("pgd", to_art_classifier(model), eps=0.3, seed=0)
>>> adversarial = attack.generate(images)  # (num_images, 28, 28, 1) float32 in [0, 1]
"""

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from art.attacks import EvasionAttack

from capsrobust.errors import ConfigError

# Norm name -> (ART's norm, the largest meaningful eps on [0, 1] images; None: only finite and non-negative).
NORMS: dict[str, tuple[float, float | None]] = {"inf": (np.inf, 1.0), "2": (2, None)}

L2_STEPS = 40
PGD_STEP, PGD_STEPS = 0.01, 40
PGD_EVAL_STEPS = 100  # Madry et al.'s MNIST evaluation (and challenge leaderboard) PGD: 100 steps of 0.01
PGD_EVAL_RESTARTS = 5
BIM_STEP = 1 / 255
TRANSFER_BASE = "pgd"


@dataclass(frozen=True)
class AttackParams:
    """Every parameter of one configured attack, as a report records it.

    Attributes:
        method: a name in `ATTACKS`.
        eps: the radius of the norm ball around each image, on the [0, 1] pixel scale.
        norm: `"inf"` or `"2"`.
        step_size: the size of each step (ART's `eps_step`).
        steps: the number of steps (ART's `max_iter`; 1 for FGSM).
        random_start: whether the first step starts from a uniform random point in the eps-ball.
        targeted: whether the attack moves towards given target labels instead of away from the true ones.
        batch_size: images per attack batch.
        restarts: runs from new random starts, each on the images the earlier ones left (1: a single run).
        seed: the seed of numpy's global generator while generating (ART draws its random starts there), or None.
        options: the method's own parameters (`AttackSpec.options`), e.g. R-BIM's `recon_weight`; empty for FGSM,
            BIM and PGD.
    """

    method: str
    eps: float
    norm: str
    step_size: float
    steps: int
    random_start: bool
    targeted: bool
    batch_size: int
    seed: int | None
    options: dict = field(default_factory=dict)
    restarts: int = 1

    @property
    def art_norm(self) -> float:
        return NORMS[self.norm][0]


def _fgsm_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    return {"step_size": eps, "steps": 1, "random_start": False, "restarts": 1}


def _bim_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    if norm != "inf":
        return {"step_size": 2.5 * eps / L2_STEPS, "steps": L2_STEPS, "random_start": False, "restarts": 1}
    pixels = eps * 255  # Kurakin et al. count in 0-255 pixel units; round away float noise (8/255*255 = 8.000000001)
    return {"step_size": BIM_STEP, "steps": max(1, math.ceil(round(min(pixels + 4, 1.25 * pixels), 6))),
            "random_start": False, "restarts": 1}


def _pgd_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    step = PGD_STEP if norm == "inf" else 2.5 * eps / L2_STEPS
    return {"step_size": step, "steps": PGD_STEPS if norm == "inf" else L2_STEPS, "random_start": True,
            "restarts": 1}


def _pgd100_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    step = PGD_STEP if norm == "inf" else 2.5 * eps / PGD_EVAL_STEPS
    return {"step_size": step, "steps": PGD_EVAL_STEPS, "random_start": True, "restarts": PGD_EVAL_RESTARTS}


def _autoattack_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    # Croce & Hein (2020): APGD starts with a step of 2 eps (it halves the step itself) and runs 100 iterations.
    return {"step_size": 2 * eps, "steps": 100, "random_start": True, "restarts": 1}


def _transfer_defaults(eps: float, norm: str, options: dict | None = None) -> dict:
    base = (options or {}).get("base", TRANSFER_BASE)
    return ATTACKS[base].defaults(eps, norm, options)


def _build_gradient(classifier, params: AttackParams) -> EvasionAttack:
    from attacks.iterative import gradient_attack  # attacks/iterative.py imports this module's AttackParams
    return gradient_attack(classifier, params)


def _build_vote(classifier, params: AttackParams) -> EvasionAttack:
    from attacks.vote import VoteAttack  # the capsule-aware attacks import this module's AttackParams
    return VoteAttack(classifier, params)


def _build_rbim(classifier, params: AttackParams) -> EvasionAttack:
    from attacks.rbim import ReconstructionAwareBIM
    return ReconstructionAwareBIM(classifier, params)


def _build_autoattack(classifier, params: AttackParams) -> EvasionAttack:
    from attacks.autoattack import build_autoattack
    return build_autoattack(classifier, params, fast=params.method == "autoattack-fast")


def _build_transfer(classifier, params: AttackParams) -> EvasionAttack:
    from attacks.transfer import TransferAttack
    return TransferAttack(classifier, params)


def _needs_votes(model) -> str | None:
    if not getattr(model, "supports_votes", False):
        return (f"{model.name} has no capsule votes: the vote attack applies to capsule models (capsnet, "
                f"em-capsnet), not to CNNs")
    return None


def _needs_decoder(model) -> str | None:
    if not model.has_decoder:
        return f"{model.name} has no reconstruction decoder, so there is no reconstruction error to keep low"
    return None


def _needs_votes_and_decoder(model) -> str | None:
    return _needs_votes(model) or _needs_decoder(model)


@dataclass(frozen=True)
class AttackSpec:
    """A named attack: its ART class, its default rule and its builder.

    Attributes:
        name: the method's name (`--method`).
        description: one line for listings and reports.
        art_class: the ART attack class it builds.
        defaults: `(eps, norm, options) -> {"step_size", "steps", "random_start"}`, the published rule.
        build: `(classifier, AttackParams) -> EvasionAttack`, every ART parameter set explicitly.
        single_step: the method takes exactly one step of size eps (no `steps` or `step_size` to choose).
        random_start_allowed: whether `random_start=True` is meaningful (BIM with one is PGD).
        norms: the norms it runs under.
        options: the method's own parameters and their defaults (`AttackParams.options`).
        applies: `model -> None`, or why the attack does not apply to that model.
        white_box: crafted with the attacked model's own gradients (transfer is not, so the sweep's white-box
            checks leave it out).
        adapts_step: the attack sets its own step size from its initial one (APGD halves it), so fewer steps do
            not call for a larger step.
    """

    name: str
    description: str
    art_class: type
    defaults: Callable[..., dict]
    build: Callable[..., EvasionAttack]
    single_step: bool = False
    random_start_allowed: bool = True
    norms: tuple[str, ...] = ("inf", "2")
    options: dict = field(default_factory=dict)
    applies: Callable[[object], str | None] = lambda model: None
    white_box: bool = True
    adapts_step: bool = False


def _lazy(module: str, name: str) -> type:
    """The class an attack builds, for listings, without importing its module (and TensorFlow) at import time."""
    return type(name, (), {"__module__": module})


# R-BIM's reconstruction weight: Frosst et al. (2018) and Qin et al. (2020) tune it and publish no value for
# MNIST, so this is ours, recorded in every report. See attacks/rbim.py for how it was chosen.
RECON_WEIGHT = 0.1
# Andriushchenko et al. (2020) Square's query budget in the reference AutoAttack "standard" version.
SQUARE_QUERIES = 5000

_LOOP = _lazy("attacks.iterative", "ObjectiveAttack")
_ENSEMBLE = _lazy("attacks.autoattack", "AutoAttackEnsemble")

ATTACKS: dict[str, AttackSpec] = {spec.name: spec for spec in (
    AttackSpec("fgsm", "Fast Gradient Sign Method (Goodfellow et al. 2015): one step of size eps",
               _LOOP, _fgsm_defaults, _build_gradient, single_step=True),
    AttackSpec("bim", "Basic Iterative Method (Kurakin et al. 2017): steps of 1/255, no random start",
               _LOOP, _bim_defaults, _build_gradient, random_start_allowed=False),
    AttackSpec("pgd", "Projected Gradient Descent (Madry et al. 2018): 40 steps of 0.01 from a random start",
               _LOOP, _pgd_defaults, _build_gradient),
    AttackSpec("pgd100", "PGD as Madry et al. evaluate MNIST models: 100 steps of 0.01, random start, 5 restarts",
               _LOOP, _pgd100_defaults, _build_gradient),
    AttackSpec("vote", "vote attack (Gu et al. 2021): PGD on the averaged votes, routing skipped",
               _lazy("attacks.vote", "VoteAttack"), _pgd_defaults, _build_vote, norms=("inf",),
               options={"recon_weight": 0.0}, applies=_needs_votes),
    AttackSpec("vote-da", "detection-aware vote attack (Gu et al. 2021): vote loss minus reconstruction distance",
               _lazy("attacks.vote", "VoteAttack"), _pgd_defaults, _build_vote, norms=("inf",),
               options={"recon_weight": RECON_WEIGHT, "detector_threshold": None}, applies=_needs_votes_and_decoder),
    AttackSpec("rbim", "reconstruction-aware BIM (Frosst et al. 2018): loss minus reconstruction distance",
               _lazy("attacks.rbim", "ReconstructionAwareBIM"), _bim_defaults, _build_rbim, norms=("inf",),
               random_start_allowed=False, options={"recon_weight": RECON_WEIGHT, "detector_threshold": None},
               applies=_needs_decoder),
    AttackSpec("autoattack", "standard AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square-5000",
               _ENSEMBLE, _autoattack_defaults, _build_autoattack, options={"queries": SQUARE_QUERIES},
               adapts_step=True),
    AttackSpec("autoattack-fast", "AutoAttack's gradient members only: APGD-CE, then APGD-T (9 targets)",
               _ENSEMBLE, _autoattack_defaults, _build_autoattack, adapts_step=True),
    AttackSpec("transfer", "black-box transfer: crafted on a source model with a white-box attack, tested here",
               _lazy("attacks.transfer", "TransferAttack"), _transfer_defaults, _build_transfer,
               options={"base": TRANSFER_BASE, "source": None}, white_box=False),
)}


def _check_options(spec: AttackSpec, options: dict | None) -> dict:
    given = dict(options or {})
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) or "none"
        raise ConfigError(f"{spec.name} does not take {', '.join(unknown)} (its options: {takes}). "
                          f"Received: options={given!r}")
    resolved = {**spec.options, **{k: v for k, v in given.items() if v is not None}}
    weight = resolved.get("recon_weight")
    if weight is not None and (not _is_number(weight) or not math.isfinite(weight) or weight < 0):
        raise ConfigError(f"recon_weight must be a finite number >= 0. Received: recon_weight={weight!r}")
    threshold = resolved.get("detector_threshold")
    if threshold is not None and (not _is_number(threshold) or not math.isfinite(threshold) or threshold < 0):
        raise ConfigError(f"detector_threshold must be a finite number >= 0. Received: "
                          f"detector_threshold={threshold!r}")
    queries = resolved.get("queries")
    if queries is not None and (isinstance(queries, bool) or not isinstance(queries, (int, np.integer))
                                or queries < 1):
        raise ConfigError(f"queries must be an integer >= 1. Received: queries={queries!r}")
    base = resolved.get("base")
    if "base" in spec.options and (base not in ATTACKS or not ATTACKS[base].white_box):
        known = ", ".join(name for name, s in ATTACKS.items() if s.white_box)
        raise ConfigError(f"a transfer attack crafts with one of {known}. Received: base={base!r}")
    return resolved


def get_attack_spec(method: str) -> AttackSpec:
    """The spec of `method`; a `ConfigError` listing the known methods if there is none."""
    if method not in ATTACKS:
        raise ConfigError(f"unknown attack method; known methods: {', '.join(ATTACKS)}. Received: method={method!r}")
    return ATTACKS[method]


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _check_eps_and_norm(eps, norm: str) -> float:
    if norm not in NORMS:
        raise ConfigError(f"unknown norm; known norms: {', '.join(NORMS)}. Received: norm={norm!r}")
    upper = NORMS[norm][1]
    if not _is_number(eps) or not math.isfinite(eps) or eps < 0 or (upper is not None and eps > upper):
        bound = f"in [0, {upper:g}]" if upper is not None else "finite and >= 0"
        raise ConfigError(f"eps must be a number {bound} for norm={norm!r} (pixel scale [0, 1]). Received: eps={eps!r}")
    return float(eps)


def attack_defaults(method: str, eps: float, norm: str = "inf", options: dict | None = None) -> dict:
    """The published step size, step count and random start of `method` at `eps`, as `make_attack` resolves them.

    Args:
        method: a name in `ATTACKS`.
        eps: the radius of the eps-ball on the [0, 1] pixel scale.
        norm: `"inf"` or `"2"`.
        options: the method's own options (a transfer attack's defaults are its `base` method's).

    Returns:
        `{"step_size": float, "steps": int, "random_start": bool}`.

    Raises:
        ConfigError: unknown method or norm, or eps out of range.
    """
    spec = get_attack_spec(method)
    return spec.defaults(_check_eps_and_norm(eps, norm), norm, _check_options(spec, options))


def resolve_params(method: str, eps: float, *, step_size: float | None = None, steps: int | None = None,
                   norm: str = "inf", targeted: bool = False, random_start: bool | None = None,
                   batch_size: int = 128, seed: int | None = None, options: dict | None = None,
                   restarts: int | None = None) -> AttackParams:
    """Checks the arguments of `make_attack` and fills the unset ones from `attack_defaults`.

    Raises:
        ConfigError: any argument out of range, named in a one-line message that echoes it.
    """
    spec = get_attack_spec(method)
    eps = _check_eps_and_norm(eps, norm)
    if norm not in spec.norms:
        raise ConfigError(f"{method} runs under the {', '.join(spec.norms)} norm only. Received: norm={norm!r}")
    options = _check_options(spec, options)
    defaults = spec.defaults(eps, norm, options)
    if step_size is not None and (not _is_number(step_size) or not math.isfinite(step_size) or step_size <= 0):
        raise ConfigError(f"step_size must be a finite number > 0. Received: step_size={step_size!r}")
    if steps is not None and (not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1):
        raise ConfigError(f"steps must be an integer >= 1. Received: steps={steps!r}")
    if spec.single_step and (steps not in (None, 1) or step_size not in (None, eps)):
        raise ConfigError(f"{method} takes one step of size eps; use bim or pgd for other steps. "
                          f"Received: steps={steps!r}, step_size={step_size!r}")
    if random_start and not spec.random_start_allowed:
        raise ConfigError(f"{method} never starts at random (with a random start it is pgd). "
                          f"Received: random_start={random_start!r}")
    if restarts is not None and (isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer))
                                 or restarts < 1):
        raise ConfigError(f"restarts must be an integer >= 1 (1: a single run). Received: restarts={restarts!r}")
    start = bool(defaults["random_start"] if random_start is None else random_start)
    if restarts is not None and restarts > 1 and not start:
        raise ConfigError(f"restarts need a random start (without one every restart repeats the first); {method} "
                          f"has none. Received: restarts={restarts!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1. Received: batch_size={batch_size!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ConfigError(f"seed must be an integer >= 0 or None. Received: seed={seed!r}")
    return AttackParams(
        method=method, eps=eps, norm=norm,
        step_size=float(defaults["step_size"] if step_size is None else step_size),
        steps=int(defaults["steps"] if steps is None else steps),
        random_start=start, targeted=bool(targeted), batch_size=int(batch_size),
        seed=None if seed is None else int(seed), options=options,
        restarts=1 if not start else int(defaults["restarts"] if restarts is None else restarts))


def validate_inputs(x) -> np.ndarray:
    """Refuses images an attack cannot be trusted on.

    Args:
        x: images `(num_images, height, width, channels)`.

    Returns:
        `x` as a float32 numpy array.

    Raises:
        ConfigError: NaN or infinite pixels, or pixels outside [0, 1] (e.g. images on the 0-255 scale).
    """
    images = np.asarray(x, dtype=np.float32)
    bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
    if bad:
        raise ConfigError(f"attack inputs contain {bad} NaN or infinite pixels. Received: x of shape {images.shape}")
    if images.size and (images.min() < 0 or images.max() > 1):
        raise ConfigError("attack inputs must lie in [0, 1] (the classifier's clip values). "
                          f"Received: x in [{images.min():g}, {images.max():g}]")
    return images


def params_record(params: AttackParams) -> dict:
    """`params` as one flat dict: its fields, with the method's options beside them."""
    record = asdict(params)
    options = record.pop("options")
    return {**record, **options}


def make_attack(method: str, classifier, eps: float, *, step_size: float | None = None, steps: int | None = None,
                norm: str = "inf", targeted: bool = False, random_start: bool | None = None, batch_size: int = 128,
                seed: int | None = None, options: dict | None = None, restarts: int | None = None) -> EvasionAttack:
    """Builds a named ART evasion attack against `classifier` with every parameter set explicitly.

    Args:
        method: a name in `ATTACKS`: `"fgsm"`, `"bim"`, `"pgd"`, `"pgd100"`, `"vote"`, `"vote-da"`, `"rbim"`,
            `"autoattack"`, `"autoattack-fast"` or `"transfer"`.
        classifier: an ART classifier with loss gradients, e.g. `capsrobust.art_bridge.to_art_classifier(model)`.
        eps: the radius of the eps-ball on the [0, 1] pixel scale: in [0, 1] for L-inf, finite and >= 0 for L2.
        step_size: the size of each step; None for the method's published default (`attack_defaults`).
        steps: the number of steps; None for the default. FGSM takes exactly one step of size eps. Each of
            `step_size` and `steps` left None keeps its own default, so with BIM's 1/255 step a short run cannot reach
            a large eps (`steps=5` moves at most 5/255): set both, e.g. `step_size=2.5 * eps / steps`.
        norm: `"inf"` (default) or `"2"`.
        targeted: move towards target labels given to `generate` instead of away from the true ones.
        random_start: start from a uniform random point in the eps-ball; None for the default (PGD only).
        batch_size: images per attack batch.
        seed: seeds the random starts (and Square's draws), making the attack deterministic; None: fresh entropy.
        options: the method's own parameters (`ATTACKS[method].options`): `recon_weight` (rbim, vote-da),
            `queries` (autoattack's Square), `base` and `source` (transfer: the white-box method it crafts with on
            `classifier`, which is then the *source* model's, and the source's name for the record).

        restarts: runs from new random starts, each on the images the earlier ones left; None for the default
            (5 for pgd100, else 1). Needs a random start.

    Returns:
        An ART `EvasionAttack`; `record()` gives its parameters and, after `generate`, `last_run` (which loss,
        restart or member fooled how many images).

    Raises:
        ConfigError: unknown method or norm, eps out of range, step_size <= 0 or non-finite, steps < 1, or a
            parameter the method does not take.
    """
    params = resolve_params(method, eps, step_size=step_size, steps=steps, norm=norm, targeted=targeted,
                            random_start=random_start, batch_size=batch_size, seed=seed, options=options,
                            restarts=restarts)
    spec = ATTACKS[method]
    reason = spec.applies(getattr(classifier, "source_model", None)) if hasattr(classifier, "source_model") else None
    if reason:
        raise ConfigError(f"{method} does not apply: {reason}")
    built = spec.build(classifier, params)
    return built
