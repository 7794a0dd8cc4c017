"""The attack suite: named ART attack factories (FGSM, BIM, PGD) with the literature's parameters.

>>> from attacks import make_attack
>>> attack = make_attack("bim", classifier, eps=0.1)  # classifier: capsrobust.art_bridge.to_art_classifier(model)
>>> attack.record()["steps"]
30
"""

from attacks.factories import (ATTACKS, NORMS, AttackParams, AttackSpec, ConfiguredAttack, attack_defaults,
                               get_attack_spec, make_attack, resolve_params, validate_inputs)

__all__ = ["ATTACKS", "NORMS", "AttackParams", "AttackSpec", "ConfiguredAttack", "attack_defaults", "get_attack_spec",
           "make_attack", "resolve_params", "validate_inputs"]
