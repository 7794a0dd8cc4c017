"""Robustness sweeps: models x attacks x eps, with reconstruction-error detection and trust checks.

Each model is attacked only on the test images it classifies correctly (attacking a mistake measures nothing);
adversarial accuracy is reported over all images, so it is directly comparable with clean accuracy.

Per model and eps the sweep also reports the worst case over every attack that ran: an image counts as robust only
if it is classified correctly clean and under *every* attack (per-image worst case, which is lower than or equal to
the smallest single-attack accuracy, also reported), and the share of attacked images that at least one attack
turned into an undetected success (misclassified and not flagged by the reconstruction detector).

A transfer attack (`transfer`) crafts on each source model given to `run_sweep` (never the target itself) and is
shown to the target; its cell carries the target's white-box accuracy under the same base attack (run in the same
sweep, added if not asked for) and the source's accuracy on its own images.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from attacks import attack_defaults, get_attack_spec, make_attack, validate_inputs
from attacks.iterative import l2_norms
from capsrobust.errors import ConfigError
from capsrobust.art_bridge import to_art_classifier
from capsrobust.detection import ReconstructionDetector, auroc, reconstruction_distances
from capsrobust.models.base import RECONSTRUCTION, SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.stats import mcnemar_exact, wilson_interval

# Trust-check tolerances: a 1-point accuracy wobble is noise on a few hundred images, not a failed check.
TOLERANCE = 0.01
NEAR_ZERO = 0.05
EPS_ONE_IMAGES = 100
UNPERTURBED = 0.01  # share of attacked images an attack may leave exactly where they were
LAST_RESTART = 0.01  # share of attacked images the last restart may still fool
FAR_WEAKER, SIGNIFICANCE = 0.05, 0.05  # an attack this much weaker than the strongest, on McNemar's exact test


@dataclass(frozen=True)
class SweepConfig:
    """What to run. `None` step size, steps and random start take each attack's literature default."""

    methods: tuple[str, ...]
    eps_values: tuple[float, ...]
    loss: str = "auto"
    norm: str = "inf"
    step_size: float | None = None
    steps: int | None = None
    random_start: bool | None = None
    restarts: int | None = None
    targeted: bool = False
    batch_size: int = 128
    seed: int = 0
    trust_checks: bool = True
    examples: int = 8
    recon_weight: float | None = None
    queries: int | None = None
    transfer_base: str = "pgd"
    skip_inapplicable: bool = False


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
    worst_case: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    verdicts: list[dict] = field(default_factory=list)
    # Per (model id, attack, eps): which attacked images survived (the trust checks test gaps on the same images).
    survivors: dict = field(default_factory=dict)


