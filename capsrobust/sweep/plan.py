"""What a sweep runs: its configuration, the models under test, and the (model, attack, source) steps that apply."""

from dataclasses import asdict, dataclass
from typing import NamedTuple

from attacks import get_attack_spec
from capsrobust.detection import ReconstructionDetector
from capsrobust.errors import ConfigError
from capsrobust.store import model_name_of


@dataclass(frozen=True)
class SweepConfig:
    """What to run. `None` step size, steps, random start and restarts take each attack's rule."""

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
    detector_penalty: float | None = None
    queries: int | None = None
    transfer_base: str = "pgd"
    skip_inapplicable: bool = False


def config_dict(config: SweepConfig) -> dict:
    return asdict(config)


@dataclass
class ModelUnderTest:
    """A stored model ready to attack.

    Attributes:
        id: its store id.
        name: its registry name.
        family: `"capsule"` or `"cnn"`.
        model: the built `CapsrobustModel` with its weights.
        card: its store card.
        detector: its reconstruction-error detector, if it has a decoder.
    """

    id: str
    name: str
    family: str
    model: object
    card: dict
    detector: ReconstructionDetector | None = None


class Step(NamedTuple):
    """One row of the plan: attack `model` with `method` (a transfer attack crafting on `source`) at every eps."""

    model: ModelUnderTest
    method: str
    source: ModelUnderTest | None = None

    @property
    def attack(self) -> str:
        """The name of its cells: the method, or `transfer(<source>)`."""
        return self.method if self.source is None else f"transfer({model_name_of(self.source.id)})"


def plan_steps(models: list[ModelUnderTest], config: SweepConfig, sources: list[ModelUnderTest],
               skipped: list[dict]) -> list[Step]:
    """The steps of a sweep, in order: each model, each method; transfer once per eligible source.

    Steps that do not apply (a vote attack on a CNN, a transfer attack with no other model) raise, or with
    `config.skip_inapplicable` are appended to `skipped` with the reason.

    Raises:
        ConfigError: an attack that does not apply, unless `config.skip_inapplicable`.
    """
    steps = [Step(mut, method, source) for mut in models for method in methods_to_run(config)
             for source in (_sources_for(mut, sources) if method == "transfer" else [None])]
    return [step for step in steps if _applies(step, config, skipped)]


def methods_to_run(config: SweepConfig) -> tuple[str, ...]:
    """The methods to run: a transfer attack's base method runs white-box too, just before it (side by side)."""
    methods = list(dict.fromkeys(config.methods))
    if "transfer" in methods and config.transfer_base not in methods:
        methods.insert(methods.index("transfer"), config.transfer_base)
    return tuple(methods)


def _sources_for(mut: ModelUnderTest, sources: list[ModelUnderTest]) -> list:
    eligible = [s for s in sources if s.id != mut.id and s.model.image_shape == mut.model.image_shape]
    return eligible or [None]  # None: no source, reported by _applies


def _applies(step: Step, config: SweepConfig, skipped: list[dict]) -> bool:
    if step.method == "transfer" and step.source is None:
        reason = f"{step.model.name} has no source model other than itself (give one with --source)"
    else:
        reason = get_attack_spec(step.method).unmet(step.model.model)
    if not reason:
        return True
    if not config.skip_inapplicable:
        raise ConfigError(f"{step.method} does not apply: {reason}")
    skipped.append({"model_id": step.model.id, "attack": step.method, "reason": reason})
    return False


def attack_options(step: Step, config: SweepConfig) -> dict:
    """The method's own options for this step: the sweep's where it sets them, else the method's defaults."""
    mut, source = step.model, step.source
    wanted = {"detector_penalty": config.detector_penalty, "queries": config.queries, "base": config.transfer_base,
              "source": None if source is None else source.id,
              "detector_threshold": None if mut.detector is None else mut.detector.threshold}
    defaults = get_attack_spec(step.method).options
    return {key: defaults[key] if wanted[key] is None else wanted[key] for key in defaults}


def attack_arguments(step: Step, eps: float, config: SweepConfig) -> dict:
    """The keyword arguments of `attacks.create_attack` (and `resolve_params`) for this step at `eps`."""
    options = attack_options(step, config)
    settings = get_attack_spec(step.method).settings(eps, config.norm, options, step_size=config.step_size,
                                                     steps=config.steps, random_start=config.random_start,
                                                     restarts=config.restarts)
    return {"norm": config.norm, "targeted": config.targeted, "batch_size": config.batch_size, "seed": config.seed,
            "options": options, **settings}
