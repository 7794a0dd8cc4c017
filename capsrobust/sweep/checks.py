"""Trust checks: signs that an attack failed, after Carlini et al. (2019, "On evaluating adversarial robustness")
and Pintor et al. (NeurIPS 2022, "Indicators of attack failure"), each with the hint a user needs.

Each check is `{"check", "model_id", "passed", "detail", "hint"}`. Capsule robustness claims are notorious for
gradient masking, so failures are loud in every report.
"""

import numpy as np

from attacks import create_attack, get_attack_spec
from capsrobust.models.base import SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.stats import mcnemar_exact
from capsrobust.sweep.plan import ModelUnderTest, SweepConfig
from capsrobust.sweep.results import Cell, SweepResult

# A 1-point accuracy wobble is noise on a few hundred images, not a failed check.
TOLERANCE = 0.01
NEAR_ZERO = 0.05
EPS_ONE_IMAGES = 100
EPS_ONE_CHECK = "unbounded attack wins"  # the one check a sweep runs on the model itself, not on its outcomes
UNPERTURBED = 0.01  # share of attacked images an attack may leave exactly where they were
LAST_RESTART = 0.01  # share of attacked images the last restart may still fool
FAR_WEAKER, SIGNIFICANCE = 0.05, 0.05  # an attack this much weaker than the strongest, on McNemar's exact test


def eps_one_check(mut: ModelUnderTest, classifier, config: SweepConfig, x: np.ndarray, y: np.ndarray) -> dict:
    """At eps = 1 any image can become any other: an attack that cannot win there is not reaching the model."""
    x, y = x[:EPS_ONE_IMAGES], y[:EPS_ONE_IMAGES]
    attack = create_attack("pgd", classifier, 1.0, step_size=0.1, steps=20, norm="inf", random_start=True,
                           batch_size=config.batch_size, seed=config.seed)
    x_adv = attack.generate(x=x, y=np.eye(mut.model.num_classes, dtype="float32")[y]) if len(x) else x
    accuracy = float((predict_batched(mut.model, x_adv, config.batch_size)[SCORES].argmax(-1) == y).mean()) \
        if len(x) else 0.0
    return _check(EPS_ONE_CHECK, mut.id, accuracy <= NEAR_ZERO,
                  f"PGD-20 (step 0.1) at eps=1 leaves {accuracy:.1%} of {len(x)} images correct (want <= "
                  f"{NEAR_ZERO:.0%})", "gradient masking or a broken attack: the gradients do not reach the input")


def _check(name: str, model_id: str, passed: bool, detail: str, hint: str) -> dict:
    return {"check": name, "model_id": model_id, "passed": bool(passed), "detail": detail,
            "hint": "" if passed else hint}


def sweep_checks(result: SweepResult) -> list[dict]:
    """Checks after Carlini et al. (2019): iterative >= single-step, monotone in eps, stronger than noise, and
    white-box stronger than black-box transfer (Athalye et al. 2018: a transfer attack that beats the white-box one
    means the target's gradients are masked).

    Attacks that trade success for stealth (a reconstruction penalty: rbim, vote-da) are left out of the
    iterative >= single-step comparison; transfer attacks out of the white-box comparisons.
    """
    checks = []
    cells = result.cells
    accuracy = {(c.model_id, c.attack, c.eps): c.adversarial_accuracy for c in cells}
    white_box = {c.attack for c in cells if c.white_box}
    stealthy = {c.attack for c in cells if c.attack_options.get("detector_penalty")}
    model_ids = list(dict.fromkeys(c.model_id for c in cells))
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
        for method in dict.fromkeys(c.attack for c in cells):
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
            if cell.model_id != model_id or cell.white_box or cell.whitebox_accuracy is None:
                continue
            base = cell.attack_options["base"]
            checks.append(_check("white-box >= transfer", model_id,
                                 cell.whitebox_accuracy <= cell.adversarial_accuracy + TOLERANCE,
                                 f"{base} {cell.whitebox_accuracy:.3f} white-box vs {cell.attack} "
                                 f"{cell.adversarial_accuracy:.3f} at eps={cell.eps:g}",
                                 "images crafted on another model fool this one more often than its own gradients "
                                 "do: gradient masking (Athalye et al. 2018)"))
        checks.extend(attack_failure_checks(result, model_id))
    return checks


