"""Robustness sweeps: models x attacks x eps, with reconstruction-error detection and trust checks.

Each model is attacked only on the test images it classifies correctly (attacking a mistake measures nothing);
adversarial accuracy is reported over all images, so it is directly comparable with clean accuracy.
"""

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from attacks import attack_defaults, get_attack_spec, make_attack, validate_inputs
from capsrobust.art_bridge import to_art_classifier
from capsrobust.detection import ReconstructionDetector, auroc, reconstruction_distances
from capsrobust.models.base import RECONSTRUCTION, SCORES
from capsrobust.models.predict import predict_batched

# Trust-check tolerances: a 1-point accuracy wobble is noise on a few hundred images, not a failed check.
TOLERANCE = 0.01
NEAR_ZERO = 0.05
EPS_ONE_IMAGES = 100


@dataclass(frozen=True)
class SweepConfig:
    """What to run. `None` step size, steps and random start take each attack's literature default."""

    methods: tuple[str, ...]
    eps_values: tuple[float, ...]
    loss: str = "model"
    norm: str = "inf"
    step_size: float | None = None
    steps: int | None = None
    random_start: bool | None = None
    targeted: bool = False
    batch_size: int = 128
    seed: int = 0
    trust_checks: bool = True
    examples: int = 8


@dataclass
class ModelUnderTest:
    """A stored model ready to attack: its store id, registry name and family, card and (if any) detector."""

    id: str
    name: str
    family: str
    model: object
    card: dict
    detector: ReconstructionDetector | None = None


@dataclass
class SweepResult:
    config: SweepConfig
    cells: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    examples: dict = field(default_factory=dict)
    roc: dict = field(default_factory=dict)
    noise: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def run_sweep(models: list[ModelUnderTest], config: SweepConfig, images: np.ndarray, labels: np.ndarray,
              progress=None) -> SweepResult:
    """Attacks every model with every method at every eps.

    Args:
        models: the models, each with its detector if it has a decoder.
        config: methods, eps values and attack settings.
        images: `(num_images, height, width, channels)` test images in [0, 1].
        labels: `(num_images,)` integer labels.
        progress: a `rich.progress.Progress` to advance, or None.

    Returns:
        A `SweepResult` with one cell per (model, method, eps), trust checks, image examples and ROC data.
    """
    validate_inputs(images)
    started = time.perf_counter()
    result = SweepResult(config)
    task = progress.add_task("sweep", total=len(models) * len(config.methods) * len(config.eps_values)) \
        if progress is not None else None
    for mut in models:
        clean = predict_batched(mut.model, images, config.batch_size)
        correct = clean[SCORES].argmax(-1) == labels
        clean_distances = reconstruction_distances(mut.model, images, config.batch_size) \
            if mut.detector is not None else None
        classifier = to_art_classifier(mut.model, loss=config.loss, batch_size=config.batch_size)
        for method in config.methods:
            for eps in config.eps_values:
                cell, example, roc = _attack_cell(mut, classifier, method, eps, config, images, labels, correct,
                                                  clean, clean_distances)
                result.cells.append(cell)
                result.examples[(mut.id, method, eps)] = example
                if roc is not None:
                    result.roc[(mut.id, method, eps)] = roc
                if progress is not None:
                    progress.advance(task)
        if config.trust_checks:
            result.noise.extend(_noise_accuracy(mut, config, images, labels))
            result.checks.append(_eps_one_check(mut, classifier, config, images[correct], labels[correct]))
    if config.trust_checks:
        result.checks = _sweep_checks(result) + result.checks
    result.seconds = time.perf_counter() - started
    return result


