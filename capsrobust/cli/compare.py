"""`capsrobust compare`: capsule models against CNNs, every attack and eps, one report."""

import argparse

from capsrobust.cli.args import name_list
from capsrobust.cli.evaluate import add_attack_args, check_methods, load_under_test, run_and_report, sweep_config

HELP = "compare capsule models with CNNs: every attack and eps, robust accuracy and detection in one report"
EXAMPLES = """examples:
  capsrobust compare mnist                                  best stored capsule model vs best stored CNN
  capsrobust compare mnist --models capsnet,cnn-baseline --eps 0.1,0.3 --limit 500
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="mnist or fashion-mnist: models trained on it are compared")
    parser.add_argument("--models", type=name_list, help="model names or entry ids, comma-separated (default: the "
                                                         "best stored capsule model and the best stored CNN)")
    add_attack_args(parser, methods_default="fgsm,bim,pgd", eps_default="0.05,0.1,0.2,0.3", limit_default=500)
    parser.set_defaults(run=run, command="compare")


def default_models(store, dataset: str) -> list:
    """The best healthy entry of each family trained on `dataset`."""
    from capsrobust.errors import StoreError

    best = {}
    for entry in store.entries():
        if entry.problem or entry.dataset != dataset:
            continue
        family = entry.card.get("family", "?")
        if family not in best or entry.val_accuracy > best[family].val_accuracy:
            best[family] = entry
    if not best:
        raise StoreError(f"no trained models on {dataset} in {store.models_dir}; train some with "
                         f"`capsrobust train {dataset}` or run `capsrobust demo`")
    return [best[f] for f in sorted(best)]


def run(args) -> int:
    from capsrobust.data import list_datasets
    from capsrobust.errors import ConfigError
    from capsrobust.store import ModelStore

    if args.dataset not in list_datasets():
        raise ConfigError(f"unknown data set (known: {', '.join(list_datasets())}). Received: {args.dataset!r}")
    methods = check_methods(args.methods)
    store = ModelStore(args.store)
    entries = [store.resolve(name, dataset=args.dataset) for name in args.models] if args.models \
        else default_models(store, args.dataset)
    loaded = [load_under_test(store, entry, args) for entry in entries]
    run_and_report(args.command, [m for m, _ in loaded], loaded[0][1], sweep_config(args, methods), args)
    return 0
