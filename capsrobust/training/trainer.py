"""The shared trainer: one `fit` for every model in the registry, on whatever device the Keras backend sees."""

import importlib.util
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from capsrobust.data import Dataset
from capsrobust.errors import ConfigError, TrainingDiverged
from capsrobust.models import CapsrobustModel, create_model
from capsrobust.models.precision import CONV_DTYPES, compute_convolutions_in
from capsrobust.training.adversarial import GUARD_IMAGES, AdversarialObjective, ThreatModel, check_pixel_range
from capsrobust.training.augment import ShiftedBatches, share_of_batches
from capsrobust.training.callbacks import (ROBUST_ACCURACY, EpochCheckpoint, InterruptRelay, MarginSchedule, NanGuard,
                                           RichProgress, RobustnessGuard)
from capsrobust.training.checkpoint import (RunState, best_weights, load_state, remove_temporaries, restore_checkpoint,
                                           save_state)
from capsrobust.training.distribute import batch_multiple, process_share, resolve_strategy, scope


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; the defaults follow Sabour et al. (2017) and the best public Keras reimplementation.

    Attributes:
        epochs: total epochs of the run (a resumed run continues up to this).
        batch_size: images per step.
        learning_rate: Adam's initial learning rate.
        lr_decay: the learning rate is multiplied by this after every epoch.
        max_shift: shift augmentation, in pixels (the paper uses up to 2); unused on a data set with `train_crop`,
            whose training batches are random crops instead.
        seed: seeds weights, shuffling, augmentation and dropout.
        early_stopping: stop after this many epochs without a better validation accuracy (None: never); with
            `adversarial`, validation PGD accuracy, which also picks the epoch whose weights the run keeps.
        strategy: data parallelism, one of `capsrobust.training.distribute.STRATEGIES`; `batch_size` is global.
        devices: how many devices `mirrored` uses (None: all local ones).
        adversarial: adversarial training method, one of `capsrobust.training.adversarial.METHODS` (None: plain).
        eps: its L-inf budget, in (0, 1] (default 0.3, MNIST's standard).
        attack_steps: attack iterations per step (default: pgd and trades 7, fgsm-rs 1).
        beta: TRADES's weight of the KL term (default 6).
        eps_warmup: epochs over which eps rises linearly from 0 (default 0: none).
        conv_dtype: the convolutions' compute dtype while training, one of `capsrobust.models.precision.CONV_DTYPES`
            (weights and everything else stay float32; the trained model computes in float32).
    """

    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_decay: float = 0.9
    max_shift: int = 2
    seed: int = 0
    early_stopping: int | None = None
    strategy: str = "auto"
    devices: int | None = None
    adversarial: str | None = None
    eps: float | None = None
    attack_steps: int | None = None
    beta: float | None = None
    eps_warmup: int | None = None
    conv_dtype: str = "float32"

    def __post_init__(self):
        resolve_strategy(self.strategy, self.devices)
        if self.threat_model() is not None and self.strategy == "multi-worker":  # a bad combination fails here
            # The robustness guard attacks a validation batch between epochs outside the compiled step, and Keras
            # cannot return predictions that span processes.
            raise ConfigError("--adversarial does not run with --strategy multi-worker yet; use --strategy mirrored "
                              "on one machine")
        checks = [("epochs", self.epochs >= 1), ("batch_size", self.batch_size >= 1),
                  ("learning_rate", 0 < self.learning_rate < 1), ("lr_decay", 0 < self.lr_decay <= 1),
                  ("max_shift", 0 <= self.max_shift <= 8), ("seed", self.seed >= 0),
                  ("early_stopping", self.early_stopping is None or self.early_stopping >= 1),
                  ("conv_dtype", self.conv_dtype in CONV_DTYPES)]
        for name, ok in checks:
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise ConfigError(f"invalid training setting. Received: {name}={value!r}")

    def threat_model(self) -> ThreatModel | None:
        """What the run trains against, or None for plain training.

        Raises:
            ConfigError: an unknown method, a value out of range, or attack options without a method.
        """
        options = {"eps": self.eps, "attack_steps": self.attack_steps, "beta": self.beta,
                   "eps_warmup": self.eps_warmup}
        if self.adversarial is None:
            given = [f"{name}={value!r}" for name, value in options.items() if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} only apply to adversarial training: add --adversarial "
                                  f"pgd|fgsm-rs|trades")
            return None
        return ThreatModel.create(self.adversarial, 0.3 if self.eps is None else self.eps, self.attack_steps,
                                  self.beta, self.eps_warmup or 0)


@dataclass
class TrainResult:
    """A finished run: the model with its best-validation weights loaded, and the run's record."""

    model: CapsrobustModel
    state: RunState
    run_dir: Path
    images_per_second: float
    replicas: int = 1


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy and the backend; under TensorFlow also makes its kernels deterministic."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
        return
    # Not `set_random_seed` here: it also seeds TensorFlow whenever it is installed, importing it (seconds, and its
    # start-up noise on stderr) into a JAX or torch process that never uses it. What it does for these backends is
    # seed Python's generator, from which Keras draws every seed left unset (initializers, dropout), numpy's and
    # torch's. Its other effect, resetting Keras's global SeedGenerator, does not matter: capsrobust never draws from
    # it (every `keras.random` call and layer has its own seed).
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def _one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype="float32")[labels]


