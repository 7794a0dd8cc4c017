"""`capsrobust crosscheck`: a finished sweep's AutoAttack figures against torchattacks' on the same model and images."""

import argparse

from capsrobust.cli.args import add_store_arg, directory, eps_list, name_list, positive_int

HELP = ("check a sweep's AutoAttack figures against an independent implementation (torchattacks, under Keras's "
        "torch backend) on the same models, images and eps")
EXAMPLES = """examples:
  capsrobust crosscheck capsrobust-output/compare-...   every model and eps the sweep ran AutoAttack at
  capsrobust crosscheck DIR --eps 0.1 --limit 200 --models capsnet-small   a first look: one eps, 200 images
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("crosscheck", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=directory, metavar="DIR", help="a finished sweep's report directory")
    parser.add_argument("--models", type=name_list,
                        help="model names or entry ids in the sweep, comma-separated (default: all)")
    parser.add_argument("--eps", type=eps_list, help="eps values of the sweep to check (default: all)")
    parser.add_argument("--limit", type=positive_int, help="attacked images per model (default: all of the sweep's)")
    parser.add_argument("--seed", type=int, default=0, help="torchattacks' seed (0)")
    parser.add_argument("--data-dir", type=directory, metavar="DIR",
                        help="where the sweep's data set is (as given to the sweep; not needed for --subset sweeps)")
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from rich.table import Table

    from capsrobust.console import console, err_console
    from capsrobust.crosscheck import crosscheck_sweep
    from capsrobust.io import write_json
    from capsrobust.store import ModelStore, model_name_of
    from capsrobust.sweep.records import read_record

    record = read_record(Path(args.sweep))
    checks = crosscheck_sweep(record, ModelStore(args.store), args.data_dir, args.models, args.eps, args.limit,
                              args.seed, say=lambda line: err_console.print(line, highlight=False))
    names = {c.model_id: model_name_of(c.model_id) for c in record.result.cells}  # cnn-small-at, as reports say
    table = Table(title=f"{args.sweep}: the sweep's attack vs torchattacks on the same images")
    for column in ("model", "attack", "eps", "images", "sweep", "torchattacks", "only sweep fooled",
                   "only torchattacks fooled", "McNemar p", "torchattacks fooled by", "time"):
        table.add_column(column)
    for check in checks:
        table.add_row(names[check.model_id], check.attack, f"{check.eps:g}", str(check.images),
                      f"{check.ours_robust / check.images:.1%}", f"{check.theirs_robust / check.images:.1%}",
                      str(check.only_ours_fooled), str(check.only_theirs_fooled), f"{check.p_value:.3g}",
                      ", ".join(f"{k} {v}" for k, v in check.theirs_fooled_by.items() if v), f"{check.seconds:.0f}s")
    console.print(table)
    for check in checks:
        console.print(f"{names[check.model_id]} at eps {check.eps:g}: {check.verdict}"
                      + (f"; {check.invalid} torchattacks images left the eps-ball" if check.invalid else ""),
                      highlight=False)
    path = Path(args.sweep) / "crosscheck.json"
    write_json(path, {"command": "capsrobust " + " ".join(args.argv), "checks": [c.to_dict() for c in checks]})
    console.print(f"written to {path}")
    return 0
