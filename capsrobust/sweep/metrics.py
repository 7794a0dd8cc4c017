"""What a sweep computes from the attacks' outputs: each cell's figures, the per-image worst case, the paired
verdicts between models, and the random-noise baseline.

Each model is attacked only on the test images it classifies correctly (attacking a mistake measures nothing);
adversarial accuracy is reported over all images, so it is directly comparable with clean accuracy.
"""

from dataclasses import dataclass, field

import numpy as np

from attacks import AttackParams
from attacks.iterative import l2_norms
from capsrobust.detection import auroc, auroc_interval, reconstruction_distances
from capsrobust.models.base import RECONSTRUCTION, SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.stats import mcnemar_exact, outcome_bits, wilson_interval
from capsrobust.sweep.plan import ModelUnderTest, Step, SweepConfig
from capsrobust.sweep.results import Cell, CleanPass, Outcome


@dataclass
class Attempt:
    """What one attack did to the attacked images of one cell.

    Attributes:
        params: the attack's resolved parameters.
        targets: `(m,)` the labels the attack aimed away from (or, targeted, at).
        adversarial: `(m, h, w, c)` its output.
        record: the attack's `record()` (empty where nothing ran: eps 0 or no image).
        fooled_by: `(m,)` which part of the attack (`record["last_run"]["members"]`, in order) fooled each image,
            -1 for none.
        losses: `(m,)` attack losses before and after, or None where not measured (nothing ran, transfer).
    """

    params: AttackParams
    targets: np.ndarray
    adversarial: np.ndarray
    record: dict = field(default_factory=dict)
    fooled_by: np.ndarray | None = None
    losses: tuple[np.ndarray, np.ndarray] | None = None


def measure(step: Step, eps: float, config: SweepConfig, clean: CleanPass, attempt: Attempt) -> tuple[Cell, Outcome]:
    """The cell's per-image outcome from the attack's output, and its figures."""
    mut = step.model
    x, y = clean.attacked
    x_adv, targets = attempt.adversarial, attempt.targets
    adversarial = predict_batched(mut.model, x_adv, config.batch_size)
    adv_pred = adversarial[SCORES].argmax(-1) if len(x) else np.empty(0, dtype=int)
    delta = (x_adv - x).reshape(len(x), int(np.prod(x.shape[1:])))  # -1 is ambiguous when no image is attacked
    outcome = Outcome(
        robust=adv_pred == y, success=adv_pred == targets if config.targeted else adv_pred != y,
        linf=np.abs(delta).max(axis=1, initial=0.0), l2=np.sqrt((delta ** 2).sum(axis=1)),
        loss_clean=None if attempt.losses is None else np.asarray(attempt.losses[0], dtype=float),
        loss_adversarial=None if attempt.losses is None else np.asarray(attempt.losses[1], dtype=float),
        distance=(reconstruction_distances(mut.model, x_adv, config.batch_size) if len(x) else np.empty(0))
        if mut.detector is not None else None,
        fooled_by=attempt.fooled_by, adversarial=x_adv,
        example=_example(config, clean, attempt, adv_pred, adversarial))
    p = attempt.params
    cell = Cell(
        model_id=mut.id, model=mut.name, family=mut.family,
        attack=step.attack,
        method=step.method, white_box=step.source is None, eps=eps, norm=config.norm, targeted=config.targeted,
        loss=config.loss, attack_loss=attempt.record.get("loss", config.loss),
        attack_step_size=p.step_size, attack_steps=p.steps, attack_random_start=p.random_start,
        attack_restarts=p.restarts, attack_options=p.options, members_run=attempt.record.get("last_run"),
        attack_members=attempt.record.get("members"),
        **figures(outcome, clean, None if mut.detector is None else mut.detector.threshold))
    return cell, outcome


