"""Adversarial training inside the compiled train step: PGD (Madry et al. 2018), FGSM from a random start (Wong, Rice
& Kolter 2020) and TRADES (Zhang et al. 2019), for every model in the registry and under every Keras backend.

ART's trainers craft each batch's attack outside the step, through numpy; here the attack is part of the step Keras
compiles (a `tf.function`, a `jax.jit`), so it runs at the speed of training itself. Everything is `keras.ops` except
`input_gradient`, the one place that asks the backend for a gradient with respect to the images.

What each batch carries (`ShiftedBatches` with an `eps_at` schedule): `"eps"`, `(batch_size,)`, the budget of each
image (a ramp during `--eps-warmup`), and `"start"`, `(batch_size, height, width, channels)`, uniform noise in
[-1, 1] drawn in numpy from `(seed, epoch, batch)`. The random start is that noise times eps, so a resumed run draws
the same starts as an uninterrupted one, and no backend random generator has to be threaded through a compiled step.

The attack loss (`attack_objective`): cross-entropy on the scores for CNNs (their training loss); for capsule models
their own classification loss (margin loss on lengths; spread loss for EM) plus cross-entropy on the scores, since
the margin and spread losses are exactly zero, gradient and all, on confidently classified images (DESIGN.md:
"never default to a loss that can have a zero gradient"). The attack runs the model with `training=False`: no dropout
noise in the gradient, and the attack's forward passes do not move batch-norm statistics.
"""

import math
from dataclasses import asdict, dataclass
from typing import Callable

import keras
import numpy as np
from keras import ops

from capsrobust.errors import ConfigError
from capsrobust.losses import softmax_cross_entropy

METHODS = ("pgd", "fgsm-rs", "trades")
NORMS = ("inf",)
DEFAULT_STEPS = {"pgd": 7, "fgsm-rs": 1, "trades": 7}
DEFAULT_BETA = 6.0  # Zhang et al. (2019) on MNIST and CIFAR-10
PGD_STEP_FACTOR = 2.5  # step = 2.5 eps / steps (Madry et al.'s rule of thumb, as in the attack suite)
FGSM_RS_STEP_FACTOR = 1.25  # Wong et al. (2020): one step of 1.25 eps from a uniform random start
ATTACK_LOSSES = {"logits": "cross-entropy", "lengths": "margin loss + cross-entropy on the capsule lengths",
                 "activations": "spread loss + cross-entropy on the capsule activations"}  # `attack_objective`'s
TRADES_START_SCALE = 0.001  # TRADES starts next to x (the KL term has zero gradient at x' = x)

# `capsrobust train`'s --eps-warmup when none is given, for every model (one recipe for both families, so the
# comparison stays fair). Measured (TensorFlow, loaded 2-core CPU, 4,000 MNIST training images, 3 epochs at eps 0.3,
# batch 128): without a ramp, capsnet-small under FGSM-RS and cnn-small under PGD-7 stayed at chance (test PGD-10
# accuracy 7.7% and 12.6%, clean 21.1% and 11.4%); with a 2-epoch ramp both trained (PGD-10 24.4% and 36.2%, clean
# 71.7% and 92.7%).
DEFAULT_EPS_WARMUP = 2

# Catastrophic-overfitting guard: PGD-10 on a fixed validation batch after every epoch.
GUARD_STEPS = 10
GUARD_IMAGES = 256
GUARD_MIN_BEST = 2.0  # in units of chance: below twice chance there is nothing to lose yet (a model that predicts
# one class scores chance, and a run stuck there may switch class and "fall" to half of it)
GUARD_FRACTION = 0.5  # collapse: robust accuracy below this fraction of the best epoch's
COLLAPSE = "catastrophic overfitting"  # how a run's stop reason begins when the guard stopped it


