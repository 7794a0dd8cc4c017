"""`capsrobust backends`: the Keras backends installed here, their versions and devices, and the one in use."""

import argparse
import json

from capsrobust.cli.args import positive_float

HELP = "list the Keras backends (tensorflow, jax, torch): installed versions, devices, GPU, the active one"
EXAMPLES = """examples:
  capsrobust backends                                       the table
  capsrobust backends --json                                the same as JSON
  KERAS_BACKEND=jax capsrobust train mnist --subset         run any command on another backend
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("backends", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="seconds to wait for each other backend to start and answer (60)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from dataclasses import asdict

    from rich.markup import escape
    from rich.table import Table

    from capsrobust.backend import report_backends
    from capsrobust.console import console

    reports = report_backends(args.timeout)
    active = next(report.backend for report in reports if report.active)
    if args.json:
        print(json.dumps({"active": active, "backends": [{**asdict(r), "gpu": r.gpu} for r in reports]}, indent=2))
        return 0

    table = Table(title="Keras backends")
    for column in ("backend", "status", "version", "keras", "devices", "GPU"):
        table.add_column(column)
    for report in reports:
        name = f"[bold]{report.backend}[/] (active)" if report.active else report.backend
        if not report.installed:
            table.add_row(name, "[dim]not installed[/]", "", "", "", "")
        elif report.error:
            table.add_row(name, "[red]unusable[/]", report.version, report.keras, f"[red]{escape(report.error)}[/]",
                          "")
        else:
            table.add_row(name, "[green]installed[/]", report.version, report.keras, escape(", ".join(report.devices)),
                          "[green]yes[/]" if report.gpu else "no")
    console.print(table)
    console.print(f"active here: {active}. A command runs on one backend, picked by KERAS_BACKEND (else "
                  f"~/.keras/keras.json), e.g. `KERAS_BACKEND=jax capsrobust train mnist`; stored models load under "
                  f"every backend.", highlight=False, soft_wrap=True)
    return 0