def fit(model_name: str, model_config: dict, dataset: Dataset, settings: TrainSettings, run_dir: Path,
        console=None) -> TrainResult:
    """Trains (or resumes training) `model_name` on `dataset`, checkpointing every epoch into `run_dir`.

    If `run_dir` holds a checkpoint, training continues after its last completed epoch with the saved weights,
    optimizer state and learning-rate schedule; epoch `e` sees the same batches either way.

    Args:
        model_name: a registered model name.
        model_config: its full configuration (`capsrobust.models.model_config`).
        dataset: training, validation and test splits.
        settings: optimisation settings.
        run_dir: directory for checkpoints, `log.csv` and TensorBoard logs.
        console: a `rich` console for progress, or None for silence.

    Returns:
        The trained model (best validation epoch) and the run's record.

    Raises:
        TrainingDiverged: the loss became NaN or infinite; the last good checkpoint stays in `run_dir`.
    """
    for split in ("x_train", "x_val"):
        if not np.isfinite(getattr(dataset, split)).all():
            raise ConfigError(f"{dataset.name} {split} contains NaN or Inf pixels; refusing to train on it")
    threat = settings.threat_model()
    if threat is not None:
        check_pixel_range(dataset)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(settings.seed)
    with scope(settings.strategy, settings.devices) as replicas:
        model = create_model(model_name, **model_config)
        compute_convolutions_in(model, settings.conv_dtype)
        batches = ShiftedBatches(dataset.x_train, dataset.y_train, dataset.num_classes, settings.batch_size,
                                 settings.max_shift, settings.seed, crop=dataset.train_crop,
                                 multiple_of=batch_multiple(replicas), share=process_share())
        if threat is not None:
            # The attack is made in the compiled train step (`CapsrobustModel.compute_loss`), at the eps each
            # batch carries.
            batches.eps_at = lambda epoch, batch: threat.eps_at(epoch, batch, len(batches))
            model.training_objective = AdversarialObjective(threat)
        schedule = keras.optimizers.schedules.ExponentialDecay(settings.learning_rate, decay_steps=len(batches),
                                                               decay_rate=settings.lr_decay, staircase=True)
        model.compile(optimizer=keras.optimizers.Adam(schedule), jit_compile="auto")

        state = load_state(run_dir)
        remove_temporaries(run_dir)
        if state.epoch:
            restore_checkpoint(run_dir, model, state)
        if not state.finished and state.epoch < settings.epochs:
            _run_epochs(model, dataset, settings, run_dir, state, batches, console, threat)
        state.finished = True
        state.stop_reason = state.stop_reason or f"completed {state.epoch} epochs"
        save_state(run_dir, state)
        model.load_weights(best_weights(run_dir, state))  # the optimizer too: harmless, the run is over
    if process_share()[1] > 1 or settings.conv_dtype != "float32":
        # Across processes, its weights span every process's devices, and what it predicts would too (Keras cannot
        # fetch that); in mixed precision, its compiled functions compute convolutions in bfloat16. The same weights
        # in a float32 model of this process alone, for the test-set evaluation and the store.
        model = create_model(model_name, **model_config)
        model.load_weights(best_weights(run_dir, state))
    images_per_second = state.epoch * len(dataset.x_train) / state.seconds if state.seconds else float("nan")
    return TrainResult(model, state, run_dir, images_per_second, replicas)


