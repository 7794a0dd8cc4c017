"""Shared machinery of `attack`, `detect`, `compare` and `demo`: load models, run the sweep, print and save."""

import argparse
import contextlib
import dataclasses
from pathlib import Path

from capsrobust.cli.args import (RECON_WEIGHT_GONE, add_data_args, add_removed_flag, add_store_arg, directory,
                                 entry_dataset, eps_list, name_list, new_directory, non_negative_float,
                                 non_negative_int, positive_float, positive_int, shard, shard_range)

DEFAULT_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class ReportPlan:
    """Which test images a sweep runs on and where its report goes.

    Attributes:
        limit: the first `limit` test images.
        shard: `(k, n)`: only the k-th of n disjoint slices of them (None: all).
        resume: the directory of a stopped sweep to continue (None: a new report).
        output: where a new report directory goes (None: ./capsrobust-output).
    """

    limit: int = DEFAULT_LIMIT
    shard: tuple[int, int] | None = None
    resume: str | None = None
    output: str | None = None

    @classmethod
    def from_args(cls, args) -> "ReportPlan":
        return cls(limit=args.limit, shard=args.shard, resume=args.resume, output=args.output)


def add_attack_args(parser: argparse.ArgumentParser, methods_default: str, eps_default: str,
                    limit_default: int = DEFAULT_LIMIT) -> None:
    group = parser.add_argument_group("attack")
    group.add_argument("--method", "--methods", dest="methods", default=methods_default, metavar="NAMES",
                       help="attacks, comma-separated: fgsm, bim, pgd, pgd100, vote, vote-da, rbim, autoattack, "
                            f"autoattack-fast, transfer (default {methods_default or 'the --suite'})")
    group.add_argument("--eps", type=eps_list, default=eps_list(eps_default), metavar="E[,E...]",
                       help=f"perturbation budgets: in [0, 1] for L-inf, any size >= 0 for L2 (default {eps_default})")
    group.add_argument("--norm", choices=("inf", "2"), default="inf", help="L-inf (default) or L2 budget")
    group.add_argument("--steps", type=positive_int,
                       help="iterations (default: BIM per Kurakin et al., PGD 40); without --step-size the step "
                            "becomes 2.5 eps / steps")
    group.add_argument("--step-size", type=positive_float, help="step per iteration (default: BIM 1/255, PGD 0.01)")
    group.add_argument("--random-start", action="store_true", default=None, help="start from a random point in the "
                                                                                  "eps-ball (PGD's default)")
    group.add_argument("--restarts", type=positive_int, metavar="N",
                       help="runs from new random starts, each on the images still robust (default: pgd100 5, else "
                            "1; for the attacks with a random start)")
    group.add_argument("--targeted", action="store_true", help="aim for a random wrong class instead")
    group.add_argument("--loss", choices=("auto", "ce", "dlr", "model"), default="auto",
                       help="attack loss: auto (default) runs cross-entropy on the scores, then the "
                            "difference-of-logits ratio (Croce & Hein 2020) on the images that survived; or one of "
                            "them; or model, the model's own training loss (the margin loss has zero gradient on "
                            "confidently classified images)")
    group.add_argument("--batch-size", type=positive_int, default=128, help="images per attack batch (128)")
    group.add_argument("--seed", type=non_negative_int, default=0, help="seed of random starts and targets")
    group.add_argument("--detector-penalty", type=non_negative_float, metavar="W",
                       help="rbim and vote-da: weight of the reconstruction distance subtracted from the attack "
                            "loss, to evade the detector (default 0.1)")
    add_removed_flag(group, "--recon-weight", RECON_WEIGHT_GONE)
    group.add_argument("--square-queries", dest="queries", type=positive_int, metavar="N",
                       help="autoattack: Square's query budget (default 5000, the reference AutoAttack's)")
    group.add_argument("--source", type=name_list, metavar="MODELS",
                       help="transfer: the model(s) to craft on, names or store ids (compare: the other models)")
    group.add_argument("--transfer-method", default="pgd", metavar="NAME",
                       help="transfer: the white-box attack run on the source (default pgd)")
    group.add_argument("--no-checks", dest="trust_checks", action="store_false",
                       help="skip the trust checks (eps=1 attack, random-noise baseline)")
    group.add_argument("--output", type=directory, metavar="DIR",
                       help="where result directories go (default ./capsrobust-output)")
    group.add_argument("--shard", type=shard, metavar="K/N",
                       help="run on the K-th of N disjoint slices of the --limit test images, e.g. one job of an "
                            "array; combine the N reports with `capsrobust merge`")
    group.add_argument("--resume", type=directory, metavar="DIR",
                       help="continue the stopped sweep whose report directory is DIR (same command and options): "
                            "its finished cells are kept")
    add_data_args(parser)
    parser.set_defaults(limit=limit_default)
    add_store_arg(parser)


