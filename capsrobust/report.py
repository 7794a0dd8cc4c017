"""Sweep reports: `rich` tables on the terminal, the same numbers as JSON and CSV, and the figures (see `plots`)."""

import csv
import datetime
import io
import json
import re
from pathlib import Path

from rich.table import Table

from capsrobust.io import atomic_path
from capsrobust.store import model_name_of
from capsrobust.sweep import CSV_COLUMNS, SweepResult
from capsrobust.sweep.records import PARTIAL_FILE, write_record  # noqa: F401  (PARTIAL_FILE: for the commands)


def output_dir_name(command: str, model_ids: list[str], dataset: str, config) -> str:
    """A directory name that says what ran, e.g. `attack-capsnet-mnist-bim-eps0.1-20261121-120000`."""
    models = "+".join(sorted({model_name_of(m) for m in model_ids}))
    eps = ",".join(f"{e:g}" for e in config.eps_values)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{command}-{models}-{dataset}-{'+'.join(config.methods)}-eps{eps}-{stamp}"
    return re.sub(r"[^A-Za-z0-9_.,+-]", "_", name)[:200]


def write_partial(result: SweepResult, out_dir: Path, metadata: dict) -> Path:
    """Writes the cells finished so far, with their per-image outcomes, to `sweep.partial.json` and `outcomes.npz`
    (atomically), from which `--resume` continues; `write_results` replaces them."""
    return write_record(result, out_dir, metadata, complete=False)


def write_results(result: SweepResult, out_dir: Path, metadata: dict) -> None:
    """Writes `sweep.json` (cells, worst case, checks, noise baselines, verdicts, config, metadata), the per-image
    outcomes beside it and `sweep.csv` (cells), atomically, and removes the partial results of the same sweep."""
    write_record(result, out_dir, metadata, complete=True,
                 extra={"seconds": result.seconds, "worst_case": result.worst_case, "checks": result.checks,
                        "noise": result.noise, "verdicts": result.verdicts})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(c.csv_row() for c in result.cells)
    with atomic_path(out_dir / "sweep.csv") as tmp:
        tmp.write_text(buffer.getvalue())


def _pct(value) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value, spec: str) -> str:
    """`value` formatted by `spec`, or a dash where nothing was measured (no image was attacked)."""
    return "—" if value is None else format(value, spec)


def _with_ci(figure: str, interval, scale: float = 100, digits: int = 0) -> str:
    """`figure` with its interval below it, compact: `37.6%` over `[30, 45]`."""
    if not interval:
        return figure
    return f"{figure}\n[{scale * interval[0]:.{digits}f}, {scale * interval[1]:.{digits}f}]"


def _ci(interval) -> str:
    """A 95% interval as `[low, high]` in percent, or a dash."""
    return "—" if not interval else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def results_table(result: SweepResult, title: str, detection: bool = True) -> Table:
    """One row per (model, attack, eps); every figure with its 95% interval (Wilson; bootstrap for the AUROC)."""
    table = Table(title=title)
    columns = ["model", "attack", "eps", "clean acc", "adv acc", "95% CI", "success", "L∞ mean", "L2 mean"]
    if detection:
        columns += ["det. FPR", "det. rate", "AUROC", "undetected"]
    columns.append("time")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "attack") else "right")
    for c in result.cells:
        row = [model_name_of(c.model_id), c.attack, f"{c.eps:g}", _pct(c.clean_accuracy),
               _pct(c.adversarial_accuracy), _ci(c.adversarial_accuracy_ci),
               _with_ci(_pct(c.attack_success_rate), c.attack_success_rate_ci), _num(c.linf_mean, ".3f"),
               _num(c.l2_mean, ".2f")]
        if detection:
            row += [_with_ci(_pct(c.detector_fpr), c.detector_fpr_ci),
                    _with_ci(_pct(c.detection_rate), c.detection_rate_ci),
                    _with_ci(_num(c.auroc, ".3f"), c.auroc_ci, scale=1, digits=2),
                    _with_ci(_pct(c.undetected_success_rate), c.undetected_success_rate_ci)]
        row.append(f"{c.seconds:.1f}s")
        table.add_row(*row)
    return table


def checks_table(result: SweepResult) -> Table:
    """Trust checks: one row per (check, model) that passed everywhere, one red row per failure with its hint."""
    table = Table(title="trust checks (Carlini et al. 2019)")
    for column in ("check", "model", "result", "detail"):
        table.add_column(column)
    groups: dict = {}
    for check in result.checks:
        groups.setdefault((check["check"], check["model_id"]), []).append(check)
    for (name, model_id), checks in groups.items():
        failed = [c for c in checks if not c["passed"]]
        if not failed:
            detail = checks[0]["detail"] if len(checks) == 1 else f"all {len(checks)} comparisons"
            table.add_row(name, model_name_of(model_id), "[green]pass[/]", detail)
        for check in failed:
            table.add_row(name, model_name_of(model_id), "[bold red]FAIL[/]",
                          f"[red]{check['detail']} — {check['hint']}[/]")
    return table