def _tensorboard_available() -> bool:
    """TensorBoard logs need TensorFlow's summary writer and the `tensorboard` package (absent on JAX-only hosts)."""
    if keras.backend.backend() != "tensorflow":
        return False
    return importlib.util.find_spec("tensorboard") is not None


def _run_epochs(model, dataset, settings, run_dir, state, batches, console, threat=None) -> None:
    guard, relay = NanGuard(batches), InterruptRelay()
    robustness = None
    if threat is not None:
        # Before the checkpoint: it adds the epoch's PGD accuracy to the logs the checkpoint records and picks the
        # best epoch by. A fixed batch: validation images, or the first training images if none are held out.
        images, labels = (dataset.x_val, dataset.y_val) if len(dataset.x_val) else (dataset.x_train, dataset.y_train)
        robustness = RobustnessGuard(images[:GUARD_IMAGES], labels[:GUARD_IMAGES], threat.eps, state, guard,
                                     seed=settings.seed)
    monitor = "val_accuracy" if threat is None else ROBUST_ACCURACY
    callbacks = [relay, guard, *([robustness] if robustness else []),
                 EpochCheckpoint(run_dir, state, guard, settings.early_stopping, monitor=monitor),
                 keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True)]
    if hasattr(model, "spread_margin"):
        # The ramp is fixed when the run starts and kept in its state, so a resume that extends --epochs continues
        # the planned ramp instead of stretching it.
        if not state.margin_schedule:
            start, end = model.margin_range
            state.margin_schedule = {"start": start, "end": end, "epochs": settings.epochs}
        callbacks.append(MarginSchedule(model.spread_margin, **state.margin_schedule, steps=len(batches)))
    if _tensorboard_available():
        callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False))
    if console is not None:
        callbacks.append(RichProgress(console, settings.epochs, len(batches), settings.batch_size))
    validation = None
    if len(dataset.x_val):
        # The validation batches must split evenly over the replicas too (see ShiftedBatches.multiple_of).
        kept = len(dataset.x_val) - (len(dataset.x_val) % settings.batch_size) % batches.multiple_of
        val_images, val_labels = dataset.x_val[:kept], _one_hot(dataset.y_val[:kept], dataset.num_classes)
        index, count = batches.share
        if count > 1:  # this process's share of every validation batch, as for training (ShiftedBatches.share)
            val_images, val_labels = (share_of_batches(array, settings.batch_size, index, count)
                                      for array in (val_images, val_labels))
        validation = ({"image": val_images, "label": val_labels}, val_labels)
    # One `fit` call per epoch: the batch stream learns its epoch before Keras creates (and starts prefetching
    # from) that epoch's iterator, so epoch e's batches never depend on when a callback happened to run.
    with relay.watching():
        for epoch in range(state.epoch, settings.epochs):
            batches.epoch = epoch
            # shuffle=False: the batches already come in an order drawn from (seed, epoch); Keras would shuffle
            # them again with Python's global `random`, whose state a resumed process does not have.
            model.fit(batches, validation_data=validation, validation_batch_size=settings.batch_size // batches.share[1],
                      epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks, verbose=0, shuffle=False)
            relay.on_epoch_end(epoch)  # an interrupt swallowed after the last callback of the epoch
            if model.stop_training or guard.tripped_at is not None:
                break
    if robustness is not None and robustness.collapse and console is not None:
        console.print(state.stop_reason, highlight=False)
    if guard.tripped_at is not None:
        epoch, batch = guard.tripped_at
        kept = f"kept the checkpoint of epoch {state.epoch} in {run_dir}" if state.epoch else "no epoch had completed"
        if guard.cause == "inputs":
            raise TrainingDiverged(f"NaN/Inf values in the training inputs at epoch {epoch}, batch {batch}; training "
                                   f"stopped and {kept} (the data or augmentation produced them)")
        raise TrainingDiverged(f"loss became NaN/Inf at epoch {epoch}, batch {batch}; training stopped and {kept} "
                               f"(try a lower --lr)")


def settings_dict(settings: TrainSettings) -> dict:
    return asdict(settings)
