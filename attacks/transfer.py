"""Black-box transfer attacks: adversarial images crafted white-box on a source model, then shown to a target.

Papernot et al. (2016) and Tramèr et al. (2017): adversarial images often fool models they were not crafted on. A
transfer attack needs no access to the target's gradients, so when it beats a white-box attack on the target, the
target's gradients are masked (Athalye et al. 2018; the sweep checks this). DARCCC (Frosst et al. 2018) reports
capsule networks as weak as CNNs against transferred images.

`TransferAttack` is built on the *source* model's classifier: `generate` runs the base white-box attack (PGD by
default, with the base method's own defaults) there. The sweep evaluates the images on the target and reports the
target's white-box accuracy under the same base attack beside the transfer accuracy.
"""

import numpy as np
from art.attacks import EvasionAttack

from attacks.factories import AttackParams, make_attack, params_record


class TransferAttack(EvasionAttack):
    """Crafts with `options["base"]` on the source classifier; an ART `EvasionAttack` whose estimator is the source.

    Args:
        source_classifier: the source model's ART classifier (`capsrobust.art_bridge.to_art_classifier`).
        params: eps, steps and seed for the base attack; `options["base"]` its method, `options["source"]` the
            source model's name or store id (for the record).

    Attributes:
        base: the configured white-box attack on the source.
    """

    attack_params = EvasionAttack.attack_params
    _estimator_requirements = ()

    def __init__(self, source_classifier, params: AttackParams):
        super().__init__(estimator=source_classifier)
        self.params = params
        self.targeted = params.targeted
        self.base = make_attack(params.options["base"], source_classifier, params.eps, step_size=params.step_size,
                                steps=params.steps, norm=params.norm, targeted=params.targeted,
                                random_start=params.random_start, batch_size=params.batch_size, seed=params.seed,
                                restarts=params.restarts)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, h, w, c)` for the target, crafted on the source (see `make_attack`)."""
        return self.base.generate(x, y, **kwargs)

    def record(self) -> dict:
        return {**params_record(self.params), "loss": getattr(self.estimator, "loss_name", None),
                "art_class": type(self).__name__, "base_art_class": self.base.record()["art_class"]}