@dataclass(frozen=True)
class ThreatModel:
    """What a model is adversarially trained against; the model card records it (`to_dict`).

    Attributes:
        method: one of `METHODS`.
        eps: the L-inf budget in pixel units of images in [0, 1]; in (0, 1].
        steps: attack iterations per training step (fgsm-rs: 1).
        beta: TRADES's weight of the KL term (None for the other methods).
        eps_warmup: epochs over which eps rises linearly from 0 (0: the full eps from the first batch).
        norm: the budget's norm; only "inf".
    """

    method: str
    eps: float
    steps: int
    beta: float | None = None
    eps_warmup: int = 0
    norm: str = "inf"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown adversarial training method; known: {', '.join(METHODS)}. "
                              f"Received: adversarial={self.method!r}")
        checks = [("eps", isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and 0 < self.eps <= 1),
                  ("steps", isinstance(self.steps, int) and self.steps >= 1),
                  ("beta", self.beta is None or (math.isfinite(self.beta) and self.beta >= 0)),
                  ("eps_warmup", isinstance(self.eps_warmup, int) and self.eps_warmup >= 0),
                  ("norm", self.norm in NORMS)]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"invalid adversarial training setting. Received: {name}={getattr(self, name)!r}")
        if self.method == "fgsm-rs" and self.steps != 1:
            raise ConfigError(f"fgsm-rs takes one step. Received: steps={self.steps}")
        if (self.beta is not None) != (self.method == "trades"):
            raise ConfigError(f"beta is TRADES's weight; {self.method} takes none. Received: beta={self.beta}")

    @classmethod
    def create(cls, method: str, eps: float, steps: int | None = None, beta: float | None = None,
               eps_warmup: int = 0) -> "ThreatModel":
        """A threat model with each method's defaults for what is None (steps 7, fgsm-rs 1; TRADES beta 6)."""
        if method not in METHODS:
            raise ConfigError(f"unknown adversarial training method; known: {', '.join(METHODS)}. "
                              f"Received: adversarial={method!r}")
        steps = DEFAULT_STEPS[method] if steps is None else steps
        beta = (DEFAULT_BETA if beta is None else beta) if method == "trades" else beta
        return cls(method, float(eps), int(steps), None if beta is None else float(beta), int(eps_warmup))

    @property
    def step_factor(self) -> float:
        """Each step's size in units of eps."""
        return FGSM_RS_STEP_FACTOR if self.method == "fgsm-rs" else PGD_STEP_FACTOR / self.steps

    def eps_at(self, epoch: int, batch: int, batches: int) -> float:
        """The budget at batch `batch` of epoch `epoch` (both from 0): a linear ramp over `eps_warmup` epochs."""
        if not self.eps_warmup:
            return self.eps
        return self.eps * min(1.0, (epoch + (batch + 1) / batches) / self.eps_warmup)

    def to_dict(self, score_kind: str | None = None) -> dict:
        """The card's `threat_model`: method, eps, steps, step size, norm, beta, eps warm-up, and the attack's loss
        for a model whose scores are `score_kind` (`CapsrobustModel.score_kind`; None leaves it out)."""
        record = {**asdict(self), "step_size": round(self.step_factor * self.eps, 6)}
        if score_kind is not None:
            record["attack_loss"] = ("KL(softmax(scores(x)) || softmax(scores(x')))" if self.method == "trades"
                                     else ATTACK_LOSSES[score_kind])
        return record


