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
from capsrobust.training.adversarial import COLLAPSE, GUARD_STEPS, collapsed, pgd_accuracy
from capsrobust.training.checkpoint import RunState, save_checkpoint

ROBUST_ACCURACY = "val_pgd_accuracy"  # the epoch log of `RobustnessGuard`


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
        monitor: the epoch log that picks the best epoch: `"val_accuracy"`, or `ROBUST_ACCURACY` for adversarial
            training (Wong et al. 2020 keep the epoch of best PGD accuracy, as Rice et al. 2020 advise; validation
            accuracy breaks ties).
    """

    def __init__(self, run_dir, state: RunState, guard: NanGuard, patience: int | None = None,
                 monitor: str = "val_accuracy"):
        super().__init__()
        self.run_dir = run_dir
        self.state = state
        self.guard = guard
        self.patience = patience
        self.monitor = monitor
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
        if self.monitor == ROBUST_ACCURACY:
            robust_accuracy = logs.get(ROBUST_ACCURACY, -1.0)
            # The guard batch is small (256 images), so epochs often tie on it: of those, the more accurate is kept.
            if (robust_accuracy, val_accuracy) > (state.best_val_robust_accuracy, state.best_val_accuracy):
                state.best_epoch, state.best_val_accuracy = epoch + 1, val_accuracy
                state.best_val_robust_accuracy = robust_accuracy
        elif val_accuracy > state.best_val_accuracy:
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


class RobustnessGuard(keras.callbacks.Callback):
    """Adversarial training's watch for catastrophic overfitting (Wong, Rice & Kolter 2020): after every epoch, PGD-10
    accuracy on a fixed batch of held-out images; on a collapse, stop and say which epoch's weights are kept.

    Single-step (FGSM) training can lose all of its PGD accuracy within an epoch while its FGSM accuracy climbs. The
    epoch's accuracy goes into the logs as `ROBUST_ACCURACY` (so the checkpoint records it and picks the best epoch
    by it); a collapse (`capsrobust.training.adversarial.collapsed`) stops the run, and the trainer loads the best
    epoch's weights when it ends, as after any run.

    Args:
        images: `(n, height, width, channels)`, the fixed batch.
        labels: `(n,)` class indices.
        eps: the threat model's budget (the full one, also during an eps warm-up).
        state: the run state (its history holds earlier epochs' accuracies, a resumed run's too).
        nan_guard: the `NanGuard`; nothing is measured after it tripped.
        seed: seeds the attack's random start (the same every epoch).

    Attributes:
        collapse: `(epoch, best_epoch, best, accuracy)` once it tripped, else None.
    """

    def __init__(self, images, labels, eps: float, state: RunState, nan_guard: NanGuard, seed: int = 0):
        super().__init__()
        self.images, self.labels, self.eps = images, labels, float(eps)
        self.state, self.nan_guard, self.seed = state, nan_guard, seed
        self.collapse: tuple[int, int, float, float] | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard.tripped_at is not None or logs is None:
            return
        accuracy = pgd_accuracy(self.model, self.images, self.labels, self.eps, GUARD_STEPS, seed=self.seed)
        logs[ROBUST_ACCURACY] = accuracy
        earlier = [(h.get(ROBUST_ACCURACY, -1.0), h["epoch"]) for h in self.state.history]
        best, best_epoch = max(earlier, default=(-1.0, 0))
        if collapsed(best, accuracy, self.model.num_classes):
            self.collapse = (epoch + 1, best_epoch, best, accuracy)
            self.state.stop_reason = (
                f"{COLLAPSE} at epoch {epoch + 1}: PGD-{GUARD_STEPS} accuracy on {len(self.images)} "
                f"held-out images fell from {best:.3f} (epoch {best_epoch}) to {accuracy:.3f}; stopped, and kept the "
                f"weights of epoch {self.state.best_epoch}")
            self.model.stop_training = True


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
