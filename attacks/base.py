"""What every attack shares: its parameters (`AttackParams`), input checks, what it requires of a model, and the
base class that owns the record, the seeding and the label handling.

Attack modules import this module and `attacks.iterative`, never the registry (`attacks.registry`), which imports
them: the dependencies run one way.
"""

from dataclasses import asdict, dataclass, field

import numpy as np
from art.attacks import EvasionAttack

from capsrobust.errors import ConfigError

# Norm name -> (ART's norm, the largest meaningful eps on [0, 1] images; None: only finite and non-negative).
NORMS: dict[str, tuple[float, float | None]] = {"inf": (np.inf, 1.0), "2": (2, None)}

# What an attack may require of a model, and why it cannot run without it. Models say what they provide
# (`CapsrobustModel.provides`); `unmet_requirement` is the one place the two are compared.
REQUIREMENTS: dict[str, str] = {
    "votes": "has no capsule votes: the attack applies to capsule models (capsnet, em-capsnet, efficient-capsnet), "
             "not to CNNs",
    "decoder": "has no reconstruction decoder, so there is no reconstruction error to keep low",
}


@dataclass(frozen=True)
class AttackParams:
    """Every parameter of one configured attack, as a report records it.

    Attributes:
        method: a registered attack name (`attacks.list_attacks()`).
        eps: the radius of the norm ball around each image, on the [0, 1] pixel scale.
        norm: `"inf"` or `"2"`.
        step_size: the size of each step (ART's `eps_step`).
        steps: the number of steps (ART's `max_iter`; 1 for FGSM).
        random_start: whether the first step starts from a uniform random point in the eps-ball.
        targeted: whether the attack moves towards given target labels instead of away from the true ones.
        batch_size: images per attack batch.
        seed: the seed of every random draw of the attack (starts, targets, Square's squares), or None.
        options: the method's own parameters (`AttackSpec.options`), e.g. R-BIM's `detector_penalty`; empty for FGSM,
            BIM and PGD.
        restarts: runs from new random starts, each on the images the earlier ones left (1: a single run).
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


def params_record(params: AttackParams) -> dict:
    """`params` as one flat dict: its fields, with the method's options beside them."""
    record = asdict(params)
    options = record.pop("options")
    return {**record, **options}


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


def unmet_requirement(requires, model) -> str | None:
    """Why a model that lacks one of `requires` (names in `REQUIREMENTS`) cannot be attacked, or None if it can.

    The model's own `provides` says what it has; the message names the model by its registry name.
    """
    missing = [need for need in requires if need not in model.provides]
    if not missing:
        return None
    return " and ".join(f"{model.registry_name} {REQUIREMENTS[need]}" for need in missing)


class Attack(EvasionAttack):
    """An ART `EvasionAttack` configured by `AttackParams`: the record, seeding and label handling every attack here
    shares.

    Subclasses implement `generate` and may add to `record()`; they call `one_hot_labels` for `y` and `rng` for
    every random draw, so one seed reproduces a run.

    Attributes:
        params: the attack's `AttackParams`.
        last_run: after `generate`, what the attack's parts did (which loss, restart or member fooled how many
            images); empty before.
        fooled_by: after `generate`, `(num_images,)` int: per image, which part (`last_run["members"]`, in order)
            fooled it, -1 for none; None where the attack does not say.
        earlier_seconds: after a `generate` that continued saved progress (`resumable`), the wall time the stopped
            run had spent; 0 otherwise.
    """

    attack_params = EvasionAttack.attack_params
    _estimator_requirements = ()
    loss_description = "loss"  # what the record says the attack climbed; subclasses name theirs
    # Whether `generate` takes `progress_file`: it saves its state there as it goes, and a run stopped half-way and
    # started again on the same inputs continues from the last state saved.
    resumable = False

    def __init__(self, classifier, params: AttackParams):
        super().__init__(estimator=classifier)
        self.params = params
        self.targeted = params.targeted
        self.last_run: dict = {}
        self.fooled_by: np.ndarray | None = None
        self.earlier_seconds = 0.0

    def one_hot_labels(self, images: np.ndarray, y) -> np.ndarray:
        """`y` as one-hot float32 `(num_images, num_classes)`.

        Args:
            images: the images `y` labels, `(num_images, h, w, c)`.
            y: true labels (untargeted; None: the model's predictions) or target labels (targeted, required), as
                integers `(num_images,)` or one-hot `(num_images, num_classes)`.
        """
        if y is None:
            if self.targeted:
                raise ConfigError("a targeted attack needs target labels. Received: y=None")
            y = self.estimator.predict(images).argmax(axis=1)
        labels = np.asarray(y)
        return labels.astype(np.float32) if labels.ndim == 2 else \
            np.eye(self.estimator.nb_classes, dtype=np.float32)[labels]

    def rng(self, *keys: int) -> np.random.Generator:
        """A generator for one part of a run (a loss, a restart, a member), seeded by the attack's seed and `keys`,
        so a part's draws do not depend on what earlier parts consumed; fresh entropy when the seed is None."""
        return np.random.default_rng(None if self.params.seed is None else [self.params.seed, *keys])

    def record(self) -> dict:
        """The attack's parameters for a report, with what it climbed, its class and, after a run, `last_run`."""
        return {**params_record(self.params), "loss": self.loss_description, "art_class": type(self).__name__,
                **({"last_run": self.last_run} if self.last_run else {})}
