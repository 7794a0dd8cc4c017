"""`capsrobust demo`: the whole pipeline offline, in minutes on a CPU: a short training run on the bundled subset,
then the zoo's converged capsule network and CNN compared under attack on the subset's test images."""

import argparse

from capsrobust.cli.args import add_store_arg, directory, eps_list, positive_int, writable_directory

HELP = ("offline demo: train a small CapsNet briefly on the bundled subset, then compare the zoo's converged "
        "capsnet-small and cnn-small under attack")
TRAINED_MODEL = "capsnet-small"
ZOO_MODELS = ("capsnet-small", "cnn-small")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=1, help="epochs of the demo's training run (1)")
    parser.add_argument("--limit", type=positive_int, default=200, help="test images to attack (200)")
    parser.add_argument("--output", type=directory, metavar="DIR",
                        help="where the result directory goes (./capsrobust-output)")
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from capsrobust.cli.compare import DEFAULT_EPS, SUITES, compare_models
    from capsrobust.cli.evaluate import ReportPlan
    from capsrobust.cli.train import recipe_settings, train_new
    from capsrobust.console import console
    from capsrobust.store import ModelStore
    from capsrobust.sweep import SweepConfig

    writable_directory(args.output or "capsrobust-output")  # before minutes of training, not after
    store = ModelStore(args.store)
    # The zoo's models, found before training: a missing or damaged zoo fails now, in one line.
    zoo = [store.resolve(name, dataset="mnist", zoo_only=True) for name in ZOO_MODELS]
    console.rule(f"the trainer: {TRAINED_MODEL}, {args.epochs} epoch(s) on the bundled MNIST subset")
    train_new(store, "mnist", TRAINED_MODEL, recipe_settings(TRAINED_MODEL, "mnist", epochs=args.epochs), subset=True,
              command=f"capsrobust train mnist --subset --model {TRAINED_MODEL} --epochs {args.epochs}")
    console.rule("the zoo's converged capsule network and CNN under FGSM, BIM and PGD")
    for entry in zoo:
        metrics = entry.card["metrics"]
        console.print(f"{entry.name}: {metrics['test_accuracy']:.2%} on the {metrics['test_images']:,} MNIST test "
                      f"images, trained by `{entry.card.get('command', '?')}`", highlight=False, soft_wrap=True)
    # `capsrobust compare mnist --subset --models <the zoo's> --limit N`, with its defaults.
    config = SweepConfig(methods=tuple(SUITES["standard"].split(",")), eps_values=eps_list(DEFAULT_EPS),
                         skip_inapplicable=True)
    compare_models(store, zoo, config, ReportPlan(limit=args.limit, output=args.output), subset=True)
    return 0
