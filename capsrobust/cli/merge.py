"""`capsrobust merge`: one report from the shards of a sweep (`--shard K/N`), as if it had run in one process; or
from the reports of different models on the same images, as if one `compare` had run them all."""

import argparse

from capsrobust.cli.args import directory

HELP = ("merge the reports of the shards of one sweep (attack/detect/compare --shard K/N) into one report, or join "
        "reports of different models on the same images (with verdicts between them)")
EXAMPLES = """examples:
  capsrobust attack --model capsnet-small --method autoattack --eps 0.3 --limit 10000 --shard 1/4   (one per job)
  capsrobust merge capsrobust-output/attack-*-shard*of4 --output capsrobust-output/attack-capsnet-small-10000
  capsrobust merge capsrobust-output/attack-capsnet-small-10000 capsrobust-output/attack-cnn-small-10000 \
      --output capsrobust-output/capsnet-small-vs-cnn-small   (the same attacks, eps and images)
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("merge", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=directory, metavar="DIR",
                        help="the report directories: the shards of one sweep, or reports of different models")
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
    from capsrobust.sweep.merge import combine_records
    from capsrobust.sweep.records import read_record

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError(f"--output {output} exists and is not an empty directory; nothing was overwritten")
    reports = list(dict.fromkeys(args.reports))
    result, metadata = combine_records([read_record(Path(d)) for d in reports])
    writable_directory(output)
    report.write_results(result, output, metadata)
    plots.write_figures(result, output)
    data = metadata["data"]
    origin = f"joined from {len(reports)} reports" if "joined_from" in data else f"merged from {len(reports)} shards"
    title = (f"{metadata.get('command', 'sweep')}: {data['evaluated']} {data['name']} test images "
             f"({data['source']}), {origin}, {result.seconds:.0f}s in all")
    print_report(result, title, detection=any(c.detector_threshold is not None for c in result.cells))
    console.print(f"merged results and plots in {output}")
    return 0
