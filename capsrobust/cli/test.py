"""`capsrobust test`: test accuracy of a stored model."""

import argparse
import time

from capsrobust.cli.args import add_data_args, add_entry_args, add_store_arg, entry_dataset, positive_int, resolve_entry

HELP = "test accuracy of a trained model from the store"
EXAMPLES = """examples:
  capsrobust test --model capsnet --dataset mnist      the best stored capsnet trained on MNIST
  capsrobust test --model capsnet-mnist-20261121-101500-a1b2c3 --subset
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("test", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_entry_args(parser)
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (256)")
    add_data_args(parser)
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    import keras
    from rich.table import Table

    from capsrobust.console import console
    from capsrobust.models.predict import accuracy
    store, entry = resolve_entry(args)
    dataset = entry_dataset(entry, args.data_dir, args.subset)
    images, labels = dataset.x_test[:args.limit], dataset.y_test[:args.limit]
    model = store.load(entry)
    started = time.perf_counter()
    test_accuracy = accuracy(model, images, labels, args.batch_size)
    seconds = time.perf_counter() - started

    table = Table(title=f"test accuracy of {entry.id}")
    for column in ("model", "data set", "images", "accuracy", "error", "img/s"):
        table.add_column(column, justify="right" if column not in ("model", "data set") else "left")
    table.add_row(entry.name, f"{dataset.name} test ({dataset.source})", str(len(images)), f"{test_accuracy:.4f}",
                  f"{100 * (1 - test_accuracy):.2f}%", f"{len(images) / seconds:.0f}")
    trained_on, tested_on = entry.card.get("backend"), keras.backend.backend()
    if trained_on and trained_on != tested_on:  # the weights file is the same under every backend; say so
        table.caption = f"trained under {trained_on}, tested under {tested_on}"
    console.print(table)
    return 0
