"""The backend comparison: `benchmarks/test_backend_throughput.py` once per installed Keras backend, then the table.

    python -m benchmarks.backends [--backends tensorflow,jax,torch] [pytest options...]

Keras fixes its backend per process, so each backend runs in its own pytest session, one after another on the same
machine; `python -m benchmarks.report` prints the results again later.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from capsrobust.backend import backend_environment, installed_backends

SUITE = Path(__file__).resolve().parent / "test_backend_throughput.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(installed_backends()),
                        help="comma-separated backends (default: every installed one)")
    args, pytest_args = parser.parse_known_args(argv)
    status = 0
    for backend in args.backends.split(","):
        print(f"== {backend}", flush=True)
        done = subprocess.run([sys.executable, "-m", "pytest", str(SUITE), "--benchmark-only", "-q", *pytest_args],
                              env=backend_environment(backend), cwd=SUITE.parents[1])
        status = status or done.returncode
    from benchmarks.report import main as report

    report([])
    return status


if __name__ == "__main__":
    sys.exit(main())
