"""The latest benchmark results as `rich` tables: each kernel against its reference, and the throughput suites.

    python -m benchmarks.report [--results PATH]

Kernels and references are paired by case, and only within one run (a ratio of timings from two runs of a shared
CPU means little). Ratios are reference / fast: above 1, the fast kernel wins.
"""

import argparse
import sys
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from benchmarks.results import load, results_path

def _seconds(value: float) -> str:
    return f"{value * 1000:,.1f} ms" if value < 10 else f"{value:,.1f} s"


def _mebibytes(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.1f} MiB"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value >= 1 else f"{value:.2g}"


def _ratio(numerator, denominator) -> str:
    if not numerator or not denominator:
        return "—"
    return f"{numerator / denominator:.2f}×"


def kernel_table(entries: list[dict]) -> Table:
    table = Table(title="routing kernels: fast vs reference (ratio = reference / fast)")
    for column in ("case", "fast median", "reference median", "speed-up", "fast peak", "reference peak",
                   "memory ratio"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for (run, case), variants in _paired(entries):
        fast, reference = variants.get("fast"), variants.get("reference")
        table.add_row(case, _seconds(fast["median_s"]) if fast else "—",
                      _seconds(reference["median_s"]) if reference else "—",
                      _ratio(reference and reference["median_s"], fast and fast["median_s"]),
                      _mebibytes(fast and fast["peak_bytes"]), _mebibytes(reference and reference["peak_bytes"]),
                      _ratio(reference and reference["peak_bytes"], fast and fast["peak_bytes"]))
    return table


def attack_table(entries: list[dict]) -> Table:
    table = Table(title="attack throughput through the ART bridge vs ART's stock TensorFlowV2Classifier")
    for column in ("case", "capsrobust images/s", "ART stock images/s", "ratio"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for (run, case), variants in _paired(entries):
        ours, stock = variants.get("capsrobust"), variants.get("art-stock")
        table.add_row(case, f"{ours['images_per_second']:,.1f}" if ours else "—",
                      f"{stock['images_per_second']:,.1f}" if stock else "—",
                      _ratio(ours and ours["images_per_second"], stock and stock["images_per_second"]))
    return table


def profile_table(entries: list[dict]) -> Table:
    """Each stage's forward+backward time and its share of the whole training step measured in the same run."""
    table = Table(title="training-step profile: each stage's forward and backward pass alone, batch 128")
    for column in ("model", "stage", "median", "share of the whole step"):
        table.add_column(column, justify="left" if column in ("model", "stage") else "right")
    runs: dict = defaultdict(list)
    for entry in entries:
        runs[(entry["run"], entry["extra"].get("model", ""))].append(entry)
    for (run, model), found in sorted(runs.items()):
        whole = next((e["median_s"] for e in found if e["variant"] == "step"), None)
        for entry in sorted(found, key=lambda e: e["extra"].get("order", 0)):
            share = "—" if not whole else f"{entry['median_s'] / whole:.0%}"
            table.add_row(model, entry["case"], _seconds(entry["median_s"]), share)
    return table


def training_table(entries: list[dict]) -> Table:
    """Training images/s per model and run, convolutions in float32 beside bfloat16 (`--conv-dtype`) from the same
    run; runs before `--conv-dtype` measured float32 only, as variant "fast"."""
    table = Table(title="training throughput, images/s, convolutions in float32 and bfloat16")
    for column in ("model", "batch", "float32", "bfloat16", "bfloat16 / float32", "data"):
        table.add_column(column, justify="left" if column in ("model", "data") else "right")
    for (_, case), variants in _paired(entries):
        full = variants.get("float32") or variants.get("fast") or {}
        mixed = variants.get("bfloat16") or {}
        some = full or mixed
        speeds = [entry.get("images_per_second") for entry in (full, mixed)]
        table.add_row(case, str(some["extra"].get("batch", "")), *(_rate(s) if s else "—" for s in speeds),
                      _ratio(speeds[1], speeds[0]) if all(speeds) else "—", str(some["extra"].get("dataset", "")))
    return table


def adversarial_table(entries: list[dict]) -> Table:
    """Images/s of adversarial training per model, one column per method, beside plain training from the same run."""
    latest = max(entry["run"] for entry in entries)
    methods = list(dict.fromkeys(entry["variant"] for entry in entries if entry["run"] == latest))
    table = Table(title="adversarial training throughput, images/s (slow-down vs plain)")
    for column in ("model", *methods):
        table.add_column(column, justify="left" if column == "model" else "right")
    for (run, case), variants in _paired(entries):
        if run != latest:
            continue
        plain = variants.get("plain", {}).get("images_per_second")
        cells = []
        for method in methods:
            speed = variants.get(method, {}).get("images_per_second")
            ratio = f" ({_ratio(plain, speed)})" if method != "plain" and plain and speed else ""
            cells.append(f"{_rate(speed)}{ratio}" if speed else "—")
        table.add_row(case, *cells)
    return table


def backend_table(entries: list[dict]) -> Table:
    """Images/s per model and measure (train, FGSM, PGD-100), one column per backend, from each backend's latest run."""
    backends = [b for b in ("tensorflow", "jax", "torch") if any(e["variant"] == b for e in entries)]
    table = Table(title="throughput per Keras backend, images/s (ART bridge for the attacks)")
    for column in ("model", "measure", *backends, *(f"{b} / tensorflow" for b in backends[1:])):
        table.add_column(column, justify="left" if column in ("model", "measure") else "right")
    cells: dict = defaultdict(dict)
    for entry in entries:
        cells[(entry["extra"]["model"], entry["extra"]["measure"])][entry["variant"]] = entry["images_per_second"]
    order = {"train": 0, "fgsm": 1, "pgd100": 2}
    for (model, measure), speeds in sorted(cells.items(), key=lambda item: (item[0][0], order.get(item[0][1], 9))):
        table.add_row(model, measure, *(_rate(speeds[b]) if b in speeds else "—" for b in backends),
                      *(_ratio(speeds.get(b), speeds.get("tensorflow")) for b in backends[1:]))
    return table


def _paired(entries: list[dict]):
    """`((run, case), {variant: entry})` for every case, in the order the suite ran them."""
    groups: dict = defaultdict(dict)
    for entry in entries:
        groups[(entry["run"], entry["case"])][entry["variant"]] = entry
    return sorted(groups.items(), key=lambda item: (item[0][0], _case_key(item[0][1])))


def _case_key(case: str):
    # "batch 32" before "batch 128": sort the numbers in a case as numbers
    return [int(token) if token.isdigit() else token for token in case.replace(",", " ").split()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0])
    parser.add_argument("--results", help=f"the results file (default: {results_path()})")
    args = parser.parse_args(argv)
    console = Console()
    path = args.results or results_path()
    try:
        stored = load(path if args.results else None)
    except FileNotFoundError:
        console.print(f"no benchmark results at {path}: run `pytest benchmarks/ --benchmark-only` first")
        return 2
    by_suite: dict = defaultdict(list)
    for entry in stored["results"].values():
        by_suite[entry["suite"]].append(entry)
    tables = {"routing": kernel_table, "attack": attack_table, "training": training_table, "backend": backend_table,
              "adversarial": adversarial_table, "profile": profile_table}
    for suite, build in tables.items():
        if by_suite.get(suite):
            console.print(build(by_suite[suite]))
    for run, info in sorted(stored["runs"].items()):
        console.print(f"run {run}: {info['backend']} backend, {info['cpus']} CPUs, {info['processor'] or '?'}, "
                      f"{info['platform']}, Python {info['python']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
