"""Shared helpers of the fault-injection suite: the CLI in-process and as a subprocess, and the one-line check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def assert_one_line_error(text: str, *parts: str) -> str:
    """Checks that `text` (a command's stderr or an exception message) is one error line with every part in it."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def cli(capsys):
    """Runs `capsrobust ARGS...` in this process; returns (exit status, stdout, stderr). Exceptions propagate."""
    from capsrobust.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            status = main([str(a) for a in args])
        except SystemExit as exit_:
            status = exit_.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


def subprocess_env(home: Path, **extra: str) -> dict:
    """The environment of a `capsrobust` subprocess: this checkout's package, a private store, no network."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "CAPSROBUST_HOME": str(home), "CAPSROBUST_OFFLINE": "1",
            "COLUMNS": "200", **extra}


def start_capsrobust(*args: str, home: Path, **popen) -> subprocess.Popen:
    """Starts `python -m capsrobust ARGS...` from the repository root with a private store."""
    return subprocess.Popen([sys.executable, "-m", "capsrobust", *map(str, args)], cwd=ROOT, env=subprocess_env(home),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
