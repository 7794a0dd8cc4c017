"""`capsrobust visualize`: pose manipulation grids of a stored capsule model (or cnn-recon)."""

import argparse
from pathlib import Path

from capsrobust.cli.args import (add_data_args, add_entry_args, add_store_arg, directory, entry_dataset,
                                 non_negative_int, positive_int, resolve_entry, writable_directory)

HELP = "pose manipulation grids: each capsule dimension stepped from -0.25 to 0.25 and decoded"
EXAMPLES = """examples:
  capsrobust visualize                                   the best stored capsnet, the first 4 test images
  capsrobust visualize --model capsnet-small --images 2 --first 10 --output figures
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("visualize", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_entry_args(parser)
    parser.add_argument("--images", type=positive_int, default=4, help="how many test images (4)")
    parser.add_argument("--first", type=non_negative_int, default=0, help="index of the first test image (0)")
    parser.add_argument("--output", type=directory, metavar="DIR",
                        help="where the grids go (default ./capsrobust-output)")
    add_data_args(parser)
    add_store_arg(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from capsrobust import plots
    from capsrobust.console import console
    from capsrobust.errors import CapsrobustError, ConfigError
    from capsrobust.pose_grid import OFFSETS, pose_perturbations
    store, entry = resolve_entry(args)
    dataset = entry_dataset(entry, args.data_dir, args.subset)
    if args.first >= len(dataset.x_test):
        raise ConfigError(f"--first {args.first} is past the {len(dataset.x_test)} test images")
    images = dataset.x_test[args.first:args.first + args.images]
    labels = dataset.y_test[args.first:args.first + args.images]
    out_dir = writable_directory(Path(args.output or "capsrobust-output") / f"visualize-{entry.id}")
    reconstructions, predictions = pose_perturbations(store.load(entry), images)

    paths = []
    try:
        for i, (grid, label, predicted) in enumerate(zip(reconstructions, labels, predictions)):
            index = args.first + i
            title = f"{entry.name}: test image {index}, label {label}, pose of predicted class {predicted}"
            paths.append(plots.pose_grid(grid, OFFSETS, title, out_dir / f"pose-grid-{index}.png"))
    except OSError as error:
        raise CapsrobustError(f"cannot write grids to {out_dir}: {error.strerror}") from None
    console.print(f"{len(paths)} pose grids ({reconstructions.shape[1]} dimensions x {len(OFFSETS)} offsets) "
                  f"in {out_dir}")
    return 0
