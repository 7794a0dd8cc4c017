"""`capsrobust attack` and `capsrobust detect`: attack one stored model, with or without the detection columns."""

import argparse

from capsrobust.cli.args import add_entry_args, resolve_entry
from capsrobust.cli.evaluate import (ReportPlan, add_attack_args, check_methods, load_sources, load_under_test,
                                     run_and_report, sweep_config)

ATTACK_HELP = ("attack a stored model (FGSM, BIM, PGD, vote attack, R-BIM, AutoAttack, transfer) and report robust "
               "accuracy and detection")
ATTACK_EXAMPLES = """examples:
  capsrobust attack --method bim --eps 0.1                  the best stored capsnet on its own data set
  capsrobust attack --model cnn-baseline --method fgsm --eps 0.05,0.1,0.2,0.3
  capsrobust attack --method pgd --eps 0.3 --steps 100 --step-size 0.01 --random-start --limit 1000
  capsrobust attack --method vote --eps 0.1                 Gu et al.'s vote attack on the capsule model
  capsrobust attack --method rbim --eps 0.1                 reconstruction-aware BIM: fool and evade the detector
  capsrobust attack --method autoattack --eps 0.3 --limit 1000
  capsrobust attack --method transfer --source cnn-baseline --eps 0.1
"""
DETECT_HELP = "reconstruction-error detection (DARCCC) of attacks on a stored model with a decoder"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("attack", help=ATTACK_HELP, description=ATTACK_HELP, epilog=ATTACK_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_entry_args(parser)
    add_attack_args(parser, methods_default="bim", eps_default="0.1")
    parser.set_defaults(run=run_attack, command="attack")

    parser = subparsers.add_parser("detect", help=DETECT_HELP, description=DETECT_HELP,
                                   epilog="example:\n  capsrobust detect --model capsnet --method bim --eps 0.1",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_entry_args(parser)
    add_attack_args(parser, methods_default="bim", eps_default="0.1")
    parser.set_defaults(run=run_detect, command="detect")


def _run(args, need_detector: bool) -> int:
    from attacks import get_attack_spec
    from capsrobust.errors import ConfigError

    methods = check_methods(args.methods, args)
    store, entry = resolve_entry(args)
    under_test, dataset = load_under_test(store, entry, data_dir=args.data_dir, subset=args.subset,
                                          batch_size=args.batch_size, need_detector=need_detector)
    for method in methods:  # before any attack runs: a vote attack on a CNN is a mistake, not a skipped row
        reason = get_attack_spec(method).unmet(under_test.model)
        if reason:
            raise ConfigError(f"{method} does not apply: {reason}")
    sources = load_sources(store, args.source, entry.dataset) if "transfer" in methods else []
    run_and_report(args.command, [under_test], dataset, sweep_config(args, methods), ReportPlan.from_args(args),
                   detection=under_test.detector is not None, sources=sources)
    return 0


def run_attack(args) -> int:
    return _run(args, need_detector=False)


def run_detect(args) -> int:
    return _run(args, need_detector=True)
