"""The `capsrobust` command line. Subcommands live in modules named after them; heavy imports wait until a
subcommand runs, so `--help` answers at once."""

import argparse
import sys

from capsrobust import __version__
from capsrobust.cli import attack, backends, compare, crosscheck, demo, merge, models, test, train, visualize, zoo

COMMANDS = (train, test, models, zoo, attack, compare, merge, crosscheck, demo, visualize, backends)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsrobust",
        description="Adversarial robustness of capsule networks vs CNNs: train, store, attack, compare.")
    parser.add_argument("--version", action="version", version=f"capsrobust {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line (`sys.argv` when None), keeping what was typed in `argv` for the records."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs one command; user errors print one line and return 2, an interrupt returns 130."""
    args = parse_args(argv)
    from capsrobust.backend import silence_known_noise, start_backend_quietly
    from capsrobust.errors import CapsrobustError

    silence_known_noise()  # before the backend starts: TensorFlow reads its log level when imported
    before_devices = getattr(args, "before_devices", None)  # (args) -> None, for commands that set devices up
    try:
        start_backend_quietly(None if before_devices is None else lambda: before_devices(args))
        return args.run(args)
    except CapsrobustError as error:
        from capsrobust.console import err_console

        err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())