def sweep_config(args, methods: tuple[str, ...], skip_inapplicable: bool = False):
    from capsrobust.sweep import SweepConfig

    return SweepConfig(methods=methods, eps_values=args.eps, loss=args.loss, norm=args.norm,
                       step_size=args.step_size, steps=args.steps, random_start=args.random_start,
                       restarts=args.restarts,
                       targeted=args.targeted, batch_size=args.batch_size, seed=args.seed,
                       trust_checks=args.trust_checks, detector_penalty=args.detector_penalty, queries=args.queries,
                       transfer_base=args.transfer_method, skip_inapplicable=skip_inapplicable)


def check_methods(text: str, args=None) -> tuple[str, ...]:
    """The `--method` names, checked: unknown names, an L-inf eps above 1, and a transfer without a source or with
    a bad base method, fail with one line before anything loads."""
    from attacks import attack_defaults, get_attack_spec
    from capsrobust.errors import ConfigError

    if args is not None and args.norm == "inf" and max(args.eps) > 1:
        raise ConfigError(f"an L-inf eps must be in [0, 1] (images are scaled to [0, 1]); larger budgets are for "
                          f"--norm 2. Received: --eps {','.join(f'{e:g}' for e in args.eps)}")
    methods = tuple(m.strip().lower() for m in text.split(",") if m.strip())
    if not methods:
        raise ConfigError(f"--method needs at least one attack (e.g. fgsm, bim, pgd). Received: --method {text!r}")
    for method in methods:
        get_attack_spec(method)  # one-line ConfigError for an unknown name
    if args is not None and "transfer" in methods:
        attack_defaults("transfer", 0.1, options={"base": args.transfer_method})  # a bad base fails here
        if not args.source and args.command != "compare":
            raise ConfigError("a transfer attack needs a source model to craft on: add --source MODEL "
                              "(e.g. --source cnn-baseline). Received: source=None")
    return methods


def load_sources(store, names, dataset_name: str) -> list:
    """The transfer sources `names` (`--source`: the best stored entry of each name, on the target's data set)."""
    from capsrobust.sweep import ModelUnderTest

    sources = []
    for name in names or ():
        entry = store.resolve(name, dataset=dataset_name)
        model = store.load(entry)
        family = entry.card.get("family", "cnn" if model.score_kind == "logits" else "capsule")
        sources.append(ModelUnderTest(entry.id, entry.model, family, model, entry.card))
    return sources


def load_under_test(store, entry, *, data_dir: str | None = None, subset: bool | None = None,
                    batch_size: int = 128, need_detector: bool = False):
    """The entry's model, its evaluation data (`entry_dataset`'s) and (if it has a decoder) its detector."""
    from capsrobust.detection import ReconstructionDetector
    from capsrobust.errors import ConfigError
    from capsrobust.sweep import ModelUnderTest

    model = store.load(entry)
    if need_detector and not model.has_decoder:
        raise ConfigError(f"{entry.model} has no reconstruction decoder; detection needs a capsule model with one "
                          f"or cnn-recon")
    dataset = entry_dataset(entry, data_dir, subset)
    detector = ReconstructionDetector.for_model(model, entry.card.get("detector"), dataset.x_val, batch_size,
                                                where=f"store entry {entry.id}: card.json")
    family = entry.card.get("family", "cnn" if model.score_kind == "logits" else "capsule")
    return ModelUnderTest(entry.id, entry.model, family, model, entry.card, detector), dataset


