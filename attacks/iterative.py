"""The loop every gradient attack here shares: projected steps on an objective, keeping each image's first success.

FGSM (Goodfellow et al. 2015) is one step of size eps, BIM (Kurakin et al. 2017) many small steps from the image, PGD
(Madry et al. 2018) the same from a random point of the eps-ball; the vote attack and R-BIM climb their own
objectives with the same loop. As in CleverHans v4 the loop is a plain function (`projected_gradient_ascent`);
`ObjectiveAttack` wraps it in ART's `EvasionAttack` interface and adds what an evaluation needs on top:

- **the first iterate that succeeds is kept.** An image stops moving at the first step the real model is fooled
  (and, for attacks that also hide from the detector, the detector is evaded), so a later step cannot undo it, as
  in the reference AutoAttack code.
- **a chain of losses.** With the bridge's `"auto"` loss the attack runs on cross-entropy of the scores, then, on the
  images that survived, on the difference-of-logits ratio (DLR), as AutoAttack chains APGD-CE and APGD-DLR. No loss
  of the chain can have a zero gradient on a confidently classified image, unlike the margin loss, whose gradient
  vanishes once every length is beyond its margin.
- **restarts**, each from a new random start and only on the images every earlier run left.

`last_run` says which loss and restart fooled how many images, which the sweep's trust checks read.
"""

from typing import Callable

import numpy as np

from attacks.base import Attack, AttackParams, validate_inputs
from capsrobust.art_bridge import AUTO_LOSSES, scores_and_gradient, with_loss

Gradient = Callable[[np.ndarray, np.ndarray], np.ndarray]
Success = Callable[[np.ndarray, np.ndarray], np.ndarray]
# `(images, labels) -> (gradient (b, h, w, c), success (b,))` from one forward-backward pass: a `Gradient` and a
# `Success` at once, where the success test reads only the scores.
Probe = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def l2_norms(array: np.ndarray) -> np.ndarray:
    """The L2 norm of each image of `array` `(n, h, w, c)`, shaped `(n, 1, 1, 1)` to broadcast against it."""
    return np.sqrt((array.reshape(len(array), -1) ** 2).sum(axis=1)).reshape(-1, *[1] * (array.ndim - 1))


def random_start(x: np.ndarray, eps: float, norm: str, rng: np.random.Generator) -> np.ndarray:
    """A uniform random point of the eps-ball around each image `(n, h, w, c)`, clipped to [0, 1]."""
    if norm == "inf":
        noise = rng.uniform(-eps, eps, size=x.shape)
    else:  # uniform in the L2 ball: a uniform direction, a radius distributed as eps * u^(1/d)
        flat = rng.standard_normal((len(x), int(np.prod(x.shape[1:]))))
        flat /= np.linalg.norm(flat, axis=1, keepdims=True)
        flat *= eps * rng.uniform(size=(len(x), 1)) ** (1.0 / flat.shape[1])
        noise = flat.reshape(x.shape)
    return np.clip(x + noise, 0.0, 1.0).astype(np.float32)


def project(adversarial: np.ndarray, x: np.ndarray, eps: float, norm: str) -> np.ndarray:
    """`adversarial` moved to the nearest point of the eps-ball around `x` (L-inf or L2), then clipped to [0, 1]."""
    delta = adversarial - x
    if norm == "inf":
        delta = np.clip(delta, -eps, eps)
    else:
        delta = delta * np.minimum(1.0, eps / np.maximum(l2_norms(delta), 1e-12))
    return np.clip(x + delta, 0.0, 1.0).astype(np.float32)


def steepest_step(gradient: np.ndarray, norm: str) -> np.ndarray:
    """The unit step of steepest ascent: the gradient's sign (L-inf) or its direction (L2; zero stays zero)."""
    if norm == "inf":
        return np.sign(gradient)
    return gradient / np.maximum(l2_norms(gradient), 1e-12)


