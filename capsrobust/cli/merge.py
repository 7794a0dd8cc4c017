"""`capsrobust merge`: one report from the shards of a sweep (`--shard K/N`), as if it had run in one process."""

import argparse

from capsrobust.cli.args import directory

HELP = "merge the reports of the shards of one sweep (attack/detect/compare --shard K/N) into one report"
EXAMPLES = """examples:
  capsrobust attack --model capsnet-small --method autoattack --eps 0.3 --limit 10000 --shard 1/4   (one per job)
  capsrobust merge capsrobust-output/attack-*-shard*of4 --output capsrobust-output/attack-capsnet-small-10000
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("merge", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", type=directory, metavar="DIR", help="the shards' report directories")
    parser.add_argument("--output", type=directory, required=True, metavar="DIR",
                        help="the merged report's directory (new, or empty)")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from capsrobust import plots, report
    from capsrobust.cli.args import writable_directory
    from capsrobust.cli.evaluate import print_report
    from capsrobust.console import console
    from capsrobust.errors import ConfigError
    from capsrobust.sweep.merge import merge_records
    from capsrobust.sweep.records import read_record

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty directory; nothing was overwritten")
    result, metadata = merge_records([read_record(Path(d)) for d in dict.fromkeys(args.shards)])
    writable_directory(output)
    report.write_results(result, output, metadata)
    plots.write_figures(result, output)
    data = metadata["data"]
    title = (f"{metadata.get('command', 'sweep')}: {data['evaluated']} {data['name']} test images "
             f"({data['source']}), merged from {len(args.shards)} shards, {result.seconds:.0f}s in all")
    print_report(result, title, detection=any(c.detector_threshold is not None for c in result.cells))
    console.print(f"merged results and plots in {output}")
    return 0