def _attack_cell(mut, classifier, method, eps, config, images, labels, correct, clean, clean_distances):
    started = time.perf_counter()
    x, y = images[correct], labels[correct]
    num_classes = mut.model.num_classes
    rng = np.random.default_rng(config.seed)
    targets = (y + rng.integers(1, num_classes, size=len(y))) % num_classes if config.targeted else y
    params = attack_defaults(method, eps, config.norm)
    # A sweep's step options apply to the attacks they mean something for: not to one-step FGSM, and no random
    # start for BIM (BIM with one is PGD).
    spec = get_attack_spec(method)
    overrides = {} if spec.single_step else {"step_size": config.step_size, "steps": config.steps}
    if not spec.single_step and config.steps and not config.step_size and eps > 0:
        # Fewer steps than the default at the default step size could not reach the budget: 2.5 eps / steps can.
        overrides["step_size"] = 2.5 * eps / config.steps
    if spec.random_start_allowed:
        overrides["random_start"] = config.random_start
    params.update({k: v for k, v in overrides.items() if v is not None})
    x_adv = x
    if len(x) and eps > 0:  # at eps = 0 the only admissible image is the original
        attack = make_attack(method, classifier, eps, step_size=params.get("step_size"), steps=params.get("steps"),
                             norm=config.norm, targeted=config.targeted, random_start=params.get("random_start"),
                             batch_size=config.batch_size, seed=config.seed)
        x_adv = attack.generate(x=x, y=np.eye(num_classes, dtype="float32")[targets]).astype("float32")
    adversarial = predict_batched(mut.model, x_adv, config.batch_size)
    adv_pred = adversarial[SCORES].argmax(-1) if len(x) else np.empty(0, dtype=int)
    success = adv_pred == targets if config.targeted else adv_pred != y
    delta = (x_adv - x).reshape(len(x), int(np.prod(x.shape[1:])))  # -1 is ambiguous when no image is attacked
    linf, l2 = np.abs(delta).max(axis=1, initial=0.0), np.sqrt((delta ** 2).sum(axis=1))
    n = len(images)
    cell = {
        "model_id": mut.id, "model": mut.name, "family": mut.family, "attack": method, "eps": eps,
        "norm": config.norm, "targeted": config.targeted, "loss": config.loss, **_prefixed(params),
        "images": n, "attacked": int(len(x)),
        "clean_accuracy": float(correct.mean()),
        "adversarial_accuracy": float((adv_pred == y).sum() / n) if n else float("nan"),
        "attack_success_rate": _mean(success),
        "linf_mean": _mean(linf), "linf_max": float(linf.max(initial=0.0)),
        "l2_mean": _mean(l2), "l2_max": float(l2.max(initial=0.0)),
        "detector_threshold": None, "detector_fpr": None, "detection_rate": None, "auroc": None,
        "undetected_success_rate": None,
    }
    roc = None
    if mut.detector is not None:
        adv_distances = reconstruction_distances(mut.model, x_adv, config.batch_size) if len(x) else np.empty(0)
        flagged = mut.detector.flags(adv_distances)
        cell.update(detector_threshold=mut.detector.threshold,
                    detector_fpr=_mean(mut.detector.flags(clean_distances)),
                    detection_rate=_mean(flagged[success]),
                    auroc=auroc(clean_distances, adv_distances[success]),
                    undetected_success_rate=_mean(success & ~flagged))
        roc = (clean_distances, adv_distances[success])
    cell["seconds"] = round(time.perf_counter() - started, 2)
    k = min(config.examples, len(x))
    example = {"clean": x[:k], "adversarial": x_adv[:k], "label": y[:k], "target": targets[:k],
               "clean_prediction": clean[SCORES][correct].argmax(-1)[:k], "adversarial_prediction": adv_pred[:k]}
    if RECONSTRUCTION in adversarial:
        example["clean_reconstruction"] = clean[RECONSTRUCTION][correct][:k]
        example["adversarial_reconstruction"] = adversarial[RECONSTRUCTION][:k]
    return cell, example, roc


