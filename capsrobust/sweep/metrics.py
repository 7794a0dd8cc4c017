"""What a sweep computes from the attacks' outputs: each cell's figures, the per-image worst case, the paired
verdicts between models, and the random-noise baseline.

Each model is attacked only on the test images it classifies correctly (attacking a mistake measures nothing);
adversarial accuracy is reported over all images, so it is directly comparable with clean accuracy.
"""

from dataclasses import dataclass, field

import numpy as np

from attacks import AttackParams
from attacks.iterative import l2_norms
from capsrobust.detection import auroc, reconstruction_distances
from capsrobust.models.base import RECONSTRUCTION, SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.stats import mcnemar_exact, wilson_interval
from capsrobust.store import model_name_of
from capsrobust.sweep.plan import ModelUnderTest, Step, SweepConfig
from capsrobust.sweep.results import Cell


@dataclass
class CleanPass:
    """A model's clean pass over the sweep's images, shared by all its cells.

    Attributes:
        images: `(n, h, w, c)` test images; `labels` `(n,)` integers.
        outputs: the model's outputs on them (`"scores"` `(n, num_classes)`, and `"reconstruction"` if any).
        correct: `(n,)` bool, classified correctly: the images that get attacked.
        distances: `(n,)` reconstruction distances (DARCCC), or None without a detector.
    """

    images: np.ndarray
    labels: np.ndarray
    outputs: dict
    correct: np.ndarray
    distances: np.ndarray | None

    @classmethod
    def of(cls, mut: ModelUnderTest, images: np.ndarray, labels: np.ndarray, batch_size: int) -> "CleanPass":
        outputs = predict_batched(mut.model, images, batch_size)
        distances = reconstruction_distances(mut.model, images, batch_size) if mut.detector is not None else None
        return cls(images, labels, outputs, outputs[SCORES].argmax(-1) == labels, distances)

    @property
    def attacked(self) -> tuple[np.ndarray, np.ndarray]:
        """The images attacked and their labels, `(m, h, w, c)` and `(m,)`."""
        return self.images[self.correct], self.labels[self.correct]


@dataclass
class Attempt:
    """What one attack did to the attacked images of one cell.

    Attributes:
        params: the attack's resolved parameters.
        targets: `(m,)` the labels the attack aimed away from (or, targeted, at).
        adversarial: `(m, h, w, c)` its output.
        record: the attack's `record()` (empty where nothing ran: eps 0 or no image).
        losses: mean-able `(m,)` attack losses before and after, or None where nothing ran.
        seconds: wall time so far.
    """

    params: AttackParams
    targets: np.ndarray
    adversarial: np.ndarray
    record: dict = field(default_factory=dict)
    losses: tuple[np.ndarray, np.ndarray] | None = None
    seconds: float = 0.0


@dataclass
class Outcome:
    """Per attacked image, what a cell found, beside its `Cell`.

    Attributes:
        survived: `(n,)` over all images: classified correctly clean and after the attack.
        undetected: `(m,)` over the attacked images: a success the detector missed; None without a detector.
        adversarial: `(m, h, w, c)` the attack's output (a transfer cell's source reads it).
        example: a few clean and adversarial images, predictions and reconstructions, for the figures.
        roc: clean distances and the successful adversarial images' distances, or None without a detector.
    """

    survived: np.ndarray
    undetected: np.ndarray | None
    adversarial: np.ndarray
    example: dict
    roc: tuple[np.ndarray, np.ndarray] | None