def run_sweep(models: list[ModelUnderTest], config: SweepConfig, images: np.ndarray, labels: np.ndarray,
              progress=None, sources: list[ModelUnderTest] | None = None,
              on_cell: Callable[[SweepResult], None] | None = None) -> SweepResult:
    """Attacks every model with every method at every eps.

    Args:
        models: the models, each with its detector if it has a decoder.
        config: methods, eps values and attack settings.
        images: `(num_images, height, width, channels)` test images in [0, 1].
        labels: `(num_images,)` integer labels.
        progress: a `rich.progress.Progress` to advance, or None.
        sources: the models transfer attacks craft on (each target is attacked from every source but itself).
        on_cell: called with the result so far after each finished cell (to save it: a long sweep that is stopped
            keeps what it measured).

    Returns:
        A `SweepResult` with one cell per (model, method, eps) (per source for transfer), the per-image worst case
        per (model, eps), trust checks, image examples and ROC data.

    Raises:
        ConfigError: an attack that does not apply to a model (a CNN has no votes, a model without a decoder has no
            reconstruction error), unless `config.skip_inapplicable`, which records it in `result.skipped`.
    """
    validate_inputs(images)
    started = time.perf_counter()
    result = SweepResult(config)
    methods = _with_transfer_base(config)
    sources = list(sources or [])
    plan = [(mut, method, source) for mut in models for method in methods
            for source in (_sources_for(mut, sources, config) if method == "transfer" else [None])]
    plan = [step for step in plan if _applies(step, config, result)]
    task = progress.add_task("sweep", total=len(plan) * len(config.eps_values)) if progress is not None else None
    source_classifiers = {s.id: to_art_classifier(s.model, loss=config.loss, batch_size=config.batch_size)
                          for s in sources}
    robust_per_model = {}
    for mut in models:
        clean = predict_batched(mut.model, images, config.batch_size)
        correct = clean[SCORES].argmax(-1) == labels
        clean_distances = reconstruction_distances(mut.model, images, config.batch_size) \
            if mut.detector is not None else None
        classifier = to_art_classifier(mut.model, loss=config.loss, batch_size=config.batch_size)
        survived = {eps: correct.copy() for eps in config.eps_values}
        undetected = {eps: np.zeros(int(correct.sum()), dtype=bool) for eps in config.eps_values}
        for _, method, source in (step for step in plan if step[0] is mut):
            for eps in config.eps_values:
                attacker = classifier if source is None else source_classifiers[source.id]
                cell, example, roc, per_image = _attack_cell(mut, attacker, method, eps, config, images, labels,
                                                             correct, clean, clean_distances, source)
                if source is not None:
                    _add_transfer_columns(cell, result.cells, source, per_image, config)
                result.cells.append(cell)
                result.survivors[(mut.id, cell["attack"], eps)] = per_image["survived"][correct]
                survived[eps] &= per_image["survived"]
                if per_image["undetected"] is not None:
                    undetected[eps] |= per_image["undetected"]
                result.examples[(mut.id, cell["attack"], eps)] = example
                if roc is not None:
                    result.roc[(mut.id, cell["attack"], eps)] = roc
                if on_cell is not None:
                    on_cell(result)
                if progress is not None:
                    progress.advance(task)
        result.worst_case.extend(_worst_case(mut, result.cells, survived, undetected, correct))
        robust_per_model[mut.id] = survived
        if config.trust_checks:
            result.noise.extend(_noise_accuracy(mut, config, images, labels))
            result.checks.append(_eps_one_check(mut, classifier, config, images[correct], labels[correct]))
    if config.trust_checks:
        result.checks = _sweep_checks(result) + result.checks
    result.verdicts = _verdicts(models, robust_per_model)
    result.seconds = time.perf_counter() - started
    return result


def _with_transfer_base(config: SweepConfig) -> tuple[str, ...]:
    """The methods to run: a transfer attack's base method runs white-box too, just before it (side by side)."""
    methods = list(dict.fromkeys(config.methods))
    if "transfer" in methods and config.transfer_base not in methods:
        methods.insert(methods.index("transfer"), config.transfer_base)
    return tuple(methods)


def _sources_for(mut: ModelUnderTest, sources: list[ModelUnderTest], config: SweepConfig) -> list:
    eligible = [s for s in sources if s.id != mut.id and s.model.image_shape == mut.model.image_shape]
    return eligible or [None]  # None: no source, reported by _applies


def _applies(step, config: SweepConfig, result: SweepResult) -> bool:
    mut, method, source = step
    if method == "transfer" and source is None:
        reason = "no source model other than the target itself (give one with --source)"
    else:
        reason = get_attack_spec(method).applies(mut.model)
    if not reason:
        return True
    if not config.skip_inapplicable:
        raise ConfigError(f"{method} does not apply to {mut.name}: {reason}")
    result.skipped.append({"model_id": mut.id, "attack": method, "reason": reason})
    return False


def _method_options(method: str, config: SweepConfig, source, mut: ModelUnderTest) -> dict:
    wanted = {"recon_weight": config.recon_weight, "queries": config.queries, "base": config.transfer_base,
              "source": None if source is None else source.id,
              "detector_threshold": None if mut.detector is None else mut.detector.threshold}
    defaults = get_attack_spec(method).options
    return {key: defaults[key] if wanted[key] is None else wanted[key] for key in defaults}


