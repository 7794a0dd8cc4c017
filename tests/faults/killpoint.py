"""Runs `capsrobust ARGS...` and freezes it at one chosen point, so a test can SIGKILL it exactly there.

    python tests/faults/killpoint.py POINT READY_FILE ARGS...

POINT is one of
    batch:E:B             the batch stream is asked for batch B (0-based) of epoch E (1-based): mid-epoch
    checkpoint-write:E    epoch E's weights are fully written to their temporary file, not yet renamed into place
    after-checkpoint:E    epoch E's checkpoint (weights, optimizer, state.json) is complete
    after-publish-rename  the new store entry is renamed into place, run.json does not yet say it is published
    none                  nowhere: the command runs to the end

At the point the process creates READY_FILE and sleeps; the test waits for that file and kills the process. Nothing
in capsrobust knows about this: the hooks are patched in from outside, here.
"""

import os
import sys
import time
from pathlib import Path


def freeze(ready_file: str) -> None:
    Path(ready_file).write_text(str(os.getpid()))
    time.sleep(3600)


def install(point: str, ready_file: str) -> None:
    kind, _, where = point.partition(":")
    if kind == "batch":
        from capsrobust.training.augment import ShiftedBatches

        epoch, batch = (int(n) for n in where.split(":"))
        serve = ShiftedBatches.__getitem__

        def getitem(self, index):
            if self.epoch == epoch - 1 and index == batch:
                freeze(ready_file)
            return serve(self, index)

        ShiftedBatches.__getitem__ = getitem
    elif kind == "checkpoint-write":
        replace = os.replace
        target = f"epoch-{int(where):04d}.weights.h5"

        def replace_then_freeze(src, dst, *args, **kwargs):
            if Path(dst).name == target:
                freeze(ready_file)
            return replace(src, dst, *args, **kwargs)

        os.replace = replace_then_freeze
    elif kind == "after-checkpoint":
        from capsrobust.training import callbacks

        save = callbacks.save_checkpoint

        def save_then_freeze(run_dir, model, state):
            save(run_dir, model, state)
            if state.epoch == int(where):
                freeze(ready_file)

        callbacks.save_checkpoint = save_then_freeze
    elif kind == "after-publish-rename":
        rename = os.rename

        def rename_then_freeze(src, dst, *args, **kwargs):
            rename(src, dst, *args, **kwargs)
            if Path(src).name.startswith(".staging-"):
                freeze(ready_file)

        os.rename = rename_then_freeze
    elif kind != "none":
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    point, ready, *args = sys.argv[1:]
    from capsrobust.cli import main

    install(point, ready)
    sys.exit(main(args))
