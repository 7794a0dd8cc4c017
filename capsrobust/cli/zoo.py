"""`capsrobust zoo`: the converged models that ship with the package, and how each was trained."""

import argparse

from capsrobust.cli.args import add_store_arg

HELP = "list the models that ship with capsrobust (the zoo) and how each was trained"
EXAMPLES = """examples:
  capsrobust zoo                                   what ships: accuracy, epochs, CPU time, the command that trained it
  capsrobust attack --model capsnet-small --subset    zoo models work at once (your own entries come first)
  capsrobust zoo add capsnet-small-mnist-20261201-120623-dbf94d   maintainers: copy a store entry into the zoo
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("zoo", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", choices=("list", "add"), default="list",
                        help="list (default), or add: copy a store entry into the package's zoo (from a checkout)")
    parser.add_argument("entry", nargs="?", metavar="ID", help="add: the store entry id")
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from capsrobust.console import console
    from capsrobust.errors import ConfigError
    from capsrobust.store import ModelStore, add_to_zoo

    store = ModelStore(args.store)
    if args.action == "add":
        if not args.entry:
            raise ConfigError("zoo add needs the id of a store entry (see `capsrobust models`)")
        own = {e.id: e for e in store.entries()}  # `add_to_zoo` hashes the one it copies
        if args.entry not in own:
            raise ConfigError(f"no store entry {args.entry!r} in {store.models_dir}")
        console.print(f"shipped {args.entry} in {add_to_zoo(own[args.entry], store.zoo_dir)}")
        return 0
    if args.entry:
        raise ConfigError(f"zoo list takes no entry id; did you mean `capsrobust zoo add {args.entry}`?")
    print_zoo(store.zoo_entries(verify=True), store)
    return 0


def print_zoo(entries, store) -> None:
    from rich.markup import escape
    from rich.table import Table

    from capsrobust.cards import threat_model_summary
    from capsrobust.console import console

    if not entries:
        console.print(f"the zoo at {store.zoo_dir} is empty")
        return
    table = Table(title=f"the zoo ({store.zoo_dir}): converged models, each trained on this project's 2-core CPU")
    for column in ("model", "data set", "trained against", "parameters", "epochs", "CPU time", "test accuracy",
                   "sample (1,000)", "size", "status"):
        table.add_column(column, justify="right" if column in ("parameters", "epochs", "size") else "left")
    total = 0
    for entry in entries:
        card = {} if entry.problem else entry.card
        training, metrics = card.get("training", {}), card.get("metrics", {})
        size = sum(f.stat().st_size for f in entry.path.iterdir() if f.is_file())
        total += size
        test = metrics.get("test_accuracy")
        sample = metrics.get("sample_accuracy")
        table.add_row(
            entry.name, entry.dataset, threat_model_summary(card.get("threat_model")) or "-",
            f"{card.get('parameters', 0):,}", str(training.get("epochs_completed", "")),
            _minutes(training.get("seconds")),
            f"{test:.2%} of {metrics.get('test_images', 0):,}" if isinstance(test, float) else "",
            f"{sample:.1%}" if isinstance(sample, float) else "", f"{size / 2**20:.1f} MB",
            "[red]broken[/]" if entry.problem else "[green]ok[/]")
    console.print(table)
    console.print(f"{len(entries)} models, {total / 2**20:.1f} MB in all", highlight=False)
    for entry in entries:
        if entry.problem:
            console.print(f"[red]broken:[/] {escape(entry.id)}: {escape(entry.problem)}", soft_wrap=True)
        else:
            console.print(f"{escape(entry.id)}: {escape(entry.card.get('command', '(no command recorded)'))}",
                          soft_wrap=True, highlight=False)


def _minutes(seconds) -> str:
    return f"{seconds / 60:.0f} min" if isinstance(seconds, (int, float)) else ""
