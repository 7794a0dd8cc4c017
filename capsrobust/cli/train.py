"""`capsrobust train`: train a registered model and land it in the store."""

import argparse
import dataclasses
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from capsrobust.cli.args import (RECON_WEIGHT_GONE, add_data_args, add_removed_flag, add_store_arg, config_item,
                                 non_negative_float, non_negative_int, positive_float, positive_int, unit_budget)

if TYPE_CHECKING:  # the parser is built without importing Keras
    from capsrobust.store import Entry, ModelStore
    from capsrobust.training import TrainSettings

# `capsrobust.training.adversarial.METHODS` and `capsrobust.models.precision.CONV_DTYPES`, written out so that
# building the parser imports no Keras (a test checks they agree).
ADVERSARIAL_METHODS = ("pgd", "fgsm-rs", "trades")
CONV_DTYPES = ("float32", "bfloat16")

HELP = "train a model from the registry and save it in the trained-model store"
EXAMPLES = """examples:
  capsrobust train mnist                                    CapsNet (paper configuration) on full MNIST
  capsrobust train mnist --subset --model capsnet-small --epochs 3
  capsrobust train fashion-mnist --model cnn-baseline --epochs 5
  capsrobust train mnist --routings 1 --no-reconstruction --epochs 2 --limit 5000
  capsrobust train mnist --model em-capsnet --em-iterations 2   matrix capsules with EM routing
  capsrobust train mnist --resume                           continue the newest interrupted mnist run
  capsrobust train mnist --devices 2                        data parallel over two GPUs (or a CPU split in two)
  capsrobust train mnist --conv-dtype bfloat16              convolutions in bfloat16: faster on AVX512_BF16 CPUs
  capsrobust train smallnorb --data-dir ~/data --model cnn-small --epochs 5
  capsrobust train mnist --model cnn-small --adversarial pgd --eps 0.3      Madry et al. (2018), PGD-7 in each step
  capsrobust train mnist --model capsnet-small --adversarial fgsm-rs --eps 0.3   Wong et al. (2020)
  capsrobust train mnist --model cnn-small --adversarial trades --beta 6    Zhang et al. (2019)
"""


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help=HELP, description=HELP, epilog=EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="mnist, fashion-mnist or smallnorb (smallnorb is never downloaded: get its "
                                        "files from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/)")
    parser.add_argument("--model", help="registered model name (see `capsrobust models`); default capsnet")
    model = parser.add_argument_group("model configuration (unset options keep the model's defaults)")
    model.add_argument("--routings", type=positive_int, help="routing iterations of capsule models (paper: 3)")
    model.add_argument("--em-iterations", type=positive_int, help="EM routing iterations of matrix capsule models "
                                                                  "(paper: 3)")
    model.add_argument("--no-reconstruction", dest="reconstruction", action="store_false", default=None,
                       help="drop the reconstruction decoder")
    model.add_argument("--recon-loss-weight", type=positive_float, metavar="W",
                       help="weight of the decoder's reconstruction loss in the training loss (0.0005)")
    add_removed_flag(model, "--recon-weight", RECON_WEIGHT_GONE)
    model.add_argument("--config", type=config_item, action="append", default=[], metavar="KEY=VALUE",
                       help="any other configuration key of the model, e.g. --config conv_channels=128")
    optim = parser.add_argument_group("training (unset options follow the model's recipe: see `capsrobust models`)")
    optim.add_argument("--epochs", type=positive_int, help="epochs (the recipe's, e.g. 12 for capsnet-small)")
    optim.add_argument("--batch-size", type=positive_int, help="images per step (the recipe's, e.g. 128)")
    optim.add_argument("--lr", type=positive_float, help="Adam learning rate (the recipe's, e.g. 0.001)")
    optim.add_argument("--lr-decay", type=positive_float, help="learning rate factor per epoch (the recipe's, e.g. 0.8)")
    optim.add_argument("--shift", type=non_negative_int,
                       help="random shift augmentation in pixels (the recipe's, e.g. 2); smallnorb uses random 32x32 "
                            "crops instead")
    optim.add_argument("--seed", type=non_negative_int, default=0, help="random seed (default 0)")
    optim.add_argument("--strategy", default="auto",
                       help="data parallelism, auto|none|mirrored|multi-worker: mirrored uses the local GPUs, or the "
                            "CPU split into --devices logical devices; multi-worker (JAX only) joins the processes "
                            "named by KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and _PROCESS_ID; auto is "
                            "mirrored when --devices > 1 (tf.distribute under TensorFlow, keras.distribution under "
                            "JAX)")
    optim.add_argument("--devices", type=positive_int, help="devices for --strategy mirrored (default: all local)")
    optim.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                       help="stop after PATIENCE epochs without a better validation accuracy")
    optim.add_argument("--conv-dtype", choices=CONV_DTYPES, default="float32",
                       help="the convolutions' compute dtype while training (default float32); bfloat16 trains "
                            "1.5-1.8x faster on a CPU with AVX512_BF16; weights, routing and losses stay float32, "
                            "and the stored model computes in float32")
    optim.add_argument("--val-size", type=non_negative_int, help="validation images held out from train "
                                                                 "(default: the last 5,000, or 1/12 of a small set)")
    optim.add_argument("--resume", nargs="?", const="latest", metavar="RUN",
                       help="continue an interrupted run: the newest unfinished one for this data set (and "
                            "--model, if given), or the run id RUN; its saved settings are used, --epochs extends it")
    adversarial = parser.add_argument_group("adversarial training (attacks made inside the compiled train step)")
    adversarial.add_argument("--adversarial", choices=ADVERSARIAL_METHODS, metavar="METHOD",
                             help="pgd (Madry et al. 2018), fgsm-rs (one step of 1.25 eps from a uniform random "
                                  "start, Wong et al. 2020) or trades (CE + beta KL, Zhang et al. 2019)")
    adversarial.add_argument("--eps", type=unit_budget, help="L-inf budget in (0, 1] on [0, 1] pixels (default 0.3)")
    adversarial.add_argument("--attack-steps", type=positive_int, metavar="N",
                             help="pgd and trades: attack iterations per training step, each 2.5 eps / N "
                                  "(default 7; Madry et al. used 40 x 0.01)")
    adversarial.add_argument("--beta", type=non_negative_float, help="trades: weight of the KL term (default 6)")
    adversarial.add_argument("--eps-warmup", type=non_negative_int, metavar="EPOCHS",
                             help="raise eps linearly from 0 over the first EPOCHS epochs (default 2, at most --epochs "
                                  "minus 1: without it, short runs of capsnet-small and cnn-small at eps 0.3 stayed "
                                  "at chance)")
    add_data_args(parser)
    add_store_arg(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress display")
    parser.set_defaults(run=run, before_devices=_prepare_devices)


def _prepare_devices(args) -> None:
    from capsrobust.errors import ConfigError
    from capsrobust.training.distribute import prepare_devices, resolve_strategy

    try:
        strategy = resolve_strategy(args.strategy, args.devices)
    except ConfigError:
        return  # reported, in one line, when the training settings are checked
    prepare_devices(strategy, args.devices)


def run(args) -> int:
    from capsrobust.console import err_console
    from capsrobust.store import ModelStore

    store = ModelStore(args.store)
    if args.resume:
        resume_training(store, args.dataset, args.resume, model_name=args.model, epochs=args.epochs,
                        devices=args.devices, strategy=None if args.strategy == "auto" else args.strategy,
                        data_dir=args.data_dir, quiet=args.quiet)
        return 0
    model_name = args.model or "capsnet"
    flags = {"routings": args.routings, "em_iterations": args.em_iterations, "reconstruction": args.reconstruction,
             "recon_weight": args.recon_loss_weight}
    overrides = {**dict(args.config), **{key: value for key, value in flags.items() if value is not None}}
    settings = settings_from_args(model_name, args)
    if settings.eps_warmup and settings.eps_warmup != args.eps_warmup:
        err_console.print(f"eps warm-up: {settings.eps_warmup} epochs, the default (--eps-warmup 0 turns it off)",
                          highlight=False)
    train_new(store, args.dataset, model_name, settings, overrides=overrides, subset=bool(args.subset),
              limit=args.limit, val_size=args.val_size, data_dir=args.data_dir,
              command=shlex.join(["capsrobust", *args.argv]), quiet=args.quiet)
    return 0


def train_new(store: "ModelStore", dataset_name: str, model_name: str, settings: "TrainSettings", *,
              overrides: dict | None = None, subset: bool = False, limit: int | None = None,
              val_size: int | None = None, data_dir: str | None = None, command: str,
              quiet: bool = False) -> "Entry | None":
    """Trains a new `model_name` on `dataset_name` with `settings` (a `TrainSettings`) and publishes it in `store`.

    Args:
        overrides: model configuration keys over the model's defaults (checked before any data is read).
        subset, limit, val_size, data_dir: which images, as `capsrobust.data.load_dataset` takes them.
        command: the command that trains this model again, for its card.
        quiet: no progress display.

    Returns:
        The new store `Entry` (None in the processes other than 0 of a multi-worker run).
    """
    from capsrobust.data import load_dataset
    from capsrobust.models import create_model, model_config

    overrides = overrides or {}
    config = model_config(model_name, **overrides)  # an unknown model or key fails before any data is read
    spec = {"model": model_name, "config": config, "settings": dataclasses.asdict(settings),
            "data": {"subset": subset, "limit": limit, "val_size": val_size}, "command": command}
    dataset = load_dataset(dataset_name, data_dir=data_dir, subset=subset, val_size=val_size, limit=limit)
    if settings.adversarial is not None:
        from capsrobust.training.adversarial import check_pixel_range

        check_pixel_range(dataset)
    spec["config"] = _fit_config(model_name, overrides, dataset)
    create_model(model_name, **spec["config"])  # a value the model rejects fails here, not in a new run
    spec["dataset"] = dataset.describe()
    return _train_and_publish(store, store.new_run(spec), spec, dataset, settings, quiet)


def resume_training(store: "ModelStore", dataset_name: str, run: str = "latest", *, model_name: str | None = None,
                    epochs: int | None = None, devices: int | None = None, strategy: str | None = None,
                    data_dir: str | None = None, quiet: bool = False) -> "Entry":
    """Continues the unfinished run `run` (an id, or "latest": the newest on `dataset_name`, of `model_name` if
    given) with its saved settings, `epochs`, `devices` and `strategy` replacing them where given; publishes it and
    returns the new store `Entry`."""
    from capsrobust.console import err_console
    from capsrobust.data import load_dataset
    from capsrobust.errors import StoreError
    from capsrobust.training import TrainSettings

    run_dir, spec = _find_run(store, dataset_name, run, model_name)
    given = {"epochs": epochs, "devices": devices, "strategy": strategy}
    try:
        settings = TrainSettings(**{**spec["settings"], **{k: v for k, v in given.items() if v is not None}})
    except TypeError as error:
        raise StoreError(f"{run_dir / 'run.json'}: unusable training settings ({error}); "
                         f"this run cannot be resumed") from None
    err_console.print(f"resuming run {run_dir.name}")
    data, recorded = spec["data"], spec.get("dataset", {})
    source = Path(recorded.get("source") or "")
    if data_dir is None and source.is_absolute() and source.is_dir():
        data_dir = str(source)  # the directory the run read its images from: a resume reads the same ones
    dataset = load_dataset(recorded.get("name", dataset_name), data_dir=data_dir,
                           subset=data["subset"], val_size=data["val_size"], limit=data["limit"])
    return _train_and_publish(store, run_dir, spec, dataset, settings, quiet)


def recipe_settings(model_name: str, dataset: str, *, epochs: int | None = None, batch_size: int | None = None,
                    learning_rate: float | None = None, lr_decay: float | None = None, max_shift: int | None = None,
                    adversarial: str | None = None, eps_warmup: int | None = None, **rest) -> "TrainSettings":
    """The `TrainSettings` of a new run: each optimisation setting given, else the model's recipe for `dataset`;
    `rest` goes to `TrainSettings` as it is (seed, strategy, eps, ...)."""
    from capsrobust.models import get_model_spec
    from capsrobust.training import TrainSettings

    given = {"epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "lr_decay": lr_decay,
             "max_shift": max_shift}
    recipe = get_model_spec(model_name).recipe_for(dataset)
    optimisation = {**recipe.settings(), **{k: v for k, v in given.items() if v is not None}}
    if adversarial and eps_warmup is None:
        from capsrobust.training.adversarial import DEFAULT_EPS_WARMUP

        # Without it, short runs stayed at chance (adversarial.py); never so long that no epoch trains at eps.
        eps_warmup = min(DEFAULT_EPS_WARMUP, optimisation["epochs"] - 1)
    return TrainSettings(**optimisation, adversarial=adversarial, eps_warmup=eps_warmup, **rest)


def settings_from_args(model_name: str, args: argparse.Namespace) -> "TrainSettings":
    """`recipe_settings` from the `train` command's flags."""
    return recipe_settings(model_name, args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                           learning_rate=args.lr, lr_decay=args.lr_decay, max_shift=args.shift,
                           adversarial=args.adversarial, eps_warmup=args.eps_warmup, seed=args.seed,
                           early_stopping=args.early_stopping, strategy=args.strategy, devices=args.devices,
                           eps=args.eps, attack_steps=args.attack_steps, beta=args.beta, conv_dtype=args.conv_dtype)


def _fit_config(model_name: str, overrides: dict, dataset) -> dict:
    """The model's configuration for `dataset`: the data set's image shape, number of classes and `model_defaults`
    (each only where the model takes that key), then the user's `overrides` on top.

    Raises:
        ConfigError: an explicit `image_shape` or `num_classes` that does not fit the data set.
    """
    from capsrobust.data.datasets import DATASETS
    from capsrobust.errors import ConfigError
    from capsrobust.models import get_model_spec, model_config

    takes = get_model_spec(model_name).parameters()
    fitted = {"image_shape": list(dataset.input_shape), "num_classes": dataset.num_classes,
              **DATASETS[dataset.name].model_defaults}
    explicit = {k: v for k, v in overrides.items() if v is not None}
    config = model_config(model_name, **{**{k: v for k, v in fitted.items() if k in takes}, **explicit})
    if tuple(config["image_shape"]) != dataset.input_shape or config["num_classes"] != dataset.num_classes:
        raise ConfigError(f"model config does not fit {dataset.name}: image_shape={config['image_shape']}, "
                          f"num_classes={config['num_classes']} (the data set has image_shape="
                          f"{list(dataset.input_shape)}, num_classes={dataset.num_classes})")
    return config


def _sample_accuracy(model, dataset, test_accuracy: float) -> dict:
    """Accuracy on the test images of the sample bundled with the package (MNIST and Fashion-MNIST), recorded so
    that anyone can check a shipped model against its card without the full data set; {} for other data sets."""
    from capsrobust.data import load_dataset
    from capsrobust.data.datasets import SUBSET_DIR
    from capsrobust.models.predict import accuracy

    if not (SUBSET_DIR / dataset.name).is_dir():
        return {}
    if dataset.source == "subset":  # trained on the sample: its test images are the ones just measured
        return {"sample_accuracy": test_accuracy, "sample_images": len(dataset.x_test)}
    sample = load_dataset(dataset.name, subset=True)
    return {"sample_accuracy": accuracy(model, sample.x_test, sample.y_test), "sample_images": len(sample.x_test)}


def _find_run(store, dataset_name: str, run: str, model_name: str | None):
    from capsrobust.errors import ConfigError

    if run == "latest":
        runs = store.unfinished_runs(model=model_name, dataset=dataset_name)
        what = f"unfinished {model_name + ' ' if model_name else ''}run on {dataset_name}"
    else:
        runs = [(d, s) for d, s in store.unfinished_runs() if d.name == run]
        what = f"unfinished run {run!r}"
    if not runs:
        named = store.runs_dir / run
        if run != "latest" and named.is_dir() and store.read_run(named) is None:
            raise ConfigError(f"{named / 'run.json'} is missing, unreadable or incomplete; this run cannot be resumed")
        raise ConfigError(f"no {what} to resume in {store.runs_dir}")
    return runs[0]


def _train_and_publish(store, run_dir, spec, dataset, settings, quiet: bool) -> "Entry | None":
    from rich.table import Table

    from capsrobust.cards import build_card
    from capsrobust.console import console, err_console
    from capsrobust.detection import ReconstructionDetector, reconstruction_distances
    from capsrobust.errors import StoreError
    from capsrobust.models.predict import accuracy
    from capsrobust.training import fit
    from capsrobust.training.adversarial import COLLAPSE, GUARD_STEPS, pgd_accuracy
    from capsrobust.training.distribute import process_share

    err_console.print(f"training {spec['model']} on {dataset.name} ({len(dataset.x_train)} train / "
                      f"{len(dataset.x_val)} val / {len(dataset.x_test)} test images, source {dataset.source}); "
                      f"run {run_dir.name}")
    progress_console = None if quiet else err_console
    try:
        result = fit(spec["model"], spec["config"], dataset, settings, run_dir, console=progress_console)
    except KeyboardInterrupt:
        from capsrobust.errors import CapsrobustError

        raise CapsrobustError(f"interrupted; completed epochs are checkpointed in {run_dir}; continue with "
                              f"`capsrobust train {dataset.name} --resume {run_dir.name}`") from None
    index, count = process_share()
    if index:  # a multi-worker run: every process holds the same weights, and process 0 publishes them
        err_console.print(f"process {index} of {count}: trained; process 0 publishes the model (this process's "
                          f"checkpoints: {run_dir})", highlight=False)
        return None
    test_accuracy = accuracy(result.model, dataset.x_test, dataset.y_test)
    state = result.state
    threat = settings.threat_model()
    metrics = {"val_accuracy": state.best_val_accuracy, "test_accuracy": test_accuracy,
               "test_images": len(dataset.x_test), **_sample_accuracy(result.model, dataset, test_accuracy)}
    if threat is not None:
        # A training check on the first 1,000 test images, not an evaluation: `capsrobust attack` is that.
        images, labels = dataset.x_test[:1000], dataset.y_test[:1000]
        metrics.update({"val_pgd_accuracy": state.best_val_robust_accuracy,
                        "test_pgd_accuracy": pgd_accuracy(result.model, images, labels, threat.eps, GUARD_STEPS),
                        "test_pgd_images": len(images),
                        "pgd_check": f"PGD-{GUARD_STEPS}, step 0.25 eps, one random start, loss as in training"})
    detector = None
    if result.model.has_decoder and len(dataset.x_val):
        detector = ReconstructionDetector.fit(reconstruction_distances(result.model, dataset.x_val)).to_dict()
    card = build_card(
        model_name=spec["model"], config=spec["config"], model=result.model, dataset=dataset.describe(),
        training={**dataclasses.asdict(settings), "replicas": result.replicas, "epochs_completed": state.epoch,
                  "best_epoch": state.best_epoch, "stop_reason": state.stop_reason,
                  "seconds": round(state.seconds, 1), "images_per_second": round(result.images_per_second, 1),
                  "history": state.history},
        metrics=metrics, detector=detector, command=spec.get("command"),
        threat_model=None if threat is None else threat.to_dict(result.model.score_kind))
    try:
        entry = store.publish(run_dir, result.model, card)
    except StoreError as error:
        raise StoreError(f"{error}; the trained run is kept in {run_dir}: publish it with `capsrobust train "
                         f"{dataset.name} --resume {run_dir.name}` once the store is writable") from None
    table = Table(title=f"trained {entry.id}")
    for column in ("model", "data set", "epochs", "best epoch", "val accuracy", "test accuracy", "img/s", "time"):
        table.add_column(column)
    row = [spec["model"], f"{dataset.name} ({dataset.source})", str(state.epoch), str(state.best_epoch),
           f"{state.best_val_accuracy:.4f}", f"{test_accuracy:.4f}", f"{result.images_per_second:.0f}",
           f"{state.seconds:.0f}s"]
    if threat is not None:
        table.add_column(f"test PGD-{GUARD_STEPS} eps {threat.eps:g}")
        row.append(f"{metrics['test_pgd_accuracy']:.4f} ({metrics['test_pgd_images']})")
    table.add_row(*row)
    console.print(table)
    if threat is not None and progress_console is None and state.stop_reason.startswith(COLLAPSE):
        console.print(state.stop_reason, highlight=False)  # without --quiet the trainer said it when it stopped
    console.print(f"stored in {entry.path}")
    return entry