def _attack_cell(mut, classifier, method, eps, config, images, labels, correct, clean, clean_distances,
                 source=None):
    started = time.perf_counter()
    x, y = images[correct], labels[correct]
    num_classes = mut.model.num_classes
    rng = np.random.default_rng(config.seed)
    targets = (y + rng.integers(1, num_classes, size=len(y))) % num_classes if config.targeted else y
    options = _method_options(method, config, source, mut)
    params = attack_defaults(method, eps, config.norm, options)
    # A sweep's step options apply to the attacks they mean something for: not to one-step FGSM, and no random
    # start for BIM (BIM with one is PGD).
    spec = get_attack_spec(method)
    base_spec = get_attack_spec(options["base"]) if method == "transfer" else spec
    overrides = {} if base_spec.single_step else {"step_size": config.step_size, "steps": config.steps}
    if not base_spec.single_step and config.steps and not config.step_size and eps > 0 \
            and not base_spec.adapts_step:
        # Fewer steps than the default at the default step size could not reach the budget: 2.5 eps / steps can.
        overrides["step_size"] = 2.5 * eps / config.steps
    if base_spec.random_start_allowed:
        overrides["random_start"] = config.random_start
        if params.get("random_start") or config.random_start:
            overrides["restarts"] = config.restarts
    params.update({k: v for k, v in overrides.items() if v is not None})
    x_adv = x
    record, losses = {}, (np.empty(0), np.empty(0))
    if len(x) and eps > 0:  # at eps = 0 the only admissible image is the original
        attack = make_attack(method, classifier, eps, step_size=params.get("step_size"), steps=params.get("steps"),
                             norm=config.norm, targeted=config.targeted, random_start=params.get("random_start"),
                             batch_size=config.batch_size, seed=config.seed, options=options,
                             restarts=params.get("restarts"))
        x_adv = attack.generate(x=x, y=np.eye(num_classes, dtype="float32")[targets]).astype("float32")
        record = attack.record()
        losses = (classifier.compute_loss(x, targets), classifier.compute_loss(x_adv, targets))
    adversarial = predict_batched(mut.model, x_adv, config.batch_size)
    adv_pred = adversarial[SCORES].argmax(-1) if len(x) else np.empty(0, dtype=int)
    success = adv_pred == targets if config.targeted else adv_pred != y
    delta = (x_adv - x).reshape(len(x), int(np.prod(x.shape[1:])))  # -1 is ambiguous when no image is attacked
    linf, l2 = np.abs(delta).max(axis=1, initial=0.0), np.sqrt((delta ** 2).sum(axis=1))
    n = len(images)
    name = method if source is None else f"transfer({_short_id(source.id)})"
    cell = {
        "model_id": mut.id, "model": mut.name, "family": mut.family, "attack": name, "method": method,
        "white_box": spec.white_box, "eps": eps,
        "norm": config.norm, "targeted": config.targeted, "loss": config.loss, **_prefixed(params),
        "attack_options": options,
        "images": n, "attacked": int(len(x)),
        "clean_accuracy": float(correct.mean()),
        "clean_accuracy_ci": wilson_interval(int(correct.sum()), n),
        "adversarial_accuracy": float((adv_pred == y).sum() / n) if n else float("nan"),
        "adversarial_accuracy_ci": wilson_interval(int((adv_pred == y).sum()), n),
        "attack_success_rate": _mean(success),
        "linf_mean": _mean(linf), "linf_max": float(linf.max(initial=0.0)),
        "l2_mean": _mean(l2), "l2_max": float(l2.max(initial=0.0)),
        # Attacked images the attack never moved (a zero gradient) and the attack loss before and after (mean, on
        # the loss the sweep's classifier computes: cross-entropy for the default chain): trust-check inputs.
        "unperturbed_share": _mean(linf == 0),
        "loss_clean": _mean(losses[0]) if len(x) and eps > 0 else None,
        "loss_adversarial": _mean(losses[1]) if len(x) and eps > 0 else None,
        "detector_threshold": None, "detector_fpr": None, "detection_rate": None, "auroc": None,
        "undetected_success_rate": None, "transfer_source": None, "whitebox_accuracy": None, "source_accuracy": None,
    }
    cell["attack_loss"] = record.get("loss", config.loss)
    if "last_run" in record:
        cell["members_run"] = record["last_run"]
    if "members" in record:
        cell["attack_members"] = record["members"]
    roc, undetected = None, None
    if mut.detector is not None:
        adv_distances = reconstruction_distances(mut.model, x_adv, config.batch_size) if len(x) else np.empty(0)
        flagged = mut.detector.flags(adv_distances)
        undetected = success & ~flagged
        cell.update(detector_threshold=mut.detector.threshold,
                    detector_fpr=_mean(mut.detector.flags(clean_distances)),
                    detection_rate=_mean(flagged[success]),
                    auroc=auroc(clean_distances, adv_distances[success]),
                    undetected_success_rate=_mean(undetected))
        roc = (clean_distances, adv_distances[success])
    cell["seconds"] = round(time.perf_counter() - started, 2)
    k = min(config.examples, len(x))
    example = {"clean": x[:k], "adversarial": x_adv[:k], "label": y[:k], "target": targets[:k],
               "clean_prediction": clean[SCORES][correct].argmax(-1)[:k], "adversarial_prediction": adv_pred[:k]}
    if RECONSTRUCTION in adversarial:
        example["clean_reconstruction"] = clean[RECONSTRUCTION][correct][:k]
        example["adversarial_reconstruction"] = adversarial[RECONSTRUCTION][:k]
    survived = correct.copy()
    survived[correct] = adv_pred == y
    per_image = {"survived": survived, "undetected": undetected, "adversarial": x_adv, "labels": y}
    return cell, example, roc, per_image


