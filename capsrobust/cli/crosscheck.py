"""`capsrobust crosscheck`: a finished sweep's AutoAttack figures against torchattacks' on the same model and images."""

import argparse

from capsrobust.cli.args import add_store_arg, directory, eps_list, positive_int

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
    parser.add_argument("--models", type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
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

    import numpy as np
    from rich.table import Table

    from capsrobust.console import console
    from capsrobust.crosscheck import ATTACKS, MEMBERS, CrossCheck, check_adversarial, run_torchattacks
    from capsrobust.data import load_dataset
    from capsrobust.errors import ConfigError
    from capsrobust.io import write_json
    from capsrobust.models.predict import predict_batched
    from capsrobust.store import ModelStore
    from capsrobust.sweep.records import read_record

    record = read_record(Path(args.sweep))
    cells = [c for c in record.result.cells if c.attack in ATTACKS and c.transfer_source is None]
    if not cells:
        raise ConfigError(f"{args.sweep} ran no {' or '.join(ATTACKS)}; there is nothing to cross-check")
    if args.models:
        cells = [c for c in cells if c.model_id in args.models or c.model in args.models]
    if args.eps:
        cells = [c for c in cells if c.eps in args.eps]
    if not cells:
        raise ConfigError(f"{args.sweep} has no AutoAttack cell for --models/--eps as given")
    data = record.content["data"]
    first, count = data["first_index"], data["evaluated"]
    subset = data["source"] == "subset"
    dataset = load_dataset(data["name"], data_dir=None if subset else args.data_dir, subset=subset)
    if len(dataset.x_test) != data["test"]:
        raise ConfigError(f"the data loaded ({len(dataset.x_test)} {dataset.name} test images) is not the sweep's "
                          f"({data['test']}, from {data['source']}); give its --data-dir")
    images, labels = dataset.x_test[first:first + count], dataset.y_test[first:first + count]
    store = ModelStore(args.store)
    checks = []
    names = {c.model_id: c.model for c in cells}
    for model_id in dict.fromkeys(c.model_id for c in cells):
        entry = store.resolve(model_id)
        model = store.load(entry)
        correct = record.result.clean[model_id]
        if not np.array_equal(predict_batched(model, images)["scores"].argmax(-1) == labels, correct.correct):
            raise ConfigError(f"{entry.id} does not classify the sweep's images as the sweep recorded: another "
                              f"data directory or changed weights")
        attacked, attacked_labels = images[correct.correct][:args.limit], labels[correct.correct][:args.limit]
        model_cells = [c for c in cells if c.model_id == model_id]
        for attack in dict.fromkeys(c.attack for c in model_cells):
            attack_cells = [c for c in model_cells if c.attack == attack]
            eps_values = [c.eps for c in attack_cells]
            steps, queries = attack_cells[0].attack_steps, (attack_cells[0].attack_options or {}).get("queries", 0)
            console.print(f"torchattacks {attack} on {entry.id}: {len(attacked)} images, eps "
                          f"{', '.join(f'{e:g}' for e in eps_values)}", highlight=False)
            found = run_torchattacks(args.store, entry.id, attacked, attacked_labels,
                                     eps_values, attack, attack_cells[0].norm, steps=steps, queries=queries, seed=args.seed)
            for eps in eps_values:
                theirs = found[eps]
                valid = check_adversarial(attacked, theirs["adversarial"], eps, attack_cells[0].norm)
                fooled = valid & (predict_batched(model, theirs["adversarial"])["scores"].argmax(-1)
                                  != attacked_labels)
                ours = record.result.outcomes[(model_id, attack, eps)].robust[:len(attacked)]
                by = {name: int(np.sum(fooled & (theirs["fooled_by"] == index)))
                      for index, name in enumerate(MEMBERS[attack])}
                checks.append(CrossCheck.pair(model_id, attack, eps, ours, ~fooled, int(np.sum(~valid)), by,
                                              theirs["seconds"]))
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