def run_and_report(command: str, under_test: list, dataset, config, plan: ReportPlan, detection: bool = True,
                   sources: list | None = None) -> Path:
    """Runs the sweep with a progress bar, prints the tables, writes JSON, CSV and figures; returns the directory."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from capsrobust import plots, report
    from capsrobust.console import console, err_console
    from capsrobust.sweep import run_sweep
    from capsrobust.sweep.results import SweepResult

    images, labels = dataset.x_test[:plan.limit], dataset.y_test[:plan.limit]
    for model in under_test:  # an adversarially trained model attacked beyond its training budget
        threat = model.card.get("threat_model") or {}
        if threat.get("norm") == config.norm and max(config.eps_values) > threat.get("eps", 1):
            err_console.print(f"warning: eps {max(config.eps_values):g} exceeds the eps {threat['eps']:g} "
                              f"{model.id} was adversarially trained for ({threat['method']})", highlight=False)
    start, stop = (0, len(images)) if plan.shard is None else shard_range(len(images), *plan.shard)
    images, labels = images[start:stop], labels[start:stop]
    metadata = {"command": command,
                "data": {**dataset.describe(), "limit": plan.limit, "evaluated": len(images), "first_index": start,
                         "shard": None if plan.shard is None else list(plan.shard)},
                "models": {m.id: {"card": m.card, "detector": m.detector.to_dict() if m.detector else None}
                           for m in under_test},
                "transfer_sources": {m.id: {"card": m.card} for m in sources or []}}
    previous = None
    if plan.resume:
        out_dir = Path(plan.resume)
        previous = _stopped_sweep(out_dir, config, metadata).result
    else:
        # Before the sweep, not after it; a directory of its own even if an identical sweep started in the same
        # second.
        name = report.output_dir_name(command, [m.id for m in under_test], dataset.name, config)
        if plan.shard is not None:
            name += f"-shard{plan.shard[0]}of{plan.shard[1]}"
        out_dir = new_directory(plan.output or "capsrobust-output", name)

    def save_partial(so_far) -> None:
        with _writing_to(out_dir):
            report.write_partial(so_far, out_dir, metadata)

    if previous is None:
        save_partial(SweepResult(config))  # resumable from the start: a long first cell keeps its progress
    try:
        with Progress(TextColumn(f"{command}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err_console, transient=True) as progress:
            result = run_sweep(under_test, config, images, labels, progress=progress, sources=sources,
                               on_cell=save_partial, previous=previous, first_index=start, work_dir=out_dir)
    except BaseException:
        _after_a_stop(out_dir, fresh=previous is None)
        raise
    with _writing_to(out_dir):
        report.write_results(result, out_dir, metadata)
        plots.write_figures(result, out_dir)
    shard_note = "" if plan.shard is None else f" (shard {plan.shard[0]}/{plan.shard[1]}: images {start}-{stop - 1})"
    title = f"{command}: {len(images)} {dataset.name} test images{shard_note} ({dataset.source}), " \
            f"{result.seconds:.0f}s"
    print_report(result, title, detection)
    console.print(f"results, grids and plots in {out_dir}")
    return out_dir


def print_report(result, title: str, detection: bool) -> None:
    """The tables, the attacks' description, the trust checks and the verdicts of a sweep, on the terminal."""
    from capsrobust import report
    from capsrobust.console import console

    console.print(report.results_table(result, title, detection=detection))
    console.print(report.worst_case_table(result, detection=detection))
    transfers = report.transfer_table(result)
    if transfers is not None:
        console.print(transfers)
    console.print(report.describe_attacks(result), highlight=False)
    if result.checks:
        console.print(report.checks_table(result))
    for line in report.verdict_lines(result):
        console.print(line, highlight=False)


def _after_a_stop(out_dir: Path, fresh: bool) -> None:
    """Says what a stopped sweep kept in `out_dir`; a new report directory that kept nothing is removed."""
    from capsrobust import report
    from capsrobust.console import err_console
    from capsrobust.sweep.records import read_record

    partial = out_dir / report.PARTIAL_FILE
    with contextlib.suppress(Exception):
        finished = len(read_record(out_dir, partial=True).result.cells)
        in_cell = any(out_dir.glob(".progress-*"))
        if finished or in_cell:
            kept = f"{finished} finished cell(s)" + (" and the finished parts of the cell it stopped in"
                                                      if in_cell else "")
            err_console.print(f"stopped: {kept} are kept in {partial}; `--resume {out_dir}` (the same command) "
                              f"continues", highlight=False)
            return
    if fresh:
        for name in (partial.name, "outcomes.npz"):
            (out_dir / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out_dir.rmdir()  # only if nothing else is in it


def _stopped_sweep(out_dir: Path, config, metadata: dict):
    """The stopped sweep in `out_dir`, checked to be this one (configuration, models, data, image slice)."""
    from capsrobust.errors import ConfigError
    from capsrobust.sweep import config_dict
    from capsrobust.sweep.records import SWEEP_FILE, read_record

    if (out_dir / SWEEP_FILE).exists():
        raise ConfigError(f"{out_dir} holds a finished sweep; there is nothing to resume")
    record = read_record(out_dir, partial=True)
    wanted = {"config": config_dict(config), **metadata}
    for key in ("config", "command", "models", "transfer_sources", "data"):
        if json_safe(record.content.get(key)) != json_safe(wanted.get(key)):
            raise ConfigError(f"--resume {out_dir} is a stopped sweep with another {key}; resume it with the "
                              f"command and options it was started with")
    return record


def json_safe(value):
    """`value` as JSON reads it back (tuples as lists), to compare with what a report holds."""
    import json

    return json.loads(json.dumps(value))


@contextlib.contextmanager
def _writing_to(out_dir: Path):
    """An unwritable results directory (full disk, lost permissions) as one line, not a traceback."""
    from capsrobust.errors import CapsrobustError

    try:
        yield
    except OSError as error:
        raise CapsrobustError(f"cannot write results to {out_dir}: {error.strerror}") from None