def _short_id(model_id: str) -> str:
    from capsrobust.report import _short

    return _short(model_id)


def _add_transfer_columns(cell: dict, cells: list[dict], source: ModelUnderTest, per_image: dict,
                          config: SweepConfig) -> None:
    """The target's white-box accuracy under the base attack (its cell in this sweep) and the source's accuracy on
    the images crafted on it, beside the transfer accuracy."""
    base = cell["attack_options"]["base"]
    whitebox = next((c for c in cells if c["model_id"] == cell["model_id"] and c["attack"] == base
                     and c["eps"] == cell["eps"]), None)
    cell["transfer_source"] = source.id
    cell["whitebox_accuracy"] = None if whitebox is None else whitebox["adversarial_accuracy"]
    cell["source_accuracy"] = None
    if len(per_image["adversarial"]) and cell["images"]:
        # The source's accuracy on the images crafted on it (its white-box accuracy), over all images like the
        # target's, so the numbers share a denominator; only the images the target classified correctly were crafted.
        predictions = predict_batched(source.model, per_image["adversarial"], config.batch_size)[SCORES].argmax(-1)
        cell["source_accuracy"] = float(np.sum(predictions == per_image["labels"]) / cell["images"])


def _worst_case(mut: ModelUnderTest, cells: list[dict], survived: dict, undetected: dict,
                correct: np.ndarray) -> list[dict]:
    rows = []
    for eps, robust in survived.items():
        own = [c for c in cells if c["model_id"] == mut.id and c["eps"] == eps]
        if not own:
            continue
        strongest = min(own, key=lambda c: c["adversarial_accuracy"])
        rows.append({"model_id": mut.id, "model": mut.name, "eps": eps, "attacks": [c["attack"] for c in own],
                     "worst_case_accuracy": float(robust.mean()),
                     # Per evaluated image, 1 where it survived every attack: what a verdict between two separate
                     # runs on the same images needs (`capsrobust.stats.mcnemar_exact`).
                     "survived": "".join("1" if r else "0" for r in robust),
                     "worst_case_accuracy_ci": wilson_interval(int(robust.sum()), len(robust)),
                     "strongest_attack": strongest["attack"], "strongest_accuracy": strongest["adversarial_accuracy"],
                     "undetected_success_any": (_mean(undetected[eps]) if mut.detector is not None else None)})
    return rows


def _verdicts(models: list[ModelUnderTest], robust: dict) -> list[dict]:
    """Each pair of models at each eps, on the same images: worst-case accuracies and McNemar's exact test.

    An image counts for a model when it survived every attack on it (clean mistakes count against it too), so the
    test compares the figures the worst-case table reports.
    """
    verdicts = []
    for i, first in enumerate(models):
        for second in models[i + 1:]:
            for eps in robust[first.id].keys() & robust[second.id].keys():
                a, b = robust[first.id][eps], robust[second.id][eps]
                only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
                p = mcnemar_exact(only_a, only_b)
                verdicts.append({"eps": eps, "first": first.id, "second": second.id, "images": int(len(a)),
                                 "first_accuracy": float(a.mean()), "second_accuracy": float(b.mean()),
                                 "only_first_robust": only_a, "only_second_robust": only_b, "p_value": p})
    return sorted(verdicts, key=lambda v: (v["eps"], v["first"], v["second"]))