def measure(step: Step, eps: float, config: SweepConfig, clean: CleanPass, attempt: Attempt) -> tuple[Cell, Outcome]:
    """The cell's figures and per-image outcome from the attack's output."""
    mut = step.model
    x, y = clean.attacked
    x_adv, targets = attempt.adversarial, attempt.targets
    adversarial = predict_batched(mut.model, x_adv, config.batch_size)
    adv_pred = adversarial[SCORES].argmax(-1) if len(x) else np.empty(0, dtype=int)
    success = adv_pred == targets if config.targeted else adv_pred != y
    delta = (x_adv - x).reshape(len(x), int(np.prod(x.shape[1:])))  # -1 is ambiguous when no image is attacked
    linf, l2 = np.abs(delta).max(axis=1, initial=0.0), np.sqrt((delta ** 2).sum(axis=1))
    n = len(clean.images)
    robust = int((adv_pred == y).sum())
    p = attempt.params
    cell = Cell(
        model_id=mut.id, model=mut.name, family=mut.family,
        attack=step.method if step.source is None else f"transfer({model_name_of(step.source.id)})",
        method=step.method, white_box=step.source is None, eps=eps, norm=config.norm, targeted=config.targeted,
        loss=config.loss, attack_loss=attempt.record.get("loss", config.loss),
        attack_step_size=p.step_size, attack_steps=p.steps, attack_random_start=p.random_start,
        attack_restarts=p.restarts, attack_options=p.options, images=n, attacked=int(len(x)),
        clean_accuracy=float(clean.correct.mean()),
        clean_accuracy_ci=wilson_interval(int(clean.correct.sum()), n),
        adversarial_accuracy=robust / n if n else float("nan"),
        adversarial_accuracy_ci=wilson_interval(robust, n),
        attack_success_rate=_mean(success),
        linf_mean=_mean(linf), linf_max=float(linf.max(initial=0.0)),
        l2_mean=_mean(l2), l2_max=float(l2.max(initial=0.0)),
        unperturbed_share=_mean(linf == 0),
        loss_clean=None if attempt.losses is None else _mean(attempt.losses[0]),
        loss_adversarial=None if attempt.losses is None else _mean(attempt.losses[1]),
        members_run=attempt.record.get("last_run"), attack_members=attempt.record.get("members"))
    roc, undetected = None, None
    if mut.detector is not None:
        adv_distances = reconstruction_distances(mut.model, x_adv, config.batch_size) if len(x) else np.empty(0)
        flagged = mut.detector.flags(adv_distances)
        undetected = success & ~flagged
        cell.detector_threshold = mut.detector.threshold
        cell.detector_fpr = _mean(mut.detector.flags(clean.distances))
        cell.detection_rate = _mean(flagged[success])
        cell.auroc = auroc(clean.distances, adv_distances[success])
        cell.undetected_success_rate = _mean(undetected)
        roc = (clean.distances, adv_distances[success])
    survived = clean.correct.copy()
    survived[clean.correct] = adv_pred == y
    return cell, Outcome(survived, undetected, x_adv, _example(config, clean, attempt, adv_pred, adversarial), roc)


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
    source's accuracy on the images crafted on it, beside the transfer accuracy.

    Args:
        labels: `(m,)` the labels of the attacked images.
    """
    cell.transfer_source = source.id
    cell.whitebox_accuracy = None if whitebox is None else whitebox.adversarial_accuracy
    if len(outcome.adversarial) and cell.images:
        # Over all images like the target's, so the numbers share a denominator; only the images the target
        # classified correctly were crafted.
        predictions = predict_batched(source.model, outcome.adversarial, batch_size)[SCORES].argmax(-1)
        cell.source_accuracy = float(np.sum(predictions == labels) / cell.images)


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
                     "survived": "".join("1" if r else "0" for r in robust),
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


def noise(images: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """Random noise of the attack's size: uniform in [-eps, eps] per pixel (L-inf), or a uniform direction of L2
    length eps (L2), clipped to [0, 1]."""
    if norm == "inf":
        drawn = rng.uniform(-eps, eps, size=images.shape)
    else:
        drawn = rng.standard_normal(images.shape)
        drawn *= eps / l2_norms(drawn)
    return np.clip(images + drawn, 0, 1).astype("float32")


def noise_accuracy(mut: ModelUnderTest, config: SweepConfig, images: np.ndarray, labels: np.ndarray) -> list[dict]:
    """Accuracy under random noise (`noise`) of each eps of the sweep."""
    rng = np.random.default_rng(config.seed)
    rows = []
    for eps in config.eps_values:
        noisy = noise(images, eps, config.norm, rng)
        accuracy = float((predict_batched(mut.model, noisy, config.batch_size)[SCORES].argmax(-1) == labels).mean())
        rows.append({"model_id": mut.id, "eps": eps, "noise_accuracy": accuracy})
    return rows


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None
