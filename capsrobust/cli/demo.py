"""`capsrobust demo`: the whole pipeline offline on the bundled subset, in minutes on a CPU."""

import argparse

from capsrobust.cli.args import add_store_arg, directory, positive_int, writable_directory

HELP = "offline demo: train a small CapsNet and a CNN with the same decoder on the bundled subset, then compare them"
DEMO_MODELS = ("capsnet-small", "cnn-recon")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=3, help="training epochs per model (3)")
    parser.add_argument("--limit", type=positive_int, default=200, help="test images to attack (200)")
    parser.add_argument("--output", type=directory, metavar="DIR",
                        help="where the result directory goes (./capsrobust-output)")
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from capsrobust.cli import parse_args
    from capsrobust.cli.train import train_model
    from capsrobust.console import console

    writable_directory(args.output or "capsrobust-output")  # before minutes of training, not after
    store = ["--store", args.store] if args.store else []
    ids = []
    for model in DEMO_MODELS:
        console.rule(f"training {model} on the bundled MNIST subset")
        train_args = parse_args(["train", "mnist", "--subset", "--model", model, "--epochs", str(args.epochs),
                                 *store])
        ids.append(train_model(train_args).id)
    console.rule("capsule vs CNN under FGSM, BIM and PGD")
    output = ["--output", args.output] if args.output else []
    compare_args = parse_args(["compare", "mnist", "--subset", "--models", ",".join(ids), "--limit", str(args.limit),
                               *store, *output])
    return compare_args.run(compare_args)
