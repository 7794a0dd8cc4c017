"""What a sweep measures: one `Cell` per (model, attack, eps), the schema that JSON, CSV and tables all read; per
cell its per-image `Outcome`, from which the cell's figures are computed; each model's `CleanPass`; and the
`SweepResult` that holds them with the worst case, verdicts, trust checks and figures' data."""

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from capsrobust.detection import reconstruction_distances
from capsrobust.models.base import SCORES
from capsrobust.models.predict import predict_batched
from capsrobust.sweep.plan import ModelUnderTest, SweepConfig


@dataclass
class Cell:
    """One model under one attack at one eps. Rates are over the attacked images (those the model classified
    correctly), accuracies over all images; `None` where nothing was measured (no image attacked, no detector).

    Attributes:
        model_id, model, family: the store id, registry name and family of the attacked model.
        attack: the row's name: the method, or `transfer(<source>)`.
        method: the registered attack method.
        white_box: crafted with the attacked model's own gradients (not a transfer).
        eps, norm, targeted: the threat model.
        loss: the sweep's `--loss`; `attack_loss` what the attack climbed (`ce+dlr` for the default chain).
        attack_step_size, attack_steps, attack_random_start, attack_restarts, attack_options: the attack's
            resolved parameters.
        images, attacked: images evaluated, and of those the ones attacked (classified correctly when clean).
        clean_accuracy, adversarial_accuracy: over `images`, each with its 95% Wilson interval (`*_ci`).
        attack_success_rate: share of attacked images misclassified (or, targeted, sent to the target).
        *_ci: the 95% interval of the figure it follows (Wilson for accuracies and rates, bootstrap for the AUROC),
            None where there is no trial.
        linf_mean, linf_max, l2_mean, l2_max: perturbation sizes of the attacked images.
        unperturbed_share: attacked images the attack never moved (a zero gradient; a trust check reads it).
        loss_clean, loss_adversarial: mean attack loss before and after, on the sweep's classifier loss.
        members_run: which loss of a chain, restart or AutoAttack member fooled how many images.
        attack_members: an ensemble's members with their budgets.
        detector_threshold, detector_fpr, detection_rate, auroc, undetected_success_rate: reconstruction-error
            detection (models with a decoder); `auroc_ci` a 95% bootstrap interval of the AUROC.
        transfer_source, whitebox_accuracy, source_accuracy: a transfer attack's source, the target's white-box
            accuracy under the same base attack, and the source's accuracy on the images crafted on it.
        seconds: wall time of the cell.
    """

    model_id: str
    model: str
    family: str
    attack: str
    method: str
    white_box: bool
    eps: float
    norm: str
    targeted: bool
    loss: str
    attack_loss: str
    attack_step_size: float
    attack_steps: int
    attack_random_start: bool
    attack_restarts: int
    attack_options: dict
    images: int
    attacked: int
    clean_accuracy: float
    clean_accuracy_ci: tuple[float, float]
    adversarial_accuracy: float
    adversarial_accuracy_ci: tuple[float, float]
    attack_success_rate: float | None
    attack_success_rate_ci: tuple[float, float] | None
    linf_mean: float | None
    linf_max: float
    l2_mean: float | None
    l2_max: float
    unperturbed_share: float | None
    loss_clean: float | None = None
    loss_adversarial: float | None = None
    members_run: dict | None = None
    attack_members: list | None = None
    detector_threshold: float | None = None
    detector_fpr: float | None = None
    detector_fpr_ci: tuple[float, float] | None = None
    detection_rate: float | None = None
    detection_rate_ci: tuple[float, float] | None = None
    auroc: float | None = None
    auroc_ci: tuple[float, float] | None = None
    undetected_success_rate: float | None = None
    undetected_success_rate_ci: tuple[float, float] | None = None
    transfer_source: str | None = None
    whitebox_accuracy: float | None = None
    source_accuracy: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Cell":
        """A cell from its `to_dict` form (a saved `sweep.json`); unknown keys are an error, not ignored."""
        intervals = {key: None if values.get(key) is None else tuple(values[key]) for key in INTERVALS}
        return cls(**{**values, **intervals})

    def csv_row(self) -> dict:
        """The CSV columns (`CSV_COLUMNS`): the flat fields, each interval split into its two ends."""
        values = self.to_dict()
        for name in INTERVALS:
            values[f"{name}_low"], values[f"{name}_high"] = values.pop(name) or (None, None)
        return {column: values[column] for column in CSV_COLUMNS}


INTERVALS = [f.name for f in fields(Cell) if f.name.endswith("_ci")]
# The flat fields, each interval as two columns beside its figure; the nested ones (options, member counts) are
# JSON's.
CSV_COLUMNS = [column for f in fields(Cell) if f.name not in ("attack_options", "members_run", "attack_members")
               for column in ((f"{f.name}_low", f"{f.name}_high") if f.name in INTERVALS else (f.name,))]


