"""The benchmark results that `python -m benchmarks.report` reads: one JSON file, updated by every benchmark run.

Each entry is keyed by its test id and stamped with the run it came from, so that a run of one suite refreshes its own
rows and leaves the others; the report pairs a kernel with its reference only when both come from the same run.
"""

import datetime
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from capsrobust.io import read_json, write_json

DEFAULT_PATH = Path(__file__).resolve().parent / "results" / "latest.json"


def results_path() -> Path:
    """`$CAPSROBUST_BENCHMARK_RESULTS`, else `benchmarks/results/latest.json` in the checkout."""
    return Path(os.environ.get("CAPSROBUST_BENCHMARK_RESULTS") or DEFAULT_PATH)


@dataclass
class Result:
    """One benchmarked call.

    Attributes:
        test: the pytest node id.
        suite: `routing`, `training` or `attack`.
        case: what was measured, the same for a kernel and its reference (e.g. `dynamic 3 it, batch 128, fwd+bwd`).
        variant: `fast` or `reference` (or `capsrobust` / `art-stock` for the attack suite).
        median_s: median seconds per round.
        peak_bytes: peak memory of one call, where measured.
        images_per_second: for throughput suites.
        extra: anything else worth showing (batch, backend, data source).
    """

    test: str
    suite: str
    case: str
    variant: str
    median_s: float
    peak_bytes: int | None = None
    images_per_second: float | None = None
    extra: dict = field(default_factory=dict)


def machine() -> dict:
    import keras

    return {"backend": keras.backend.backend(), "platform": platform.platform(), "processor": processor(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def processor() -> str:
    """The CPU's model name: `platform.processor()` is empty on Linux, where `/proc/cpuinfo` says it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor()


def new_run() -> str:
    """A name for one pytest session's run: its start time."""
    return datetime.datetime.now().isoformat(timespec="seconds")


def save(results: list[Result], run: str, path: Path | None = None) -> Path:
    """Merges `results` of `run` into the results file (atomically) and returns its path.

    Called after every benchmark, so a session that dies (out of memory, interrupted) keeps what it measured.
    """
    path = path or results_path()
    stored = read_json(path) if path.is_file() else {"runs": {}, "results": {}}
    stored["runs"][run] = machine()
    for result in results:
        stored["results"][result.test] = {**asdict(result), "run": run}
    live = {entry["run"] for entry in stored["results"].values()}
    stored["runs"] = {name: info for name, info in stored["runs"].items() if name in live}
    write_json(path, stored)
    return path


def load(path: Path | None = None) -> dict:
    """The results file as `{"runs": {run: machine}, "results": {test: entry}}`."""
    return read_json(path or results_path())
