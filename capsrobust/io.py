"""Atomic file writes: a reader (or a process killed mid-write) sees the old file or the new one, never half of one."""

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.

    Args:
        path: the final file.
        suffix: the temporary file's suffix, for writers that insist on one (Keras wants `.weights.h5`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are 0600, which would make every card and checkpoint unreadable to the other users of a
    # shared store. O_EXCL with mode 0666 gives a fresh file with the permissions the user's umask asks for.
    while True:
        tmp_path = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix or '.tmp'}"
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data) -> None:
    """Writes `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    """Reads a JSON file (never anything that can run code)."""
    return json.loads(Path(path).read_text())