@dataclass
class CleanPass:
    """A model's clean pass over the sweep's images, shared by all its cells.

    Attributes:
        correct: `(n,)` bool, classified correctly: the images that get attacked.
        distances: `(n,)` reconstruction distances (DARCCC), or None without a detector.
        images: `(n, h, w, c)` test images and `labels` `(n,)` integers; None in a merged record.
        outputs: the model's outputs on them (`"scores"` `(n, num_classes)`, and `"reconstruction"` if any); None in
            a merged record.
    """

    correct: np.ndarray
    distances: np.ndarray | None
    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    outputs: dict | None = None

    @classmethod
    def of(cls, mut: ModelUnderTest, images: np.ndarray, labels: np.ndarray, batch_size: int) -> "CleanPass":
        outputs = predict_batched(mut.model, images, batch_size)
        distances = reconstruction_distances(mut.model, images, batch_size) if mut.detector is not None else None
        return cls(outputs[SCORES].argmax(-1) == labels, distances, images, labels, outputs)

    @property
    def attacked(self) -> tuple[np.ndarray, np.ndarray]:
        """The images attacked and their labels, `(m, h, w, c)` and `(m,)`."""
        return self.images[self.correct], self.labels[self.correct]


# The per-image fields of an `Outcome` over the attacked images, saved with every finished cell.
PER_IMAGE = ("robust", "success", "linf", "l2", "loss_clean", "loss_adversarial", "distance", "fooled_by",
             "source_correct")


@dataclass
class Outcome:
    """Per attacked image, what a cell found: the record its figures are computed from (`figures`), saved beside the
    report so that a stopped sweep can resume and shards can be merged.

    Attributes (`m` attacked images, in the order of the evaluated images):
        robust: `(m,)` bool, still classified correctly after the attack.
        success: `(m,)` bool, the attack did what it aimed at (misclassified, or sent to the target).
        linf, l2: `(m,)` perturbation sizes.
        loss_clean, loss_adversarial: `(m,)` the attack loss before and after, or None where not measured.
        distance: `(m,)` reconstruction distances of the attacked images, or None without a detector.
        fooled_by: `(m,)` int, which part of the attack fooled the image (`Cell.members_run`'s members in order),
            -1 for none or not recorded.
        source_correct: `(m,)` bool, a transfer attack's source classifies its own crafted image correctly; None
            for white-box cells.
        adversarial, example: the attack's images and a few for the figures (this run only, never saved).
    """

    robust: np.ndarray
    success: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    loss_clean: np.ndarray | None = None
    loss_adversarial: np.ndarray | None = None
    distance: np.ndarray | None = None
    fooled_by: np.ndarray | None = None
    source_correct: np.ndarray | None = None
    adversarial: np.ndarray | None = None
    example: dict | None = None

    def survived(self, clean: CleanPass) -> np.ndarray:
        """`(n,)` over all evaluated images: classified correctly clean and after the attack."""
        survived = clean.correct.copy()
        survived[clean.correct] = self.robust
        return survived

    def undetected(self, threshold: float | None) -> np.ndarray | None:
        """`(m,)`: a success the detector (distance above `threshold` flags) missed; None without a detector."""
        return None if threshold is None or self.distance is None else self.success & (self.distance <= threshold)

    def arrays(self) -> dict[str, np.ndarray]:
        """The saved fields, those measured."""
        return {name: getattr(self, name) for name in PER_IMAGE if getattr(self, name) is not None}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Outcome":
        return cls(**{name: arrays[name] for name in PER_IMAGE if name in arrays})

    @classmethod
    def concatenate(cls, parts: list["Outcome"]) -> "Outcome":
        """The outcomes of disjoint slices of the images, in slice order, as one."""
        arrays = [part.arrays() for part in parts]
        names = [name for name in PER_IMAGE if all(name in a for a in arrays)]
        return cls(**{name: np.concatenate([a[name] for a in arrays]) for name in names})


@dataclass
class SweepResult:
    """Everything a sweep measured.

    Attributes:
        config: what ran.
        cells: one `Cell` per (model, attack, eps), per source for transfer.
        worst_case: per (model, eps), the per-image worst case over every attack (`metrics.worst_case`).
        verdicts: per pair of models and eps, worst-case accuracies and McNemar's exact test.
        checks: trust checks, each `{"check", "model_id", "passed", "detail", "hint"}`.
        noise: per (model, eps), accuracy under random noise of the attack's size.
        skipped: attacks that did not apply to a model, with the reason.
        examples: per (model id, attack, eps), a few clean and adversarial images for the figures.
        roc: per (model id, attack, eps), clean and adversarial reconstruction distances.
        survivors: per (model id, attack, eps), which attacked images survived (the gap checks pair attacks on
            the same images).
        outcomes: per (model id, attack, eps), the cell's per-image `Outcome`.
        clean: per model id, its `CleanPass` (saved: which images it classified correctly, their distances).
        noise_correct: per model id and eps, `(n,)` classified correctly under random noise.
        seconds: wall time of the sweep.
    """

    config: SweepConfig
    cells: list[Cell] = field(default_factory=list)
    worst_case: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    noise: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    examples: dict = field(default_factory=dict)
    roc: dict = field(default_factory=dict)
    survivors: dict = field(default_factory=dict)
    outcomes: dict = field(default_factory=dict)
    clean: dict = field(default_factory=dict)
    noise_correct: dict = field(default_factory=dict)
    seconds: float = 0.0

    def cell(self, model_id: str, attack: str, eps: float) -> Cell | None:
        """The cell of `attack` on `model_id` at `eps`, or None."""
        return next((c for c in self.cells if c.model_id == model_id and c.attack == attack and c.eps == eps), None)