def _prefixed(params: dict) -> dict:
    return {f"attack_{key}": value for key, value in params.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _noise_accuracy(mut, config, images, labels) -> list[dict]:
    """Accuracy under uniform random noise in [-eps, eps] (clipped to [0, 1]) at every eps of the sweep."""
    rng = np.random.default_rng(config.seed)
    rows = []
    for eps in config.eps_values:
        noisy = np.clip(images + rng.uniform(-eps, eps, size=images.shape), 0, 1).astype("float32")
        accuracy = float((predict_batched(mut.model, noisy, config.batch_size)[SCORES].argmax(-1) == labels).mean())
        rows.append({"model_id": mut.id, "eps": eps, "noise_accuracy": accuracy})
    return rows


def _eps_one_check(mut, classifier, config, x, y) -> dict:
    """At eps = 1 any image can become any other: an attack that cannot win there is not reaching the model."""
    x, y = x[:EPS_ONE_IMAGES], y[:EPS_ONE_IMAGES]
    attack = make_attack("pgd", classifier, 1.0, step_size=0.1, steps=20, norm="inf", random_start=True,
                         batch_size=config.batch_size, seed=config.seed)
    x_adv = attack.generate(x=x, y=np.eye(mut.model.num_classes, dtype="float32")[y]) if len(x) else x
    accuracy = float((predict_batched(mut.model, x_adv, config.batch_size)[SCORES].argmax(-1) == y).mean()) \
        if len(x) else 0.0
    return _check("unbounded attack wins", mut.id, accuracy <= NEAR_ZERO,
                  f"PGD-20 (step 0.1) at eps=1 leaves {accuracy:.1%} of {len(x)} images correct (want <= "
                  f"{NEAR_ZERO:.0%})", "gradient masking or a broken attack: the gradients do not reach the input")


def _check(name: str, model_id: str, passed: bool, detail: str, hint: str) -> dict:
    return {"check": name, "model_id": model_id, "passed": bool(passed), "detail": detail,
            "hint": "" if passed else hint}


def _sweep_checks(result: SweepResult) -> list[dict]:
    """Checks after Carlini et al. (2019): iterative >= single-step, monotone in eps, stronger than noise."""
    checks = []
    cells = result.cells
    accuracy = {(c["model_id"], c["attack"], c["eps"]): c["adversarial_accuracy"] for c in cells}
    model_ids = list(dict.fromkeys(c["model_id"] for c in cells))
    for model_id in model_ids:
        for (mid, method, eps), acc in sorted(accuracy.items(), key=lambda kv: kv[0][2]):
            if mid != model_id or method == "fgsm" or (mid, "fgsm", eps) not in accuracy:
                continue
            single = accuracy[(mid, "fgsm", eps)]
            checks.append(_check("iterative >= single-step", mid, acc <= single + TOLERANCE,
                                 f"{method} {acc:.3f} vs fgsm {single:.3f} at eps={eps:g}",
                                 "the iterative attack is weaker than one step: too few steps, too small a step, or "
                                 "gradient masking"))
        for method in dict.fromkeys(c["attack"] for c in cells):
            series = sorted((eps, acc) for (mid, m, eps), acc in accuracy.items() if mid == model_id and m == method)
            rises = [(a, b) for a, b in zip(series, series[1:]) if b[1] > a[1] + TOLERANCE]
            detail = ", ".join(f"{acc:.3f}@{eps:g}" for eps, acc in series)
            checks.append(_check("accuracy non-increasing in eps", model_id, not rises, f"{method}: {detail}",
                                 "a larger budget helped the model: the attack is not converging or is masked"))
        noise = {row["eps"]: row["noise_accuracy"] for row in result.noise if row["model_id"] == model_id}
        for (mid, method, eps), acc in accuracy.items():
            if mid == model_id and eps in noise and eps > 0:
                checks.append(_check("stronger than random noise", mid, acc <= noise[eps] + TOLERANCE,
                                     f"{method} {acc:.3f} vs uniform noise {noise[eps]:.3f} at eps={eps:g}",
                                     "random noise of the same size does better than the attack: gradient masking "
                                     "or a broken attack"))
    return checks


def config_dict(config: SweepConfig) -> dict:
    return asdict(config)
