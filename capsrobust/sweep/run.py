"""Running a sweep: models x attacks x eps, with reconstruction-error detection and trust checks.

Per model and eps the sweep also reports the worst case over every attack that ran (`metrics.worst_case`), and for
each pair of models a paired verdict (`metrics.verdicts`). A transfer attack crafts on each source model given to
`run_sweep` (never the target itself) and is shown to the target; its cell carries the target's white-box accuracy
under the same base attack (run in the same sweep, added if not asked for) and the source's accuracy on its own
images.
"""

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from attacks import create_attack, resolve_params, validate_inputs
from capsrobust.art_bridge import BatchedBridge, to_art_classifier
from capsrobust.errors import ConfigError
from capsrobust.sweep import checks, metrics
from capsrobust.sweep.metrics import Attempt
from capsrobust.sweep.plan import ModelUnderTest, Step, SweepConfig, attack_arguments, plan_steps
from capsrobust.sweep.results import Cell, CleanPass, Outcome, SweepResult


def run_sweep(models: list[ModelUnderTest], config: SweepConfig, images: np.ndarray, labels: np.ndarray,
              progress=None, sources: list[ModelUnderTest] | None = None,
              on_cell: Callable[[SweepResult], None] | None = None, previous: SweepResult | None = None,
              first_index: int = 0, work_dir: Path | None = None) -> SweepResult:
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
        previous: the record of a stopped run of the same sweep on the same images (`records.read_record`): its
            finished cells are kept, with their per-image outcomes, instead of run again.
        first_index: the index of `images[0]` among all the test images (a shard's offset), which seeds the
            per-image noise baseline.
        work_dir: where an attack that can (`Attack.resumable`: AutoAttack) keeps its progress inside a cell, so
            that a sweep stopped in the middle of a long cell and run again with `previous` continues that cell
            from its last finished part; removed once the cell is recorded (after `on_cell`). None: not kept.

    Returns:
        A `SweepResult` with one cell per (model, method, eps) (per source for transfer), the per-image worst case
        per (model, eps), the verdicts, trust checks, image examples and ROC data.

    Raises:
        ConfigError: an attack that does not apply to a model (a CNN has no votes, a model without a decoder has no
            reconstruction error), unless `config.skip_inapplicable`, which records it in `result.skipped`.
    """
    validate_inputs(images)
    started = time.perf_counter()
    result = SweepResult(config)
    sources = list(sources or [])
    plan = plan_steps(models, config, sources, result.skipped)
    task = progress.add_task("sweep", total=len(plan) * len(config.eps_values)) if progress is not None else None
    source_classifiers = {s.id: to_art_classifier(s.model, loss=config.loss, batch_size=config.batch_size)
                          for s in sources}
    for mut in models:
        clean = CleanPass.of(mut, images, labels, config.batch_size)
        if previous is not None and mut.id in previous.clean \
                and not np.array_equal(previous.clean[mut.id].correct, clean.correct):
            raise ConfigError(f"the stopped sweep was run on other images or another {mut.name}: its clean "
                              f"predictions differ from this run's")
        result.clean[mut.id] = clean
        classifier = to_art_classifier(mut.model, loss=config.loss, batch_size=config.batch_size)
        for step in (step for step in plan if step.model is mut):
            attacker = classifier if step.source is None else source_classifiers[step.source.id]
            for eps in config.eps_values:
                done = None if previous is None else previous.cell(mut.id, step.attack, eps)
                progress_file = None if work_dir is None or done is not None \
                    else Path(work_dir) / _progress_name(step, eps)
                if done is not None:
                    cell, outcome = done, previous.outcomes[(done.model_id, done.attack, done.eps)]
                else:
                    cell, outcome = _attack_cell(step, eps, config, clean, attacker, progress_file)
                    if step.source is not None:
                        whitebox = result.cell(mut.id, cell.attack_options["base"], eps)
                        metrics.add_transfer_columns(cell, whitebox, step.source, outcome, clean.attacked[1],
                                                     config.batch_size)
                _record(result, cell, outcome, clean)
                if on_cell is not None:
                    on_cell(result)
                if progress_file is not None:
                    progress_file.unlink(missing_ok=True)
                if progress is not None:
                    progress.advance(task)
        if config.trust_checks:
            result.noise_correct[mut.id] = metrics.noise_correct(mut, config, images, labels, first_index)
            result.checks.append(checks.eps_one_check(mut, classifier, config, *clean.attacked))
    summarise(result, models)
    result.seconds = time.perf_counter() - started
    return result


def summarise(result: SweepResult, models: list[ModelUnderTest]) -> None:
    """Fills in what follows from the cells and their per-image outcomes: per model and eps the worst case, the
    noise baseline, the verdicts between models and the trust checks (the per-model ones already in
    `result.checks` are kept after the rest)."""
    robust = {}
    for mut in models:
        clean = result.clean[mut.id]
        threshold = None if mut.detector is None else mut.detector.threshold
        survived = {eps: clean.correct.copy() for eps in result.config.eps_values}
        undetected = {eps: np.zeros(int(clean.correct.sum()), dtype=bool) for eps in result.config.eps_values}
        for cell in (c for c in result.cells if c.model_id == mut.id):
            outcome = result.outcomes[(cell.model_id, cell.attack, cell.eps)]
            survived[cell.eps] &= outcome.survived(clean)
            if threshold is not None:
                undetected[cell.eps] |= outcome.undetected(threshold)
        result.worst_case.extend(metrics.worst_case(mut, result.cells, survived, undetected))
        robust[mut.id] = survived
        if mut.id in result.noise_correct:
            result.noise.extend(metrics.noise_rows(mut.id, result.noise_correct[mut.id]))
    if result.config.trust_checks:
        result.checks = checks.sweep_checks(result) + result.checks
    result.verdicts = metrics.verdicts(models, robust)


def _progress_name(step: Step, eps: float) -> str:
    """The file an attack keeps its progress in for one cell (hidden: a report's files are the finished ones)."""
    source = "" if step.source is None else f"-from-{step.source.id}"
    return f".progress-{step.model.id}-{step.attack}{source}-eps{eps:g}.npz"


def _attack_cell(step: Step, eps: float, config: SweepConfig, clean: CleanPass, classifier: BatchedBridge,
                 progress_file: Path | None = None) -> tuple[Cell, Outcome]:
    """Runs `step`'s attack at `eps` on the images `clean` classified correctly and measures the cell; an attack
    that can keep its progress inside the cell keeps it in `progress_file`."""
    started, earlier = time.perf_counter(), 0.0
    x, y = clean.attacked
    num_classes = step.model.model.num_classes
    rng = np.random.default_rng(config.seed)
    targets = (y + rng.integers(1, num_classes, size=len(y))) % num_classes if config.targeted else y
    arguments = attack_arguments(step, eps, config)
    attempt = Attempt(resolve_params(step.method, eps, **arguments), targets, x)
    if len(x) and eps > 0:  # at eps = 0 the only admissible image is the original
        attack = create_attack(step.method, classifier, eps, **arguments)
        keep = {"progress_file": progress_file} if progress_file is not None and attack.resumable else {}
        attempt.adversarial = attack.generate(x=x, y=np.eye(num_classes, dtype="float32")[targets],
                                              **keep).astype("float32")
        attempt.record = attack.record()
        attempt.fooled_by = attack.fooled_by
        earlier = attack.earlier_seconds  # spent on this cell by a process that was stopped
        if step.source is None:  # a transfer attack's classifier is its source's: the target's loss is not at hand
            attempt.losses = (classifier.compute_loss(x, targets),
                              classifier.compute_loss(attempt.adversarial, targets))
    cell, outcome = metrics.measure(step, eps, config, clean, attempt)
    cell.seconds = round(time.perf_counter() - started + earlier, 2)
    return cell, outcome


def _record(result: SweepResult, cell: Cell, outcome: Outcome, clean: CleanPass) -> None:
    key = (cell.model_id, cell.attack, cell.eps)
    result.cells.append(cell)
    result.outcomes[key] = outcome
    result.survivors[key] = outcome.robust
    if outcome.example is not None:
        result.examples[key] = outcome.example
    roc = metrics.roc_data(outcome, clean)
    if roc is not None:
        result.roc[key] = roc