def figures(outcome: Outcome, clean: CleanPass, threshold: float | None) -> dict:
    """A cell's figures (`Cell` fields) from its per-image outcome and the model's clean pass: the one place they
    are computed, for a cell just run and for one merged from shards alike. Every accuracy and rate has its 95%
    Wilson interval (`*_ci`), the AUROC a bootstrap interval."""
    n, attacked = len(clean.correct), len(outcome.robust)
    robust = int(outcome.robust.sum())  # a clean mistake is never attacked and never robust
    values = dict(
        images=n, attacked=attacked,
        clean_accuracy=float(clean.correct.mean()) if n else float("nan"),
        clean_accuracy_ci=wilson_interval(int(clean.correct.sum()), n),
        adversarial_accuracy=robust / n if n else float("nan"),
        adversarial_accuracy_ci=wilson_interval(robust, n),
        **_rate("attack_success_rate", outcome.success),
        linf_mean=_mean(outcome.linf), linf_max=float(outcome.linf.max(initial=0.0)),
        l2_mean=_mean(outcome.l2), l2_max=float(outcome.l2.max(initial=0.0)),
        # Attacked images the attack never moved (a zero gradient) and the attack loss before and after: trust-check
        # inputs.
        unperturbed_share=_mean(outcome.linf == 0),
        loss_clean=None if outcome.loss_clean is None else _mean(outcome.loss_clean),
        loss_adversarial=None if outcome.loss_adversarial is None else _mean(outcome.loss_adversarial),
        source_accuracy=None if outcome.source_correct is None or not n
        else float(outcome.source_correct.sum() / n))
    if threshold is not None and outcome.distance is not None:
        flagged = outcome.distance > threshold
        successful = outcome.distance[outcome.success]
        values.update(detector_threshold=threshold, **_rate("detector_fpr", clean.distances > threshold),
                      **_rate("detection_rate", flagged[outcome.success]),
                      auroc=auroc(clean.distances, successful), auroc_ci=auroc_interval(clean.distances, successful),
                      **_rate("undetected_success_rate", outcome.undetected(threshold)))
    return values


def _rate(name: str, events: np.ndarray) -> dict:
    """`{name: share of events, name_ci: its Wilson interval}`, None for both without any trial."""
    return {name: _mean(events), f"{name}_ci": wilson_interval(int(np.sum(events)), len(events))}


def roc_data(outcome: Outcome, clean: CleanPass) -> tuple[np.ndarray, np.ndarray] | None:
    """Clean distances and the successful adversarial images' distances, for the ROC curve; None without them."""
    if outcome.distance is None or clean.distances is None:
        return None
    return clean.distances, outcome.distance[outcome.success]


def _example(config: SweepConfig, clean: CleanPass, attempt: Attempt, adv_pred: np.ndarray,
             adversarial: dict) -> dict:
    x, y = clean.attacked
    k = min(config.examples, len(x))
    example = {"clean": x[:k], "adversarial": attempt.adversarial[:k], "label": y[:k],
               "target": attempt.targets[:k], "clean_prediction": clean.outputs[SCORES][clean.correct].argmax(-1)[:k],
               "adversarial_prediction": adv_pred[:k]}
    if RECONSTRUCTION in adversarial:
        example["clean_reconstruction"] = clean.outputs[RECONSTRUCTION][clean.correct][:k]
        example["adversarial_reconstruction"] = adversarial[RECONSTRUCTION][:k]
    return example


def add_transfer_columns(cell: Cell, whitebox: Cell | None, source: ModelUnderTest, outcome: Outcome,
                         labels: np.ndarray, batch_size: int) -> None:
    """The target's white-box accuracy under the base attack (`whitebox`, its cell in the same sweep) and the
    source's accuracy on the images crafted on it (over all images like the target's, so the numbers share a
    denominator), beside the transfer accuracy.

    Args:
        labels: `(m,)` the labels of the attacked images.
    """
    cell.transfer_source = source.id
    cell.whitebox_accuracy = None if whitebox is None else whitebox.adversarial_accuracy
    predictions = predict_batched(source.model, outcome.adversarial, batch_size)[SCORES].argmax(-1) \
        if len(outcome.adversarial) else np.empty(0, dtype=int)
    outcome.source_correct = predictions == labels
    cell.source_accuracy = float(outcome.source_correct.sum() / cell.images) if cell.images else None


