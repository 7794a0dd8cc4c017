"""The attack suite: a registry of named attacks with the literature's parameters, and the capsule-aware attacks.

>>> from attacks import create_attack
>>> attack = create_attack("bim", classifier, eps=0.1)  # classifier: capsrobust.art_bridge.to_art_classifier(model)
>>> attack.record()["steps"]
30
>>> create_attack("vote", classifier, eps=0.1, seed=0).generate(images, labels)  # a capsule model's classifier

Modules: `base` (parameters, input checks, requirements, the base class), `iterative` (the projected-gradient loop
of FGSM, BIM, PGD), `apgd`, `fab`, `square`, `autoattack`, `vote`, `rbim`, `transfer`, and `registry`, which imports them all.
"""

from attacks.base import NORMS, REQUIREMENTS, Attack, AttackParams, params_record, unmet_requirement, validate_inputs
from attacks.registry import (AttackSpec, attack_defaults, create_attack, get_attack_spec, list_attacks,
                              register_attack, resolve_params)

__all__ = ["NORMS", "REQUIREMENTS", "Attack", "AttackParams", "AttackSpec", "attack_defaults", "create_attack",
           "get_attack_spec", "list_attacks", "params_record", "register_attack", "resolve_params",
           "unmet_requirement", "validate_inputs"]
