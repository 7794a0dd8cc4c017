"""Keras callbacks of the shared trainer: progress display, NaN guard, per-epoch checkpoints, early stopping and
Ctrl-C."""

import contextlib
import math
import signal
import threading
import time
from typing import Iterator

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from capsrobust.errors import StoreError
from capsrobust.training.checkpoint import RunState, save_checkpoint


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first batch whose loss is NaN or infinite, or whose inputs are, and remembers where.

    Args:
        batches: the batch stream, whose `non_finite_batch` names the first batch it served with NaN or Inf values
            (None: watch the loss only).

    Attributes:
        tripped_at: `(epoch, batch)`, from 1, where it tripped; None while it has not.
        cause: what tripped it: "loss" or "inputs".
    """

    def __init__(self, batches=None):
        super().__init__()
        self.batches = batches
        self.tripped_at: tuple[int, int] | None = None
        self.cause = ""
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.tripped_at is not None:
            return
        loss = float((logs or {}).get("loss", 0.0))
        bad_inputs = getattr(self.batches, "non_finite_batch", None)
        if bad_inputs is not None:
            self.tripped_at, self.cause = bad_inputs, "inputs"
        elif not math.isfinite(loss):
            self.tripped_at, self.cause = (self._epoch + 1, batch + 1), "loss"
        if self.tripped_at is not None:
            self.model.stop_training = True


class InterruptRelay(keras.callbacks.Callback):
    """Raises `KeyboardInterrupt` again at the next batch or epoch end after a Ctrl-C that Keras swallowed.

    Keras converts each batch's logs to floats inside a bare `except:` (`keras.src.utils.python_utils.pythonify_logs`,
    3.15); under JAX the main thread waits there for the step to finish, so a Ctrl-C nearly always lands in it and
    is dropped, and the run would train on to the end. While `watching()` is open, SIGINT also sets `interrupted`.
    """

    def __init__(self):
        super().__init__()
        self.interrupted = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Notes SIGINT while open; a process that ignores it, or a thread other than the main one, is left alone."""
        previous = signal.getsignal(signal.SIGINT)
        if previous is not signal.default_int_handler or threading.current_thread() is not threading.main_thread():
            yield
            return

        def note_and_raise(signum, frame):
            self.interrupted = True
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, note_and_raise)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _raise_if_interrupted(self, *args, **kwargs):
        if self.interrupted:
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _raise_if_interrupted


class EpochCheckpoint(keras.callbacks.Callback):
    """After every finished epoch: record it in the run state, checkpoint it, and apply early stopping.

    Args:
        run_dir: the run directory.
        state: the run state, updated in place.
        guard: the `NanGuard`; an epoch during which it tripped is not checkpointed.
        patience: stop when validation accuracy has not improved for this many epochs (None: never).
    """

    def __init__(self, run_dir, state: RunState, guard: NanGuard, patience: int | None = None):
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.guard = guard
        self.patience = patience
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.tripped_at is not None:
            return
        logs = {key: float(value) for key, value in (logs or {}).items()}
        state = self.state
        state.epoch = epoch + 1
        state.seconds += time.perf_counter() - self._started
        state.history.append({"epoch": epoch + 1, **logs})
        val_accuracy = logs.get("val_accuracy", logs.get("accuracy", 0.0))
        if val_accuracy > state.best_val_accuracy:
            state.best_epoch, state.best_val_accuracy = epoch + 1, val_accuracy
        if self.patience is not None and state.epochs_since_best >= self.patience:
            state.stop_reason = f"early stopping: no validation improvement for {self.patience} epochs"
            self.model.stop_training = True
        try:
            save_checkpoint(self.run_dir, self.model, state)
        except OSError as error:  # disk full, run directory gone or read-only: the previous checkpoint is intact
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no checkpoint was kept"
            raise StoreError(f"cannot write the checkpoint of epoch {epoch + 1} in {self.run_dir}: "
                             f"{error.strerror or error}; {kept}") from None


class MarginSchedule(keras.callbacks.Callback):
    """Raises a spread-loss margin linearly from `start` to `end` over `epochs` epochs, before every batch.

    The margin at batch `b` of epoch `e` depends only on `(e, b)`, so a resumed run continues the same ramp.

    Args:
        margin: the model's scalar margin variable.
        start, end: the margin at the first batch and from the end of the ramp on (Hinton et al. 2018: 0.2 and 0.9).
        epochs: length of the ramp in epochs.
        steps: batches per epoch.
    """

    def __init__(self, margin, start: float, end: float, epochs: int, steps: int):
        super().__init__()
        self.margin = margin
        self.start, self.end, self.epochs, self.steps = float(start), float(end), int(epochs), int(steps)
        self._epoch = 0

    def value(self, epoch: int, batch: int) -> float:
        progress = min(1.0, (epoch + batch / self.steps) / max(self.epochs, 1))
        return self.start + (self.end - self.start) * progress

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.margin.assign(self.value(self._epoch, batch))


class RichProgress(keras.callbacks.Callback):
    """A `rich` progress bar per epoch and a one-line summary when each epoch ends."""

    def __init__(self, console, epochs: int, steps: int, batch_size: int):
        super().__init__()
        self.console = console
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.progress: Progress | None = None
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self.progress = Progress(TextColumn(f"epoch {epoch + 1}/{self.epochs}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TimeRemainingColumn(),
                                 console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.steps, status="")

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        rate = (batch + 1) * self.batch_size / max(time.perf_counter() - self._started, 1e-9)
        status = f"loss {float(logs.get('loss', math.nan)):.4f} acc {float(logs.get('accuracy', math.nan)):.4f} " \
                 f"{rate:.0f} img/s"
        self.progress.update(self.task, completed=batch + 1, status=status)

    def on_epoch_end(self, epoch, logs=None):
        self._stop()
        logs = logs or {}
        parts = [f"{key} {float(value):.4f}" for key, value in logs.items() if key != "learning_rate"]
        self.console.print(f"epoch {epoch + 1}/{self.epochs}  " + "  ".join(parts)
                           + f"  {time.perf_counter() - self._started:.1f}s")

    def on_train_end(self, logs=None):
        self._stop()

    def _stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
