"""The one loop the capsule-aware attacks share: L-inf sign-gradient ascent on an objective, projected to the ball.

This is BIM (Kurakin et al. 2017) without a random start and PGD (Madry et al. 2018) with one, on any per-example
objective rather than a classifier's loss: the vote attack climbs a loss on the averaged votes, R-BIM a loss minus
a reconstruction distance. As in CleverHans v4 the attacks are plain functions; `ObjectiveAttack` wraps them in
ART's `EvasionAttack` interface.
"""

from typing import Callable

import numpy as np
from art.attacks import EvasionAttack

from attacks.factories import AttackParams, params_record, validate_inputs
from capsrobust.errors import ConfigError


def sign_gradient_ascent(gradient: Callable[[np.ndarray, np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray, *,
                         eps: float, step_size: float, steps: int, random_start: bool, rng: np.random.Generator,
                         batch_size: int = 128,
                         done: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """L-inf projected sign-gradient ascent: `x' <- clip(proj_eps(x' + step_size * sign(gradient(x', y))), 0, 1)`.

    Args:
        gradient: `(images, labels) -> (batch, *image_shape)`, the gradient of the per-example objective to raise.
        x: clean images `(num_images, height, width, channels)` float32 in [0, 1].
        y: one-hot labels `(num_images, num_classes)` (true labels, or targets when the objective is targeted).
        eps: L-inf radius on the [0, 1] pixel scale.
        step_size: the size of each sign step.
        steps: the number of steps.
        random_start: start from a uniform random point of the eps-ball (clipped to [0, 1]), drawn from `rng`.
        rng: the generator of the random start (the attack's seed makes it deterministic).
        batch_size: images per gradient call.
        done: `(adversarial images, labels) -> (batch,)` booleans, or None. Images it marks (e.g. already
            misclassified by the real model) stop moving: early stopping as in AutoAttack, which saves steps and
            keeps a success a later step could undo.

    Returns:
        Adversarial images `(num_images, height, width, channels)` float32, within eps of `x` and in [0, 1].
    """
    adversarial = x.copy()
    if random_start:  # drawn for all images at once, so the result does not depend on batch_size
        adversarial = np.clip(x + rng.uniform(-eps, eps, size=x.shape), 0.0, 1.0).astype(np.float32)
    for start in range(0, len(x), batch_size):
        rows = slice(start, start + batch_size)
        x_batch, y_batch, adv = x[rows], y[rows], adversarial[rows]
        active = np.ones(len(adv), dtype=bool) if done is None else ~done(adv, y_batch)
        for _ in range(steps):
            if not active.any():
                break
            moved = adv[active] + step_size * np.sign(gradient(adv[active], y_batch[active]))
            adv[active] = np.clip(np.clip(moved, x_batch[active] - eps, x_batch[active] + eps), 0.0, 1.0)
            if done is not None:
                active[active] = ~done(adv[active], y_batch[active])
        adversarial[rows] = adv
    return adversarial.astype(np.float32)


class ObjectiveAttack(EvasionAttack):
    """An ART `EvasionAttack` running `sign_gradient_ascent` on an objective built from an ART classifier.

    Subclasses set `objective` (a compiled gradient), `done` and `options` in `__init__`; this class checks inputs,
    labels and seeds, and records the parameters.

    Attributes:
        params: the attack's `AttackParams` (method, eps, step size, steps, random start, seed, options).
    """

    attack_params = EvasionAttack.attack_params
    _estimator_requirements = ()

    def __init__(self, classifier, params: AttackParams, gradient: Callable, done: Callable | None = None):
        super().__init__(estimator=classifier)
        if params.norm != "inf":
            raise ConfigError(f"{params.method} is an L-inf attack. Received: norm={params.norm!r}")
        self.params = params
        self.targeted = params.targeted
        self._gradient = gradient
        self._done = done

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, height, width, channels)` in the eps-ball around `x` and in [0, 1].

        Args:
            x: images `(num_images, height, width, channels)` float32 in [0, 1].
            y: true labels (untargeted; None: the model's predictions) or target labels (targeted, required), as
                integers `(num_images,)` or one-hot `(num_images, num_classes)`.
        """
        images = validate_inputs(x)
        num_classes = self.estimator.nb_classes
        if y is None:
            if self.targeted:
                raise ConfigError("a targeted attack needs target labels. Received: y=None")
            y = self.estimator.predict(images).argmax(axis=1)
        labels = np.asarray(y)
        one_hot = labels.astype(np.float32) if labels.ndim == 2 else np.eye(num_classes, dtype=np.float32)[labels]
        rng = np.random.default_rng(self.params.seed)
        return sign_gradient_ascent(self._gradient, images, one_hot, eps=self.params.eps,
                                    step_size=self.params.step_size, steps=self.params.steps,
                                    random_start=self.params.random_start, rng=rng,
                                    batch_size=self.params.batch_size, done=self._done)

    def record(self) -> dict:
        """The attack's parameters for a report, with the attack loss and the class that ran."""
        return {**params_record(self.params), "loss": getattr(self.estimator, "loss_name", None),
                "art_class": type(self).__name__}


def misclassified_by(classifier, targeted: bool) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """`done` for `sign_gradient_ascent`: the real classifier already predicts a wrong class (or the target)."""
    def done(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        predicted = classifier.predict(images).argmax(axis=1)
        return predicted == labels.argmax(axis=1) if targeted else predicted != labels.argmax(axis=1)
    return done
