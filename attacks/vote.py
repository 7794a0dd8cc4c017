"""The vote attack of Gu, Wu & Tresp (ICLR 2021, "Effective and efficient vote attack on capsule networks").

Routing makes a capsule network's gradient poor: the coupling coefficients depend on the input, and attacks through
several routing iterations are weaker and slower. Gu et al. attack the votes instead: with routing skipped, every
child's vote counts equally, so the class capsules become `squash(mean_i u_hat_j|i)` and the attack climbs the
classification loss of their lengths (`CapsNet.vote_scores`). For EM capsules, where the mean pose is not a score,
`EMCapsNet.vote_scores` takes one M-step on uniform assignments and scores the classes as the model does (see there).

Protocol: PGD under an L-inf budget (Gu et al. run the vote loss inside PGD); our defaults are Madry et al.'s MNIST
PGD, 40 steps of 0.01 from a uniform random start. Success is judged on the real model (with routing), and an image
stops moving once the real model misclassifies it (its first successful iterate is kept). Like every gradient attack
here it chains cross-entropy and DLR by default (`attacks.iterative`).

The detection-aware variant (`vote-da`; Gu et al., section 5, after Qin et al. 2020) also keeps the reconstruction
error low, so the DARCCC detector does not flag the result: it climbs
`loss(vote_scores(x'), y) - detector_penalty * ||x' - reconstruction(x')||_2`, the reconstruction being the real model's
from the predicted class, as the detector computes it. Given the detector's threshold it keeps each image's first
iterate that is misclassified and not flagged; without one it runs every step (a later step can still lower the
distance).
"""

import numpy as np

from attacks.base import AttackParams
from attacks.iterative import ObjectiveAttack
from attacks.rbim import detection_aware, reconstruction_distance
from capsrobust.art_bridge import attack_loss, input_gradient


def vote_objective(model, loss, detector_penalty: float = 0.0, targeted: bool = False):
    """The per-example objective of the vote attack, `(images, one_hot_labels) -> (batch_size,)`, to be raised.

    Args:
        model: a capsule model with `supports_votes` (CapsNet, EM capsules).
        loss: `(one_hot_labels, scores) -> (batch_size,)`, e.g. the model's margin loss.
        detector_penalty: weight of the reconstruction distance subtracted (0: the plain vote attack).
        targeted: lower the loss of the target labels instead of raising the true labels' loss.
    """
    def objective(images, labels):
        value = loss(labels, model.vote_scores(images))
        value = -value if targeted else value
        if detector_penalty:
            value = value - detector_penalty * reconstruction_distance(model, images)
        return value
    return objective


class VoteAttack(ObjectiveAttack):
    """The vote attack (and, with `detector_penalty > 0`, its detection-aware variant) as an ART `EvasionAttack`.

    Args:
        classifier: an ART bridge classifier of a capsule model (`capsrobust.art_bridge.to_art_classifier`); its attack
            loss (`loss_name`) is the loss (or chain) the votes are scored with.
        params: `AttackParams` with `options["detector_penalty"]`.

    The registry checks that the model has capsule votes (and, for `vote-da`, a decoder) before it builds one.
    """

    def __init__(self, classifier, params: AttackParams):
        model = classifier.source_model
        weight = float(params.options.get("detector_penalty", 0.0))

        def gradient_for(loss: str):
            def build():
                objective = vote_objective(model, attack_loss(model, loss), weight, params.targeted)
                return input_gradient(objective, model.image_shape, model.num_classes)
            return classifier.compiled(("vote", loss, weight, params.targeted), build)

        super().__init__(classifier, params, gradient_for,
                         **(detection_aware(classifier, params) if weight else {}))


def vote_accuracy(model, images: np.ndarray, labels: np.ndarray, batch_size: int = 128) -> float:
    """Accuracy of the routing-free vote scores on `images` `(n, h, w, c)` with integer `labels` `(n,)`."""
    predictions = np.concatenate([np.asarray(model.vote_scores(images[i:i + batch_size])).argmax(-1)
                                  for i in range(0, len(images), batch_size)])
    return float(np.mean(predictions == labels))
