"""Shared helpers of the fault-injection suite: the CLI in-process and as a subprocess, and the one-line check."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def assert_one_line_error(text: str, *parts: str) -> str:
    """Checks that `text` (a command's stderr or an exception message) holds exactly one error line and no
    traceback, and that the error line names every part; returns the line.

    Progress lines a command printed before failing may precede it; the error must still be a single line.
    """
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ") or ": error: " in line]
    if not errors and len(lines) == 1:  # an exception message
        errors = lines
    assert len(errors) == 1 and errors[0] == lines[-1], text
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


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


@pytest.fixture
def read_only():
    """`read_only(directory)` makes a directory read-only and returns a function that makes it writable again; every
    directory is made writable again after the test.

    Permission bits do not stop root, so as root the directory is made immutable (`chattr +i`), which does; where
    neither works the test is skipped, saying why.
    """
    made = []

    def restore(directory: Path) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o755)

    def make(directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            directory.chmod(0o555)
        else:
            done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"running as root, where permission bits are not enforced, and chattr +i failed: "
                            f"{done.stderr.strip() or 'no chattr'}")
        made.append(directory)
        return lambda: restore(directory)

    yield make
    for directory in made:
        restore(directory)