def worst_case_table(result: SweepResult, detection: bool = True) -> Table:
    """Per model and eps: the per-image worst case over every attack, the strongest single attack, and the share of
    attacked images some attack turned into an undetected success."""
    table = Table(title="worst case over all attacks (an image counts only if it survives every attack)")
    columns = ["model", "eps", "worst-case acc", "95% CI", "strongest attack", "its acc"]
    if detection:
        columns.append("undetected by any")
    columns.append("attacks")
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "strongest attack", "attacks") else "right")
    for row in result.worst_case:
        cells = [model_name_of(row["model_id"]), f"{row['eps']:g}", _pct(row["worst_case_accuracy"]),
                 _ci(row.get("worst_case_accuracy_ci")), row["strongest_attack"], _pct(row["strongest_accuracy"])]
        if detection:
            cells.append(_pct(row["undetected_success_any"]))
        cells.append(", ".join(row["attacks"]))
        table.add_row(*cells)
    return table


def verdict_lines(result: SweepResult, significance: float = 0.05) -> list[str]:
    """One line per pair of models and eps: which is more robust in the worst case, on McNemar's exact test."""
    lines = []
    for v in result.verdicts:
        pair = [(model_name_of(v["first"]), v["first_accuracy"]), (model_name_of(v["second"]), v["second_accuracy"])]
        if v["p_value"] < significance and pair[1][1] > pair[0][1]:
            pair.reverse()  # the more robust model first, its figure first
        (first, a), (second, b) = pair
        figures = f"{100 * a:.1f}% vs {100 * b:.1f}%, p = {v['p_value']:.2g}, {v['images']:,} images"
        if v["p_value"] >= significance:
            lines.append(f"{first} and {second} not distinguishable at eps {v['eps']:g}: {figures}")
        else:
            lines.append(f"{first} more robust than {second} at eps {v['eps']:g}: {figures}")
    return lines


def transfer_table(result: SweepResult) -> Table | None:
    """Transfer cells beside the target's white-box accuracy under the same base attack; None without any."""
    rows = [c for c in result.cells if c.transfer_source]
    if not rows:
        return None
    table = Table(title="black-box transfer vs white-box (accuracy of the target; source on its own images)")
    for column in ("target", "source", "base attack", "eps", "white-box acc", "transfer acc", "source acc"):
        table.add_column(column, justify="left" if column in ("target", "source", "base attack") else "right")
    for c in rows:
        table.add_row(model_name_of(c.model_id), model_name_of(c.transfer_source), c.attack_options["base"],
                      f"{c.eps:g}", _pct(c.whitebox_accuracy), _pct(c.adversarial_accuracy), _pct(c.source_accuracy))
    return table


def describe_attacks(result: SweepResult) -> str:
    """One line per attack saying exactly what ran (reports must state the loss and every parameter)."""
    lines = []
    seen = set()
    for c in result.cells:
        key = (c.attack, c.eps)
        if key in seen:
            continue
        seen.add(key)
        options = {k: v for k, v in c.attack_options.items() if k != "source"}
        extra = "".join(f", {k} {v}" for k, v in options.items())
        if c.attack_members:
            extra += f", members: {'; '.join(c.attack_members)}"
        lines.append(f"{c.attack} eps={c.eps:g}: norm L{c.norm}, step {c.attack_step_size:.4g}, "
                     f"{c.attack_steps} steps, random start {c.attack_random_start}, "
                     f"{'targeted' if c.targeted else 'untargeted'}, loss {c.attack_loss}"
                     f"{', restarts ' + str(c.attack_restarts) if c.attack_restarts > 1 else ''}{extra}")
    for c in result.cells:
        run = c.members_run
        if run and len(run["members"]) > 1:  # which loss of a chain, or which AutoAttack member, fooled how many
            ran = ", ".join(f"{name} {'ran' if m['ran'] else 'did not run'} (fooled {m['fooled']})"
                            for name, m in run["members"].items())
            restarts = f"; fooled per restart {run['restarts']}" if len(run.get("restarts", [])) > 1 else ""
            lines.append(f"{c.attack} on {model_name_of(c.model_id)} eps={c.eps:g}: {ran}{restarts}; "
                         f"{run['survived']} of {c.attacked} survived all")
    for skipped in result.skipped:
        lines.append(f"skipped {skipped['attack']} on {model_name_of(skipped['model_id'])}: {skipped['reason']}")
    return "\n".join(lines)


def load_results(path: Path) -> dict:
    return json.loads(Path(path).read_text())