def projected_gradient_ascent(gradient: Gradient, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str,
                              step_size: float, steps: int, start: np.ndarray | None = None, batch_size: int = 128,
                              done: Success | None = None, probe: Probe | None = None) -> np.ndarray:
    """`x' <- project(x' + step_size * steepest_step(gradient(x', y)))`, `steps` times, per image until `done`.

    Args:
        gradient: `(images, labels) -> (batch, *image_shape)`, the gradient of the per-example objective to raise.
        x: clean images `(num_images, height, width, channels)` float32 in [0, 1].
        y: labels `(num_images, num_labels)` as the objective takes them (one-hot true labels or targets).
        eps: radius of the ball on the [0, 1] pixel scale.
        norm: `"inf"` (sign steps) or `"2"` (normalised gradient steps).
        step_size: the size of each step.
        steps: the number of steps.
        start: where to start `(num_images, ...)` (a random start), or None for `x` itself.
        batch_size: images per gradient call.
        done: `(adversarial images, labels) -> (batch,)` booleans, or None. An image it marks stops moving, so
            the first iterate that succeeded is the one returned.
        probe: instead of `gradient` and `done` when `steps > 1`, both from one pass at each iterate (`Probe`): the
            pass that tests an iterate also gives the gradient of the next step; the last iterate, whose gradient
            nothing would use, is tested by `done` alone.

    Returns:
        Adversarial images `(num_images, height, width, channels)` float32, within eps of `x` and in [0, 1].
    """
    return ascend(gradient, x, y, eps=eps, norm=norm, step_size=step_size, steps=steps, start=start,
                  batch_size=batch_size, done=done, probe=probe)[0]


