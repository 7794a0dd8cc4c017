"""`capsrobust compare`: capsule models against CNNs, every attack and eps, one report."""

import argparse
from pathlib import Path

from capsrobust.cli.args import name_list
from capsrobust.cli.evaluate import (ReportPlan, add_attack_args, check_methods, load_sources, load_under_test,
                                     run_and_report, sweep_config)

HELP = "compare capsule models with CNNs: every attack and eps, robust accuracy and detection in one report"
EXAMPLES = """examples:
  capsrobust compare mnist                                  best stored capsule model vs best stored CNN
  capsrobust compare mnist --models capsnet,cnn-baseline --eps 0.1,0.3 --limit 500
  capsrobust compare mnist --suite strong                   every attack, transfer between the models, worst case
"""
DEFAULT_EPS = "0.05,0.1,0.2,0.3"
SUITES = {"standard": "fgsm,bim,pgd",
          "strong": "fgsm,bim,pgd100,vote,vote-da,rbim,autoattack,transfer"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("compare", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="mnist or fashion-mnist: models trained on it are compared")
    parser.add_argument("--models", type=name_list, help="model names or entry ids, comma-separated (default: the "
                                                         "best stored capsule model and the best stored CNN)")
    parser.add_argument("--suite", choices=tuple(SUITES), default="standard",
                        help="attack set when --method is not given: standard (fgsm, bim, pgd) or strong (adds "
                             "PGD-100, vote attacks, R-BIM, AutoAttack and transfer between the compared models; "
                             "attacks that do not apply to a model, e.g. the vote attack on a CNN, are skipped and "
                             "listed)")
    add_attack_args(parser, methods_default=None, eps_default=DEFAULT_EPS)
    parser.set_defaults(run=run, command="compare")


def default_models(store, dataset: str) -> list:
    """The best healthy undefended entry of each family trained on `dataset`: the user's own, else the zoo's."""
    from capsrobust.errors import StoreError
    from capsrobust.store import is_defended, preference

    def rank(entry):
        return (not entry.zoo, preference(entry))

    best = {}
    for entry in store.entries(zoo=True):
        if entry.problem or entry.dataset != dataset or is_defended(entry):
            continue
        family = entry.card.get("family", "?")
        if family not in best or rank(entry) > rank(best[family]):
            best[family] = entry
    if not best:
        raise StoreError(f"no trained models on {dataset} in {store.models_dir} or the zoo; train some with "
                         f"`capsrobust train {dataset}` or run `capsrobust demo`")
    return [best[f] for f in sorted(best)]


def run(args) -> int:
    from capsrobust.data import list_datasets
    from capsrobust.errors import ConfigError
    from capsrobust.store import ModelStore

    if args.dataset not in list_datasets():
        raise ConfigError(f"unknown data set (known: {', '.join(list_datasets())}). Received: {args.dataset!r}")
    methods = check_methods(args.methods or SUITES[args.suite], args)
    store = ModelStore(args.store)
    entries = [store.resolve(name, dataset=args.dataset) for name in args.models] if args.models \
        else default_models(store, args.dataset)
    compare_models(store, entries, sweep_config(args, methods, skip_inapplicable=True), ReportPlan.from_args(args),
                   data_dir=args.data_dir, subset=args.subset, sources=args.source)
    return 0


def compare_models(store, entries: list, config, plan: ReportPlan, *, data_dir: str | None = None,
                   subset: bool | None = None, sources: list[str] | None = None) -> Path:
    """Runs the sweep `config` (a `SweepConfig`) on the store `entries`, evaluated on the first entry's data set,
    prints the report and writes it as `plan` says; returns its directory.

    Transfer attacks craft on each of the other entries, and on `sources` (model names or ids) if given.
    """
    loaded = [load_under_test(store, entry, data_dir=data_dir, subset=subset, batch_size=config.batch_size)
              for entry in entries]
    under_test = [model for model, _ in loaded]
    crafted_on = (under_test + load_sources(store, sources, entries[0].dataset)) if "transfer" in config.methods \
        else []
    return run_and_report("compare", under_test, loaded[0][1], config, plan, sources=crafted_on)
