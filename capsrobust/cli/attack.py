"""`capsrobust attack` and `capsrobust detect`: attack one stored model, with or without the detection columns."""

import argparse

from capsrobust.cli.args import add_entry_args, resolve_entry
from capsrobust.cli.evaluate import add_attack_args, check_methods, load_under_test, run_and_report, sweep_config

ATTACK_HELP = "attack a stored model with FGSM, BIM or PGD and report robust accuracy and detection"
ATTACK_EXAMPLES = """examples:
  capsrobust attack --method bim --eps 0.1                  the best stored capsnet on its own data set
  capsrobust attack --model cnn-baseline --method fgsm --eps 0.05,0.1,0.2,0.3
  capsrobust attack --method pgd --eps 0.3 --steps 100 --step-size 0.01 --random-start --limit 1000
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
    methods = check_methods(args.methods)
    store, entry = resolve_entry(args)
    under_test, dataset = load_under_test(store, entry, args, need_detector=need_detector)
    run_and_report(args.command, [under_test], dataset, sweep_config(args, methods), args,
                   detection=under_test.detector is not None)
    return 0


def run_attack(args) -> int:
    return _run(args, need_detector=False)


def run_detect(args) -> int:
    return _run(args, need_detector=True)
