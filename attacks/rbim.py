"""Reconstruction-aware BIM, R-BIM (Frosst, Sabour & Hinton 2018, DARCCC; Qin et al. 2020's reconstructive attack).

The DARCCC detector flags an input whose reconstruction from the predicted class's capsule is far from it. R-BIM is
BIM on an objective that also keeps that distance low, so its successes evade the detector:

    maximise  loss(scores(x'), y) - detector_penalty * ||x' - reconstruction(x')||_2   over ||x' - x||_inf <= eps

with the reconstruction masked by the predicted class, exactly as the detector computes it (targeted: minimise the
target's loss instead). Steps and iterations are Kurakin et al.'s BIM (1/255, `ceil(min(255 eps + 4, 1.25 * 255
eps))`), no random start; with `detector_penalty = 0` it is BIM.

The weight: neither paper gives a value for MNIST (Qin et al. tune it). Its scale matters only against the loss
gradient, since each step takes the sign. Our default, 0.1, was measured on the stored full-MNIST capsnet (1 epoch,
98.66% test; margin loss; eps 0.1; 20 test images; 2-core CPU): BIM fooled 40% of them, 35% undetected; R-BIM with
weight 0.1 fooled 45%, all undetected; with weight 1.0 only 20%. It is recorded in every report (`detector_penalty`);
set it with `--detector-penalty`. R-BIM trades success for stealth, so compare it with BIM by the undetected success
rate.

Where the sweep gives it the detector's threshold (`options["detector_threshold"]`), an image stops at its first
iterate that is both misclassified and below the threshold, the attack's actual aim; without one every step runs
(a later step can still lower the distance) and success is misclassification.
"""

import numpy as np
from keras import ops

from attacks.base import AttackParams
from attacks.iterative import ObjectiveAttack, Success, misclassified_by
from capsrobust.art_bridge import attack_loss, input_gradient
from capsrobust.detection import reconstruction_distances
from capsrobust.models.base import RECONSTRUCTION, SCORES
from capsrobust.ops import safe_norm


def reconstruction_distance(model, images, outputs=None):
    """L2 distance `(batch_size,)` between images `(batch_size, h, w, c)` and their reconstructions from the
    predicted class (the DARCCC distance, differentiable; `outputs` reuses a forward pass already made)."""
    outputs = model(images, training=False) if outputs is None else outputs
    difference = ops.reshape(images - outputs[RECONSTRUCTION], (ops.shape(images)[0], -1))
    return safe_norm(difference, axis=-1)


def rbim_objective(model, loss, detector_penalty: float, targeted: bool = False):
    """R-BIM's per-example objective `(images, one_hot_labels) -> (batch_size,)`, to be raised."""
    def objective(images, labels):
        outputs = model(images, training=False)
        value = loss(labels, outputs[SCORES])
        value = -value if targeted else value
        return value - detector_penalty * reconstruction_distance(model, images, outputs)
    return objective


def fooled_and_undetected(classifier, threshold: float, targeted: bool) -> Success:
    """A `success` test: the real model is fooled and the detector (distance > `threshold` flags) does not flag."""
    fooled = misclassified_by(classifier, targeted)

    def success(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if not len(images):
            return np.zeros(0, dtype=bool)
        distances = reconstruction_distances(classifier.source_model, images, classifier.batch_size)
        return fooled(images, labels) & (distances <= threshold)
    return success


def detection_aware(classifier, params: AttackParams) -> dict:
    """`ObjectiveAttack`'s `success` and `stop_early` for an attack that also keeps the reconstruction distance low."""
    threshold = params.options.get("detector_threshold")
    if threshold is None:
        return {"success": None, "stop_early": False}
    return {"success": fooled_and_undetected(classifier, float(threshold), params.targeted), "stop_early": True}


class ReconstructionAwareBIM(ObjectiveAttack):
    """R-BIM as an ART `EvasionAttack`.

    Args:
        classifier: an ART bridge classifier of a model with a decoder; its attack loss is the classification term.
        params: `AttackParams` with `options["detector_penalty"]`.

    The registry checks that the model has a decoder (`requires`) before it builds one.
    """

    def __init__(self, classifier, params: AttackParams):
        model = classifier.source_model
        weight = float(params.options["detector_penalty"])

        def gradient_for(loss: str):
            def build():
                objective = rbim_objective(model, attack_loss(model, loss), weight, params.targeted)
                return input_gradient(objective, model.image_shape, model.num_classes)
            return classifier.compiled(("rbim", loss, weight, params.targeted), build)

        super().__init__(classifier, params, gradient_for, **detection_aware(classifier, params))
