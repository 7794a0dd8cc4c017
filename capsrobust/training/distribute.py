"""Data-parallel training with the backend's own engine: `tf.distribute` (TensorFlow), `keras.distribution` (JAX).

Strategies (`capsrobust train --strategy`, `--devices N`):

- `none`: one device, whatever the backend picks.
- `mirrored`: synchronous data parallelism over the first N local devices (GPUs, else the CPU split into N logical
  devices): TensorFlow's `MirroredStrategy`, JAX's `keras.distribution.DataParallel`.
- `multi-worker`: the same across processes, on one machine or several. Under JAX: `keras.distribution.initialize()`
  joins the processes (the coordinator's address, the process count and this process's id come from
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`, or from a
  cluster manager JAX knows), then `DataParallel` over every process's devices; each process feeds its share of each
  global batch (`process_share`), on a CPU through gloo collectives. Refused under TensorFlow: Keras 3's train step
  fails under `MultiWorkerMirroredStrategy` (see `resolve_strategy`).
- `auto` (default): `mirrored` when `--devices` is above 1, else `none`.

The batch size is global: each step's batch is split across the replicas and their gradients are summed, so a run on
N devices follows the same optimisation path as one device up to float rounding (tested on two logical CPUs).
"""

import contextlib
import os
from typing import Iterator

import keras

from capsrobust.errors import ConfigError

STRATEGIES = ("auto", "none", "mirrored", "multi-worker")


def resolve_strategy(strategy: str, devices: int | None) -> str:
    """The strategy `auto` stands for, after checking the pair.

    Raises:
        ConfigError: an unknown strategy, a device count below 1, several devices with `none`, or `multi-worker`
            under TensorFlow.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if devices is not None and devices < 1:
        raise ConfigError(f"--devices must be at least 1. Received: devices={devices}")
    if strategy == "auto":
        return "mirrored" if devices and devices > 1 else "none"
    if strategy == "none" and devices and devices > 1:
        raise ConfigError(f"--strategy none trains on one device; use --strategy mirrored for devices={devices}")
    if strategy == "multi-worker" and keras.backend.backend() == "tensorflow":
        # Tried with two workers on one machine: once the strategy is made at start-up (TensorFlow configures its
        # collective ops only then), Keras 3's TensorFlow trainer reduces the first batch, a dict, in one collective
        # call, and each step's scalar logs along an axis they do not have; both fail. Upstream:
        # https://github.com/tensorflow/tensorflow/issues/72388 (Keras 2 worked).
        raise ConfigError(f"--strategy multi-worker does not run under TensorFlow with Keras {keras.__version__}: "
                          "its distributed train step fails (tensorflow/tensorflow#72388); use --strategy mirrored "
                          "on one machine")
    return strategy


def prepare_devices(strategy: str, devices: int | None) -> None:
    """Splits a GPU-less host's CPU into `devices` logical devices for `mirrored`; call before the backend starts.

    TensorFlow fixes its logical devices when it first lists them, and XLA (JAX) reads its host device count from
    `XLA_FLAGS` when it starts, so this must run before either does (the CLI calls it before anything else).
    """
    if strategy == "multi-worker" and keras.backend.backend() == "jax":
        _join_processes()  # before JAX computes anything
        return
    if strategy != "mirrored" or not devices or devices < 2:
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            return
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError:  # already initialised: the count stays what it was, and `scope` says if it is short
            pass
    elif backend == "jax":
        flag = f"--xla_force_host_platform_device_count={devices}"
        if flag not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def local_devices() -> list[str]:
    """The devices a `mirrored` run can use: the GPUs, else the (logical) CPUs."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return [d.name for d in tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.local_devices()]
    return []


@contextlib.contextmanager
def scope(strategy: str, devices: int | None) -> Iterator[int]:
    """Builds, compiles and fits a model under `strategy` while the context is open; yields the replica count.

    Raises:
        ConfigError: fewer local devices than asked for, or a strategy the backend cannot run.
    """
    strategy = resolve_strategy(strategy, devices)
    if strategy == "none":
        yield 1
        return
    backend = keras.backend.backend()
    if backend == "tensorflow":
        with _tensorflow_scope(strategy, devices) as replicas:
            yield replicas
    elif backend == "jax":
        with _jax_scope(strategy, devices) as replicas:
            yield replicas
    else:
        raise ConfigError(f"--strategy {strategy} needs the tensorflow or jax backend, not {backend}")


def process_share() -> tuple[int, int]:
    """`(this process's index, the number of processes)` of a JAX multi-worker run, else `(0, 1)`: each process feeds
    the `index`-th of `count` equal slices of every global batch, and only process 0 publishes."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


_joined = False


def _join_processes() -> None:
    """`keras.distribution.initialize()` once per process, with gloo for collectives between CPU processes."""
    global _joined
    if _joined:
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # JAX's CPU default cannot cross processes
    try:
        keras.distribution.initialize()
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"--strategy multi-worker: the processes could not join ({error}); set "
                          "KERAS_DISTRIBUTION_JOB_ADDRESSES, KERAS_DISTRIBUTION_NUM_PROCESSES and "
                          "KERAS_DISTRIBUTION_PROCESS_ID in every process, or run under a cluster manager JAX knows") \
            from None
    _joined = True


def batch_multiple(replicas: int) -> int:
    """What every batch's size must be a multiple of: JAX's `DataParallel` shards each batch evenly over the
    replicas (and raises on a batch of 77 over 2); tf.distribute splits an uneven batch itself."""
    return replicas if keras.backend.backend() == "jax" else 1


def _chosen(available: list, devices: int | None) -> list:
    if devices and len(available) < devices:
        raise ConfigError(f"--devices {devices} asked for more devices than there are: "
                          f"{', '.join(map(str, available))}")
    return available[:devices] if devices else available


@contextlib.contextmanager
def _tensorflow_scope(strategy: str, devices: int | None) -> Iterator[int]:
    import tensorflow as tf

    engine = tf.distribute.MirroredStrategy(devices=_chosen(local_devices(), devices))  # multi-worker: refused
    with engine.scope():
        yield engine.num_replicas_in_sync


@contextlib.contextmanager
def _jax_scope(strategy: str, devices: int | None) -> Iterator[int]:
    import jax

    if strategy == "multi-worker":
        _join_processes()
        chosen = jax.devices()
    else:
        chosen = _chosen(jax.local_devices(), devices)
    previous = keras.distribution.distribution()
    # Each process already feeds only its share (`process_share`): Keras must not shard the data again.
    keras.distribution.set_distribution(keras.distribution.DataParallel(
        devices=chosen, auto_shard_dataset=strategy != "multi-worker"))
    try:
        yield len(chosen)
    finally:
        keras.distribution.set_distribution(previous)