def ascend(gradient: Gradient, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str, step_size: float, steps: int,
           start: np.ndarray | None = None, batch_size: int = 128, done: Success | None = None,
           probe: Probe | None = None, finished: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """`projected_gradient_ascent`, also returning what it learnt of each image's success: no pass is spent twice.

    Args:
        finished: `done` of the start `(num_images,)` where the caller knows it already (None: tested here).
        (the rest as `projected_gradient_ascent`)

    Returns:
        `(adversarial images, success)`: `success` `(num_images,)` is `done` (or the probe's test) of each returned
        image; None when neither tested anything.
    """
    adversarial = (x if start is None else start).astype(np.float32, copy=True)
    probed = probe is not None and steps > 1  # for one step, a gradient and a prediction cost less than two probes
    success = np.zeros(len(x), dtype=bool) if done is not None or probed else None
    for first in range(0, len(x), batch_size):
        rows = slice(first, first + batch_size)
        x_batch, y_batch, adv = x[rows], y[rows], adversarial[rows]
        if probed:
            adversarial[rows], success[rows] = _probed_ascent(probe, done, x_batch, y_batch, adv, eps, norm,
                                                              step_size, steps)
            continue
        if done is None:
            active = np.ones(len(adv), dtype=bool)
        else:
            active = ~(done(adv, y_batch) if finished is None else finished[rows])
        for _ in range(steps):
            if not active.any():
                break
            step = steepest_step(gradient(adv[active], y_batch[active]), norm)
            adv[active] = project(adv[active] + step_size * step, x_batch[active], eps, norm)
            if done is not None:
                active[active] = ~done(adv[active], y_batch[active])
        adversarial[rows] = adv
        if success is not None:
            success[rows] = ~active
    return adversarial, success


def _probed_ascent(probe: Probe, done: Success | None, x, y, adv, eps, norm, step_size, steps):
    gradient, finished = probe(adv, y)
    active = ~finished
    for step in range(steps):
        if not active.any():
            break
        adv[active] = project(adv[active] + step_size * steepest_step(gradient[active], norm), x[active], eps, norm)
        if step == steps - 1 and done is not None:
            active[active] = ~done(adv[active], y[active])
        else:
            gradient[active], finished = probe(adv[active], y[active])
            active[active] = ~finished
    return adv, ~active


def loss_chain(loss_name: str) -> tuple[str, ...]:
    """The losses an attack runs one after another: `"auto"` is cross-entropy then DLR; any other loss alone."""
    return AUTO_LOSSES if loss_name == "auto" else (loss_name,)


class ObjectiveAttack(Attack):
    """An ART `EvasionAttack` running `projected_gradient_ascent` over a chain of losses and random restarts.

    Args:
        classifier: the ART bridge classifier (`capsrobust.art_bridge.to_art_classifier`); its `loss_name` picks the
            chain (`loss_chain`).
        params: the attack's `AttackParams` (eps, norm, step size, steps, random start, restarts, seed, options).
        gradient_for: `loss name -> gradient function` of the objective built on that loss. Builders keep what
            they compile on the classifier (`BatchedBridge.compiled`), whose tracing costs a third of an FGSM call
            on cnn-small: every attack on one model, a sweep's cells, traces each once.
        success: `(adversarial images, labels) -> (batch,)`: the image has done what the attack is for (by default
            the real model misclassifies it, or predicts the target). Images stop at their first success.
        stop_early: stop an image at its first success (True), or run every step and judge success at the end (for
            objectives whose later steps still improve a successful image).
        probe_for: `loss name -> Probe` giving `gradient_for(loss)`'s gradient and `success` in one pass, or None.

    Attributes:
        last_run: after `generate`, `{"members": {loss: {"ran", "fooled"}}, "restarts": [fooled per restart],
            "survived": int}`.
    """

    def __init__(self, classifier, params: AttackParams, gradient_for: Callable[[str], Gradient],
                 success: Success | None = None, stop_early: bool = True,
                 probe_for: Callable[[str], Probe] | None = None):
        super().__init__(classifier, params)
        self.losses = loss_chain(classifier.loss_name)
        self.loss_description = "+".join(self.losses)
        self._gradient_for = gradient_for
        self._probe_for = probe_for if stop_early else None
        self._success = success or misclassified_by(classifier, params.targeted)
        self._stop_early = stop_early

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, height, width, channels)` in the eps-ball around `x` and in [0, 1].

        Args:
            x: images `(num_images, height, width, channels)` float32 in [0, 1].
            y: true labels (untargeted; None: the model's predictions) or target labels (targeted, required), as
                integers `(num_images,)` or one-hot `(num_images, num_classes)`.
        """
        images = validate_inputs(x)
        one_hot = self.one_hot_labels(images, y)
        p = self.params
        adversarial = images.copy()
        left = ~self._success(images, one_hot) if len(images) else np.zeros(0, dtype=bool)
        members = {loss: {"ran": False, "fooled": 0} for loss in self.losses}
        fooled_by = np.full(len(images), -1, dtype=np.int8)
        restarts = [0] * p.restarts
        for loss in self.losses:
            gradient = self._gradient_for(loss)
            probe = self._probe_for(loss) if self._probe_for else None
            for restart in range(p.restarts):
                rows = np.flatnonzero(left)
                if not len(rows):
                    break
                rng = self.rng(self.losses.index(loss), restart)
                start = random_start(images[rows], p.eps, p.norm, rng) if p.random_start else None
                # From the clean images, which `left` says have not succeeded, no pass need test the start again.
                moved, won = ascend(
                    gradient, images[rows], one_hot[rows], eps=p.eps, norm=p.norm, step_size=p.step_size,
                    steps=p.steps, start=start, batch_size=p.batch_size,
                    done=self._success if self._stop_early else None, probe=probe,
                    finished=None if start is not None else np.zeros(len(rows), dtype=bool))
                if won is None:
                    won = self._success(moved, one_hot[rows])
                adversarial[rows] = moved
                left[rows[won]] = False
                fooled_by[rows[won]] = self.losses.index(loss)
                members[loss]["ran"] = True
                members[loss]["fooled"] += int(won.sum())
                restarts[restart] += int(won.sum())
        self.last_run = {"members": members, "restarts": restarts, "survived": int(left.sum())}
        self.fooled_by = fooled_by
        return adversarial


def misclassified_by(classifier, targeted: bool) -> Success:
    """A `success` test: the real classifier predicts a wrong class (or, targeted, the target)."""
    def success(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.zeros(0, dtype=bool)
        predicted = classifier.predict(images).argmax(axis=1)
        return predicted == labels.argmax(axis=1) if targeted else predicted != labels.argmax(axis=1)
    return success


def gradient_attack(classifier, params: AttackParams) -> ObjectiveAttack:
    """FGSM, BIM or PGD (by `params`) on the classifier's loss chain: the bridge's own loss gradient for each loss.

    Targeted, the step descends the loss of the target labels (`y` holds the targets).
    """
    sign = -1.0 if params.targeted else 1.0

    def bridge_for(loss: str):
        return classifier.compiled(("bridge", loss), lambda: with_loss(classifier, loss))

    def gradient_for(loss: str) -> Gradient:
        bridge = bridge_for(loss)
        return lambda images, labels: sign * bridge.loss_gradient(images, labels)

    def probe_for(loss: str) -> Probe:
        model = classifier.source_model
        both = classifier.compiled(("scores_and_gradient", loss, params.batch_size), lambda: scores_and_gradient(
            model, bridge_for(loss).per_example_loss, model.num_classes, params.batch_size))

        def probe(images, labels):
            scores, gradient = both(images, labels)
            predicted, wanted = scores.argmax(axis=1), labels.argmax(axis=1)
            return sign * gradient, predicted == wanted if params.targeted else predicted != wanted
        return probe

    return ObjectiveAttack(classifier, params, gradient_for, probe_for=probe_for)