def input_gradient(objective: Callable, images):
    """`d sum(objective(images)) / d images` inside a traced train step, on the running backend.

    The only backend-specific code of adversarial training. Each backend differentiates in its own way: a nested
    `tf.GradientTape` (inside the trainer's own tape: the result is cut off with `stop_gradient` by the caller),
    `jax.grad` (inside the trainer's `jax.value_and_grad`; model variables are the traced values of the trainer's
    stateless scope), `torch.autograd.grad` (which leaves the parameters' `.grad` alone).

    Args:
        objective: `(batch_size, height, width, channels) -> (batch_size,)`, per-example values to climb.
        images: `(batch_size, height, width, channels)`.

    Returns:
        The gradient, same shape as `images`; row `i` is the gradient of `objective`'s `i`-th value.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            total = tf.reduce_sum(objective(images))
        return tape.gradient(total, images)
    if backend == "jax":
        import jax

        return jax.grad(lambda x: jax.numpy.sum(objective(x)))(images)
    if backend == "torch":
        import torch

        with torch.enable_grad():
            leaf = images.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(objective(leaf).sum(), leaf)
        return gradient
    raise ConfigError(f"adversarial training runs on the tensorflow, jax and torch backends. Received: {backend!r}")


def attack_objective(model) -> Callable:
    """The per-example loss `(one_hot_labels, scores) -> (batch_size,)` the in-step attack climbs on `model`."""
    if model.score_kind == "logits":
        return softmax_cross_entropy
    return lambda labels, scores: model.classification_loss(labels, scores) + softmax_cross_entropy(labels, scores)


def projected_gradient_ascent(climb: Callable, images, start, eps, step_factor: float, steps: int):
    """L-inf projected sign-gradient ascent on `climb` from `images + start`, kept in the eps-ball and in [0, 1].

    PGD (Madry et al. 2018) with `steps` steps of `step_factor * eps`; FGSM-RS (Wong et al. 2020) is one step of
    1.25 eps. Keeps the last iterate (what the training literature trains on), not the best.

    Args:
        climb: `(batch_size, height, width, channels) -> (batch_size,)`, the objective to increase.
        images: `(batch_size, height, width, channels)` in [0, 1].
        start: `(batch_size, height, width, channels)`, the random start's offset (already scaled, inside the ball).
        eps: `(batch_size,)` budgets, one per image (a warm-up ramp may make them smaller than the threat model's).
        step_factor: step size in units of eps.
        steps: iterations.

    Returns:
        `(batch_size, height, width, channels)` adversarial images, with no gradient path back to the model.
    """
    images = ops.convert_to_tensor(images)  # torch's `train_on_batch` may hand over numpy arrays
    eps = ops.reshape(ops.cast(eps, images.dtype), (-1, 1, 1, 1))
    low, high = ops.maximum(images - eps, 0.0), ops.minimum(images + eps, 1.0)
    adversarial = ops.clip(images + start, low, high)
    # Unrolled: the same code traces on every backend (a backend loop would need the gradient call inside its body);
    # the compiled step, and its compile time, grow with `steps`.
    for _ in range(steps):
        gradient = input_gradient(climb, ops.stop_gradient(adversarial))
        adversarial = ops.clip(adversarial + step_factor * eps * ops.sign(gradient), low, high)
    return ops.stop_gradient(adversarial)


def _scores(model, images):
    scores, _ = model.classify(images, training=False)
    return scores


def _kl(reference_logits, logits):
    """KL(softmax(reference) || softmax(logits)) per example, `(batch_size,)`."""
    reference_log = ops.log_softmax(reference_logits, axis=-1)
    return ops.sum(ops.exp(reference_log) * (reference_log - ops.log_softmax(logits, axis=-1)), axis=-1)


class AdversarialObjective:
    """The training loss of an adversarially trained model: what `CapsrobustModel.compute_loss` returns in training.

    Args:
        threat: the threat model.
    """

    def __init__(self, threat: ThreatModel):
        self.threat = threat

    def __call__(self, model, inputs: dict, labels, outputs: dict):
        """The mean training loss of the batch, with the attack made here, from the model's current weights.

        Args:
            model: the `CapsrobustModel` being trained.
            inputs: the batch: `"image"` `(batch_size, h, w, c)`, `"label"`, `"eps"` `(batch_size,)` and `"start"`
                `(batch_size, h, w, c)` uniform noise in [-1, 1].
            labels: `(batch_size, num_classes)` one-hot.
            outputs: the model's outputs on the clean images (Keras computed them; TRADES's first term uses them).

        Returns:
            A scalar loss.
        """
        threat = self.threat
        images = ops.convert_to_tensor(inputs["image"])
        eps = ops.cast(inputs["eps"], images.dtype)
        noise = ops.cast(inputs["start"], images.dtype)
        if threat.method == "trades":
            # x' maximises KL(f(x) || f(x')) from a point next to x; the loss is the natural loss + beta * KL, with
            # the gradient through both f(x) and f(x') (Zhang et al.'s reference code). The scores are the KL's
            # logits on every model (for capsules: the lengths, as the cross-entropy attacks treat them).
            reference = ops.stop_gradient(_scores(model, images))
            adversarial = projected_gradient_ascent(
                lambda x: _kl(reference, _scores(model, x)), images, TRADES_START_SCALE * noise, eps,
                threat.step_factor, threat.steps)
            adversarial_outputs = model({"image": adversarial, "label": labels}, training=True)
            natural = model.loss_per_example(images, labels, outputs)
            robust = _kl(outputs["scores"], adversarial_outputs["scores"])
            return ops.mean(natural + threat.beta * robust)
        objective = attack_objective(model)
        adversarial = projected_gradient_ascent(
            lambda x: objective(labels, _scores(model, x)), images, noise * ops.reshape(eps, (-1, 1, 1, 1)), eps,
            threat.step_factor, threat.steps)
        # The model's own training loss at the adversarial images (its decoder reconstructs what it is shown).
        adversarial_outputs = model({"image": adversarial, "label": labels}, training=True)
        return ops.mean(model.loss_per_example(adversarial, labels, adversarial_outputs))


def pgd_accuracy(model, images: np.ndarray, labels: np.ndarray, eps: float, steps: int = GUARD_STEPS,
                 seed: int = 0, batch_size: int = 128) -> float:
    """Accuracy of `model` under L-inf PGD (`steps` x 2.5 eps / steps, one random start), outside training.

    What the catastrophic-overfitting guard measures on a fixed validation batch: cheap, and enough to see
    FGSM training's collapse (Wong et al. 2020), not an evaluation (that is `capsrobust attack`'s).

    Args:
        model: a `CapsrobustModel`.
        images: `(n, height, width, channels)` in [0, 1].
        labels: `(n,)` class indices.
        eps: the budget.
        steps: PGD iterations.
        seed: seeds the random start.
        batch_size: images per pass.

    Returns:
        The fraction of images still classified correctly after the attack.
    """
    objective = attack_objective(model)
    noise = np.random.default_rng(seed).uniform(-1.0, 1.0, images.shape).astype("float32")
    correct = 0
    for begin in range(0, len(images), batch_size):
        x = ops.convert_to_tensor(images[begin:begin + batch_size].astype("float32"))
        y_index = labels[begin:begin + batch_size]
        y = ops.convert_to_tensor(np.eye(model.num_classes, dtype="float32")[y_index])
        budget = ops.full((len(y_index),), eps, dtype="float32")
        adversarial = projected_gradient_ascent(lambda v: objective(y, _scores(model, v)), x,
                                                eps * ops.convert_to_tensor(noise[begin:begin + batch_size]),
                                                budget, PGD_STEP_FACTOR / steps, steps)
        predicted = ops.convert_to_numpy(ops.argmax(_scores(model, adversarial), axis=-1))
        correct += int((predicted == y_index).sum())
    return correct / max(len(images), 1)


def check_pixel_range(dataset) -> None:
    """Refuses a data set whose training pixels are not in [0, 1], where an eps budget means nothing.

    Raises:
        ConfigError: pixels below 0 or above 1.
    """
    low, high = float(np.min(dataset.x_train)), float(np.max(dataset.x_train))
    if low < 0 or high > 1:
        raise ConfigError(f"adversarial training needs pixels in [0, 1] (eps is measured on that scale); "
                          f"{dataset.name} has pixels in [{low:g}, {high:g}]")


def collapsed(best: float, current: float, num_classes: int = 10) -> bool:
    """Whether robust accuracy `current` is a collapse from `best` (catastrophic overfitting, Wong et al. 2020).

    A collapse is a fall below `GUARD_FRACTION` of the best epoch's accuracy, once that best is at least
    `GUARD_MIN_BEST` times chance (`1 / num_classes`): before that there is nothing to lose, and a model stuck at
    chance would trip it by switching the one class it predicts.
    """
    return best >= GUARD_MIN_BEST / num_classes and current < GUARD_FRACTION * best
