"""The attack suite: named ART attack factories with the literature's parameters, and the capsule-aware attacks.

>>> from attacks import make_attack
>>> attack = make_attack("bim", classifier, eps=0.1)  # classifier: capsrobust.art_bridge.to_art_classifier(model)
>>> attack.record()["steps"]
30
>>> make_attack("vote", classifier, eps=0.1, seed=0).generate(images, labels)  # a capsule model's classifier
"""

from attacks.factories import (ATTACKS, NORMS, AttackParams, AttackSpec, attack_defaults,
                               get_attack_spec, make_attack, params_record, resolve_params, validate_inputs)

__all__ = ["ATTACKS", "NORMS", "AttackParams", "AttackSpec", "attack_defaults", "get_attack_spec",
           "make_attack", "params_record", "resolve_params", "validate_inputs"]
