"""AutoAttack (Croce & Hein, ICML 2020) through ART's `AutoAttack` ensemble, with every member's budget explicit.

Members, run in this order, each only on the images every earlier member failed on (ART's ensemble logic):

- APGD-CE: Auto-PGD on cross-entropy of the scores (for capsule networks, the lengths treated as logits),
  100 iterations, 1 restart, initial step 2 eps (APGD adapts it), random start.
- APGD-DLR: Auto-PGD on the difference-of-logits ratio loss, the same budget. DLR is invariant to the scores'
  shift and scale, which suits capsule lengths.
- Square (Andriushchenko et al. 2020): score-based black-box random search, `queries` iterations (one query each),
  `p_init` 0.8, 1 restart. It needs no gradient, so it catches gradient masking the first two would miss.

This is not the reference "standard" AutoAttack (fra31/auto-attack): that runs APGD-CE (100 iterations, no restart),
*targeted* APGD-DLR over 9 target classes, targeted FAB over 9 targets and Square with 5,000 queries. ART's ensemble
defaults differ again (5 restarts per APGD, DeepFool, Square with 5 restarts). Numbers from this attack are
therefore not the RobustBench / AutoAttack leaderboard's; reports name the members and budgets that ran.

Each APGD member gets its own bridge classifier climbing its loss (`ce`, `dlr`: `capsrobust.art_bridge.LOSSES`)
instead of ART's `loss_type`, which rebuilds a stock TensorFlow or PyTorch estimator (unbatched, eager) and has no
JAX version: this way APGD runs batched and compiled on every backend, with the same losses.
"""

import numpy as np
from art.attacks import EvasionAttack
from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
from art.attacks.evasion.auto_attack import run_attack

from attacks.factories import AttackParams, params_record, validate_inputs
from capsrobust.art_bridge import with_loss
from capsrobust.errors import ConfigError

MEMBERS = ("apgd-ce", "apgd-dlr", "square")
SQUARE_P_INIT = 0.8  # Andriushchenko et al. (2020) and the reference AutoAttack, for L-inf


class AutoAttackEnsemble(EvasionAttack):
    """AutoAttack's ensemble over ART members: each runs on the images all earlier members failed on.

    The loop is ART's (`art.attacks.evasion.auto_attack.run_attack`: attack the still-robust images, keep a result
    only if it is misclassified and inside the eps-ball); ART's `AutoAttack.generate` itself is not used because it
    imports `multiprocess` (for its parallel mode) even when run serially, a package capsrobust does not need.

    Attributes:
        params: the `AttackParams` (APGD iterations and initial step, Square's queries in `options`).
        members: `(name, ART attack, budget description)` in the order they run.
        last_run: after `generate`: per member whether it ran (some image was left for it) and how many images it
            fooled, and how many images survived every member.
    """

    attack_params = EvasionAttack.attack_params
    _estimator_requirements = ()

    def __init__(self, classifier, params: AttackParams, members: list[tuple[str, EvasionAttack, str]]):
        super().__init__(estimator=classifier)
        self.params = params
        self.members = members
        self.targeted = False
        self.last_run: dict = {}

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, h, w, c)`; `y` true labels (integers or one-hot; None: predictions).

        ART's members draw their random starts and Square's squares from numpy's global generator, so it is seeded
        with `params.seed` while they run and restored afterwards.
        """
        images = validate_inputs(x)
        num_classes = self.estimator.nb_classes
        labels = self.estimator.predict(images).argmax(axis=1) if y is None else np.asarray(y)
        one_hot = labels.astype(np.float32) if labels.ndim == 2 else np.eye(num_classes, dtype=np.float32)[labels]
        adversarial = images.copy()
        robust = self.estimator.predict(images).argmax(axis=1) == one_hot.argmax(axis=1)
        state = np.random.get_state()
        if self.params.seed is not None:
            np.random.seed(self.params.seed)
        members = {}
        try:
            for name, attack, _ in self.members:
                before = int(robust.sum())
                if before:
                    adversarial, robust = run_attack(adversarial, one_hot, robust, attack, self.estimator,
                                                     norm=np.inf, eps=self.params.eps)
                members[name] = {"ran": before > 0, "fooled": before - int(robust.sum())}
        finally:
            np.random.set_state(state)
        self.last_run = {"members": members, "survived": int(robust.sum())}
        return adversarial.astype(np.float32)

    def record(self) -> dict:
        return {**params_record(self.params), "loss": getattr(self.estimator, "loss_name", None),
                "art_class": type(self).__name__,
                "members": [f"{name} ({budget})" for name, _, budget in self.members],
                **({"last_run": self.last_run} if self.last_run else {})}


def build_autoattack(classifier, params: AttackParams) -> AutoAttackEnsemble:
    """APGD-CE, APGD-DLR and Square (ART's classes) with `params`' budget, as an AutoAttack ensemble.

    Args:
        classifier: an ART classifier with loss gradients (`capsrobust.art_bridge.to_art_classifier`).
        params: `steps` APGD iterations, `step_size` APGD's initial step (2 eps by default), `options["queries"]`
            Square's iterations; L-inf, untargeted.

    Returns:
        An `AutoAttackEnsemble` (an ART `EvasionAttack`).

    Raises:
        ConfigError: a targeted configuration (the ensemble here is untargeted only).
    """
    if params.targeted:
        raise ConfigError("autoattack runs untargeted here (its members aim at any wrong class). Received: "
                          "targeted=True")
    common = {"norm": np.inf, "eps": params.eps, "batch_size": params.batch_size, "verbose": False}
    apgd = {**common, "eps_step": params.step_size, "max_iter": params.steps, "targeted": False,
            "nb_random_init": 1}
    queries = int(params.options["queries"])
    budget = f"{params.steps} iterations, 1 restart, initial step {params.step_size:g}"
    members = [
        ("apgd-ce", AutoProjectedGradientDescent(with_loss(classifier, "ce"), loss_type=None, **apgd), budget),
        ("apgd-dlr", AutoProjectedGradientDescent(with_loss(classifier, "dlr"), loss_type=None, **apgd), budget),
        ("square", SquareAttack(classifier, max_iter=queries, p_init=SQUARE_P_INIT, nb_restarts=1, **common),
         f"{queries} queries, p_init {SQUARE_P_INIT}, 1 restart"),
    ]
    return AutoAttackEnsemble(classifier, params, members)