def _prefixed(params: dict) -> dict:
    return {f"attack_{key}": value for key, value in params.items()}


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _noise(images: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """Random noise of the attack's size: uniform in [-eps, eps] per pixel (L-inf), or a uniform direction of L2
    length eps (L2), clipped to [0, 1]."""
    if norm == "inf":
        noise = rng.uniform(-eps, eps, size=images.shape)
    else:
        noise = rng.standard_normal(images.shape)
        noise *= eps / l2_norms(noise)
    return np.clip(images + noise, 0, 1).astype("float32")


def _noise_accuracy(mut, config, images, labels) -> list[dict]:
    """Accuracy under random noise of each eps of the sweep (`_noise`)."""
    rng = np.random.default_rng(config.seed)
    rows = []
    for eps in config.eps_values:
        noisy = _noise(images, eps, config.norm, rng)
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
    """Checks after Carlini et al. (2019): iterative >= single-step, monotone in eps, stronger than noise, and
    white-box stronger than black-box transfer (Athalye et al. 2018: a transfer attack that beats the white-box one
    means the target's gradients are masked).

    Attacks that trade success for stealth (a reconstruction penalty: rbim, vote-da) are left out of the
    iterative >= single-step comparison; transfer attacks out of the white-box comparisons.
    """
    checks = []
    cells = result.cells
    accuracy = {(c["model_id"], c["attack"], c["eps"]): c["adversarial_accuracy"] for c in cells}
    white_box = {c["attack"] for c in cells if c.get("white_box", True)}
    stealthy = {c["attack"] for c in cells if (c.get("attack_options") or {}).get("recon_weight")}
    model_ids = list(dict.fromkeys(c["model_id"] for c in cells))
    for model_id in model_ids:
        for (mid, method, eps), acc in sorted(accuracy.items(), key=lambda kv: kv[0][2]):
            if mid != model_id or method == "fgsm" or (mid, "fgsm", eps) not in accuracy:
                continue
            if method not in white_box or method in stealthy:
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
            if mid == model_id and eps in noise and eps > 0 and method in white_box:
                checks.append(_check("stronger than random noise", mid, acc <= noise[eps] + TOLERANCE,
                                     f"{method} {acc:.3f} vs uniform noise {noise[eps]:.3f} at eps={eps:g}",
                                     "random noise of the same size does better than the attack: gradient masking "
                                     "or a broken attack"))
        for cell in cells:
            if cell["model_id"] != model_id or cell.get("white_box", True) or cell.get("whitebox_accuracy") is None:
                continue
            base = cell["attack_options"]["base"]
            checks.append(_check("white-box >= transfer", model_id,
                                 cell["whitebox_accuracy"] <= cell["adversarial_accuracy"] + TOLERANCE,
                                 f"{base} {cell['whitebox_accuracy']:.3f} white-box vs {cell['attack']} "
                                 f"{cell['adversarial_accuracy']:.3f} at eps={cell['eps']:g}",
                                 "images crafted on another model fool this one more often than its own gradients "
                                 "do: gradient masking (Athalye et al. 2018)"))
        checks.extend(_attack_failure_checks(result, model_id))
    return checks


def _attack_failure_checks(result: SweepResult, model_id: str) -> list[dict]:
    """Indicators of attack failure after Pintor et al. (NeurIPS 2022) and Carlini et al. (2019), per cell."""
    checks = []
    cells = [c for c in result.cells if c["model_id"] == model_id and c["eps"] > 0 and c["attacked"]]
    for cell in cells:
        where = f"{cell['attack']} at eps={cell['eps']:g}"
        if not cell.get("white_box", True):
            continue
        share = cell.get("unperturbed_share")
        if share is not None:
            checks.append(_check("attacked images moved", model_id, share <= UNPERTURBED,
                                 f"{where}: {share:.1%} of {cell['attacked']} attacked images unperturbed",
                                 "the attack loss has a zero gradient there (the margin loss is flat beyond its "
                                 "margins): attack with --loss auto (cross-entropy, then DLR)"))
        if cell.get("loss_clean") is not None:
            rises = cell["loss_adversarial"] > cell["loss_clean"] if not cell["targeted"] else \
                cell["loss_adversarial"] < cell["loss_clean"]
            checks.append(_check("attack loss moves the right way", model_id, rises,
                                 f"{where}: mean attack loss {cell['loss_clean']:.4g} clean, "
                                 f"{cell['loss_adversarial']:.4g} attacked",
                                 "the attack did not raise its loss: a broken or masked gradient, or a step too "
                                 "small"))
        run = cell.get("members_run") or {}
        restarts = run.get("restarts") or []
        if len(restarts) > 1:
            last = restarts[-1] / cell["attacked"]
            checks.append(_check("restarts exhausted", model_id, last <= LAST_RESTART,
                                 f"{where}: fooled per restart {restarts}",
                                 "the last restart still found new adversarial examples: run more (--restarts)"))
        square = (run.get("members") or {}).get("square")
        if square is not None and square["ran"]:
            share = square["fooled"] / cell["attacked"]
            checks.append(_check("black-box adds little to white-box", model_id, share <= LAST_RESTART,
                                 f"{where}: Square fooled {square['fooled']} images the gradient members left",
                                 "a gradient-free attack beat the gradient attacks: gradient masking"))
    for method_few, method_many in (("pgd", "pgd100"),):
        for few in (c for c in cells if c["attack"] == method_few):
            many = next((c for c in cells if c["attack"] == method_many and c["eps"] == few["eps"]), None)
            if many is not None:
                checks.append(_check("more steps never weaker", model_id,
                                     many["adversarial_accuracy"] <= few["adversarial_accuracy"] + TOLERANCE,
                                     f"{method_many} {many['adversarial_accuracy']:.3f} vs {method_few} "
                                     f"{few['adversarial_accuracy']:.3f} at eps={few['eps']:g}",
                                     "more iterations made the attack weaker: it is not converging"))
    checks.extend(_gap_checks(result, model_id, cells))
    return checks


def _gap_checks(result: SweepResult, model_id: str, cells: list[dict]) -> list[dict]:
    """Each iterative white-box attack against the strongest one at the same eps, on the same images.

    Single-step FGSM (weaker by design), attacks that trade success for stealth and transfer are left out; a gap
    counts when it exceeds `FAR_WEAKER` and McNemar's exact test on the images the two disagree on rejects chance.
    """
    checks = []
    for eps in sorted({c["eps"] for c in cells}):
        here = [c for c in cells if c["eps"] == eps and c.get("white_box", True)]
        if len(here) < 2:
            continue
        strongest = min(here, key=lambda c: c["adversarial_accuracy"])
        strong = result.survivors[(model_id, strongest["attack"], eps)]
        for cell in here:
            spec = get_attack_spec(cell["method"])
            if cell is strongest or spec.single_step or (cell.get("attack_options") or {}).get("recon_weight"):
                continue
            weak = result.survivors[(model_id, cell["attack"], eps)]
            only_weak_fooled, only_strong_fooled = int(np.sum(~weak & strong)), int(np.sum(weak & ~strong))
            gap = cell["adversarial_accuracy"] - strongest["adversarial_accuracy"]
            p = mcnemar_exact(only_weak_fooled, only_strong_fooled)
            checks.append(_check("close to the strongest attack", model_id,
                                 gap <= FAR_WEAKER or p >= SIGNIFICANCE,
                                 f"{cell['attack']} {cell['adversarial_accuracy']:.3f} vs {strongest['attack']} "
                                 f"{strongest['adversarial_accuracy']:.3f} at eps={eps:g} (gap {gap:.1%}, "
                                 f"McNemar p = {p:.2g})",
                                 f"this attack overstates robustness; report {strongest['attack']} or the worst case"))
    return checks


def config_dict(config: SweepConfig) -> dict:
    return asdict(config)
