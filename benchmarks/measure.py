"""Compiling, differentiating and measuring kernels the same way on each Keras backend, for the benchmark suites.

TensorFlow runs kernels as `tf.function` graphs (as the trainer and the ART bridge do) and reports peak memory from
its allocator; JAX runs them under `jax.jit` and reports the compiled call's buffer sizes.
"""

import time
from typing import Callable, Sequence

import keras
import numpy as np


class CompiledStep:
    """One kernel call, forward only or forward plus backward, compiled for the Keras backend.

    Args:
        function: `(*inputs) -> output` or a tuple of outputs, on `keras.ops` tensors.
        probes: one array per output, broadcastable to it: the backward pass differentiates
            `sum_k sum(output_k * probe_k)` with respect to every input, so every output element gets its own weight.
        backward: run the backward pass too.
        jit: under TensorFlow, compile with XLA (`jit_compile=True`); JAX always does.
    """

    def __init__(self, function: Callable, probes: Sequence[np.ndarray], backward: bool, jit: bool = False):
        def outputs_of(*inputs):
            outputs = function(*inputs)
            return outputs if isinstance(outputs, tuple) else (outputs,)

        def objective(*inputs):
            return sum(keras.ops.sum(o * p) for o, p in zip(outputs_of(*inputs), probes))

        self.backend = keras.backend.backend()
        if self.backend == "tensorflow":
            import tensorflow as tf

            def forward_backward(*inputs):
                with tf.GradientTape() as tape:
                    tape.watch(inputs)
                    value = objective(*inputs)
                return value, tape.gradient(value, inputs)

            self._step = tf.function(forward_backward if backward else outputs_of, jit_compile=jit)
        elif self.backend == "jax":
            import jax

            self._step = jax.jit((lambda *inputs: jax.value_and_grad(objective, argnums=tuple(range(len(inputs))))(
                *inputs)) if backward else outputs_of)
        else:
            raise NotImplementedError(f"the benchmarks run on the tensorflow and jax backends, not {self.backend}")

    def __call__(self, *inputs):
        """Runs the step; the results are computed (not pending) when it returns."""
        results = self._step(*inputs)
        if self.backend == "jax":
            import jax

            results = jax.block_until_ready(results)
        return results

    def peak_bytes(self, *inputs) -> int | None:
        """Peak memory of one call above what was allocated before it (the inputs), after a warm-up call.

        TensorFlow: its allocator's peak on the first GPU, else the CPU (whose allocator keeps statistics only as the
        BFC allocator, `TF_CPU_ALLOCATOR_USE_BFC=true`). JAX: the compiled call's temporary buffers
        plus its outputs (the compiler's plan, which is what the device will allocate).
        """
        self(*inputs)
        if self.backend == "tensorflow":
            import tensorflow as tf

            device = (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name
            try:
                tf.config.experimental.reset_memory_stats(device)
            except ValueError:
                raise RuntimeError(f"TensorFlow keeps no memory statistics for {device}: on a CPU, set "
                                   f"TF_CPU_ALLOCATOR_USE_BFC=true before it starts (benchmarks/conftest.py "
                                   f"does)") from None
            before = tf.config.experimental.get_memory_info(device)["current"]
            self(*inputs)
            return int(tf.config.experimental.get_memory_info(device)["peak"] - before)
        stats = self._step.lower(*inputs).compile().memory_analysis()
        return None if stats is None else int(stats.temp_size_in_bytes + stats.output_size_in_bytes)


def timed_rounds(benchmark, step: CompiledStep, inputs: list, target_seconds: float = 1.0) -> int | None:
    """Benchmarks `step(*inputs)` after compiling it, with as many rounds (3 to 20) as fit in about
    `target_seconds`; returns its peak memory (`CompiledStep.peak_bytes`)."""
    step(*inputs)  # compiles
    started = time.perf_counter()
    step(*inputs)
    rounds = int(np.clip(target_seconds / max(time.perf_counter() - started, 1e-4), 3, 20))
    benchmark.pedantic(step, args=tuple(inputs), rounds=rounds, iterations=1)
    return step.peak_bytes(*inputs)


def to_device(arrays: Sequence[np.ndarray]) -> list:
    """Numpy arrays as backend tensors, so that timings do not include the host-to-device copy."""
    return [keras.ops.convert_to_tensor(a) for a in arrays]


def training_steps(name: str, dataset, batch_size: int, steps: int, threat=None,
                   conv_dtype: str = "float32") -> Callable[[], None]:
    """`steps` optimizer steps of model `name` on shift-augmented batches, fed and compiled as the trainer does.

    The model is built with seed 0 and its first (compiling) step has run, so every call of the result is timed work.
    With `threat` (a `capsrobust.training.adversarial.ThreatModel`), each step is adversarial training's, the attack
    made inside it, as the trainer sets it up; `conv_dtype` is the trainer's `--conv-dtype`.
    """
    from capsrobust.models import create_model
    from capsrobust.models.precision import compute_convolutions_in
    from capsrobust.training import seed_everything
    from capsrobust.training.augment import ShiftedBatches

    seed_everything(0)
    model = create_model(name)
    compute_convolutions_in(model, conv_dtype)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile="auto")
    batches = ShiftedBatches(dataset.x_train, dataset.y_train, dataset.num_classes, batch_size, max_shift=2, seed=0)
    if threat is not None:
        from capsrobust.training.adversarial import AdversarialObjective

        model.training_objective = AdversarialObjective(threat)
        batches.eps_at = lambda epoch, batch: threat.eps
    fed = [batches[i] for i in range(steps)]
    model.train_on_batch(*fed[0])

    def run() -> None:
        for inputs, labels in fed:
            model.train_on_batch(inputs, labels)

    return run