def worst_case(mut: ModelUnderTest, cells: list[Cell], survived: dict, undetected: dict) -> list[dict]:
    """Per eps, the per-image worst case over every attack on `mut`: an image counts as robust only if it is
    classified correctly clean and under every attack (lower than or equal to the smallest single-attack accuracy,
    also reported), and the share of attacked images some attack turned into an undetected success.

    Args:
        survived: eps -> `(n,)` bool, survived every attack so far.
        undetected: eps -> `(m,)` bool, an undetected success of some attack.
    """
    rows = []
    for eps, robust in survived.items():
        own = [c for c in cells if c.model_id == mut.id and c.eps == eps]
        if not own:
            continue
        strongest = min(own, key=lambda c: c.adversarial_accuracy)
        rows.append({"model_id": mut.id, "model": mut.name, "eps": eps, "attacks": [c.attack for c in own],
                     "worst_case_accuracy": float(robust.mean()),
                     "worst_case_accuracy_ci": wilson_interval(int(robust.sum()), len(robust)),
                     # Per evaluated image, 1 where it survived every attack: what a verdict between two separate
                     # runs on the same images needs (`capsrobust.stats.mcnemar_exact`).
                     "survived": outcome_bits(robust),
                     "strongest_attack": strongest.attack, "strongest_accuracy": strongest.adversarial_accuracy,
                     "undetected_success_any": (_mean(undetected[eps]) if mut.detector is not None else None)})
    return rows


def verdicts(models: list[ModelUnderTest], robust: dict) -> list[dict]:
    """Each pair of models at each eps, on the same images: worst-case accuracies and McNemar's exact test.

    An image counts for a model when it survived every attack on it (clean mistakes count against it too), so the
    test compares the figures the worst-case table reports.

    Args:
        robust: model id -> eps -> `(n,)` bool, survived every attack.
    """
    rows = []
    for i, first in enumerate(models):
        for second in models[i + 1:]:
            for eps in robust[first.id].keys() & robust[second.id].keys():
                a, b = robust[first.id][eps], robust[second.id][eps]
                only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
                rows.append({"eps": eps, "first": first.id, "second": second.id, "images": int(len(a)),
                             "first_accuracy": float(a.mean()), "second_accuracy": float(b.mean()),
                             "only_first_robust": only_a, "only_second_robust": only_b,
                             "p_value": mcnemar_exact(only_a, only_b)})
    return sorted(rows, key=lambda v: (v["eps"], v["first"], v["second"]))


def noise(images: np.ndarray, eps: float, norm: str, rngs: list[np.random.Generator]) -> np.ndarray:
    """Random noise of the attack's size, one generator per image: uniform in [-eps, eps] per pixel (L-inf), or a
    uniform direction of L2 length eps (L2), clipped to [0, 1]."""
    if norm == "inf":
        drawn = np.stack([rng.uniform(-eps, eps, size=images.shape[1:]) for rng in rngs])
    else:
        drawn = np.stack([rng.standard_normal(images.shape[1:]) for rng in rngs])
        drawn *= eps / l2_norms(drawn)
    return np.clip(images + drawn, 0, 1).astype("float32")


def noise_correct(mut: ModelUnderTest, config: SweepConfig, images: np.ndarray, labels: np.ndarray,
                  first_index: int = 0) -> dict[float, np.ndarray]:
    """Per eps of the sweep, `(n,)`: classified correctly under random noise of that size (`noise`).

    Image `i` draws its noise from its own generator, seeded by the sweep's seed and its index among all the test
    images (`first_index + i`), so a shard of the images sees exactly the noise the whole run would.
    """
    correct = {}
    for e, eps in enumerate(config.eps_values):
        rngs = [np.random.default_rng([config.seed, e, first_index + i]) for i in range(len(images))]
        noisy = noise(images, eps, config.norm, rngs) if len(images) else images
        correct[eps] = predict_batched(mut.model, noisy, config.batch_size)[SCORES].argmax(-1) == labels
    return correct


def noise_rows(model_id: str, correct: dict[float, np.ndarray]) -> list[dict]:
    """The noise baseline of one model, a row per eps, from `noise_correct`."""
    return [{"model_id": model_id, "eps": eps, "noise_accuracy": _mean(c)} for eps, c in correct.items()]


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None