def attack_failure_checks(result: SweepResult, model_id: str) -> list[dict]:
    """Indicators of attack failure after Pintor et al. (NeurIPS 2022) and Carlini et al. (2019), per cell."""
    checks = []
    cells = [c for c in result.cells if c.model_id == model_id and c.eps > 0 and c.attacked]
    for cell in cells:
        where = f"{cell.attack} at eps={cell.eps:g}"
        if not cell.white_box:
            continue
        share = cell.unperturbed_share
        if share is not None:
            checks.append(_check("attacked images moved", model_id, share <= UNPERTURBED,
                                 f"{where}: {share:.1%} of {cell.attacked} attacked images unperturbed",
                                 "the attack loss has a zero gradient there (the margin loss is flat beyond its "
                                 "margins): attack with --loss auto (cross-entropy, then DLR)"))
        if cell.loss_clean is not None:
            rises = cell.loss_adversarial > cell.loss_clean if not cell.targeted else \
                cell.loss_adversarial < cell.loss_clean
            checks.append(_check("attack loss moves the right way", model_id, rises,
                                 f"{where}: mean attack loss {cell.loss_clean:.4g} clean, "
                                 f"{cell.loss_adversarial:.4g} attacked",
                                 "the attack did not raise its loss: a broken or masked gradient, or a step too "
                                 "small"))
        run = cell.members_run or {}
        restarts = run.get("restarts") or []
        if len(restarts) > 1:
            last = restarts[-1] / cell.attacked
            checks.append(_check("restarts exhausted", model_id, last <= LAST_RESTART,
                                 f"{where}: fooled per restart {restarts}",
                                 "the last restart still found new adversarial examples: run more (--restarts)"))
        square = (run.get("members") or {}).get("square")
        if square is not None and square["ran"]:
            share = square["fooled"] / cell.attacked
            checks.append(_check("black-box adds little to white-box", model_id, share <= LAST_RESTART,
                                 f"{where}: Square fooled {square['fooled']} images the gradient members left",
                                 "a gradient-free attack beat the gradient attacks: gradient masking"))
    for method_few, method_many in (("pgd", "pgd100"),):
        for few in (c for c in cells if c.attack == method_few):
            many = next((c for c in cells if c.attack == method_many and c.eps == few.eps), None)
            if many is not None:
                checks.append(_check("more steps never weaker", model_id,
                                     many.adversarial_accuracy <= few.adversarial_accuracy + TOLERANCE,
                                     f"{method_many} {many.adversarial_accuracy:.3f} vs {method_few} "
                                     f"{few.adversarial_accuracy:.3f} at eps={few.eps:g}",
                                     "more iterations made the attack weaker: it is not converging"))
    checks.extend(_gap_checks(result, model_id, cells))
    return checks


def _gap_checks(result: SweepResult, model_id: str, cells: list[Cell]) -> list[dict]:
    """Each iterative white-box attack against the strongest one at the same eps, on the same images.

    Single-step FGSM (weaker by design), attacks that trade success for stealth and transfer are left out; a gap
    counts when it exceeds `FAR_WEAKER` and McNemar's exact test on the images the two disagree on rejects chance.
    """
    checks = []
    for eps in sorted({c.eps for c in cells}):
        here = [c for c in cells if c.eps == eps and c.white_box]
        if len(here) < 2:
            continue
        strongest = min(here, key=lambda c: c.adversarial_accuracy)
        strong = result.survivors[(model_id, strongest.attack, eps)]
        for cell in here:
            spec = get_attack_spec(cell.method)
            if cell is strongest or spec.single_step or cell.attack_options.get("detector_penalty"):
                continue
            weak = result.survivors[(model_id, cell.attack, eps)]
            only_weak_fooled, only_strong_fooled = int(np.sum(~weak & strong)), int(np.sum(weak & ~strong))
            gap = cell.adversarial_accuracy - strongest.adversarial_accuracy
            p = mcnemar_exact(only_weak_fooled, only_strong_fooled)
            checks.append(_check("close to the strongest attack", model_id,
                                 gap <= FAR_WEAKER or p >= SIGNIFICANCE,
                                 f"{cell.attack} {cell.adversarial_accuracy:.3f} vs {strongest.attack} "
                                 f"{strongest.adversarial_accuracy:.3f} at eps={eps:g} (gap {gap:.1%}, "
                                 f"McNemar p = {p:.2g})",
                                 f"this attack overstates robustness; report {strongest.attack} or the worst case"))
    return checks
