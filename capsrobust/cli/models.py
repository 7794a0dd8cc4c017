"""`capsrobust models`: the model registry and the trained-model store."""

from typing import TYPE_CHECKING

from capsrobust.cli.args import add_store_arg

if TYPE_CHECKING:
    from capsrobust.models.registry import ModelSpec

HELP = "list the registered models and the trained models in the store"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("models", help=HELP, description=HELP)
    add_store_arg(parser)
    parser.set_defaults(run=run)


def recipes_text(spec: "ModelSpec") -> str:
    """A model's recipe, then each data set's own on lines of their own: "12 ep, ...\nfashion-mnist:\n10 ep, ..."."""
    return "\n".join([spec.recipe.summary(), *(f"{dataset}:\n{recipe.summary()}"
                                                for dataset, recipe in spec.dataset_recipes.items())])


def run(args) -> int:
    from rich.markup import escape
    from rich.table import Table

    from capsrobust.cards import threat_model_summary
    from capsrobust.console import console
    from capsrobust.models import create_model, get_model_spec, list_models
    from capsrobust.store import ModelStore

    registry = Table(title="model registry (recipe: what `capsrobust train DATASET --model NAME` does)")
    for column in ("name", "family", "parameters", "recipe", "description"):
        registry.add_column(column, justify="right" if column == "parameters" else "left")
    for name in list_models():
        spec = get_model_spec(name)
        registry.add_row(name, spec.family, f"{create_model(name).count_params():,}", recipes_text(spec),
                         spec.description)
    console.print(registry)

    store = ModelStore(args.store)
    entries = store.entries(verify=True, zoo=True)
    trained = Table(title=f"trained models in {store.models_dir} and the zoo (`capsrobust zoo`)")
    trained.add_column("id", no_wrap=True)
    for column in ("model", "data set", "trained against", "epochs", "val acc", "test acc", "backend", "trained"):
        trained.add_column(column)
    trained.add_column("status", no_wrap=True, min_width=6)  # a narrow terminal must not cut "broken" short
    for entry in entries:
        # A broken entry's card may hold anything: show only what a healthy card guarantees.
        card = {} if entry.problem else entry.card
        metrics, training, data = card.get("metrics", {}), card.get("training", {}), card.get("dataset", {})
        status = "[red]broken[/]" if entry.problem else "[green]ok[/]" + (" (zoo)" if entry.zoo else "")
        source = " (subset)" if data.get("source") == "subset" else ""
        threat = card.get("threat_model")
        trained.add_row(entry.id, entry.name, f"{entry.dataset}{source}", threat_model_summary(threat) or "-",
                        str(training.get("epochs_completed", "")),
                        _fraction(metrics.get("val_accuracy")), _fraction(metrics.get("test_accuracy")),
                        card.get("backend", ""), card.get("created", "")[:16].replace("T", " "), status)
    if entries:
        console.print(trained)
        # Below the table, where a narrow terminal cannot truncate them.
        for entry in entries:
            if entry.problem:
                console.print(f"[red]broken:[/] {escape(entry.id)}: {escape(entry.problem)}", soft_wrap=True)
    else:
        console.print(f"no trained models in {store.models_dir} yet; train one with `capsrobust train mnist`")
    return 0


def _fraction(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""
