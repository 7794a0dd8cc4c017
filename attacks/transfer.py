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

from attacks.base import Attack, AttackParams


class TransferAttack(Attack):
    """Crafts with a white-box attack on the source classifier; an ART `EvasionAttack` whose estimator is the source.

    Args:
        source_classifier: the source model's ART classifier (`capsrobust.art_bridge.to_art_classifier`).
        params: the transfer attack's parameters; `options["base"]` names the base method, `options["source"]` the
            source model's name or store id (for the record).
        base: the white-box attack configured on the source with the same eps, steps and seed (the registry
            builds it).
    """

    def __init__(self, source_classifier, params: AttackParams, base: Attack):
        super().__init__(source_classifier, params)
        self.base = base

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Adversarial images `(num_images, h, w, c)` for the target, crafted on the source (see `create_attack`)."""
        return self.base.generate(x, y, **kwargs)

    def record(self) -> dict:
        base = self.base.record()
        return {**super().record(), "loss": base["loss"], "base_art_class": base["art_class"]}
