"""Argument types and argument groups shared by the subcommands. Bad values fail in argparse with one line."""

import argparse
import json
import math
import tempfile
from pathlib import Path
from typing import Callable


def _number_type(convert: Callable[[str], float], accept: Callable[[float], bool], expected: str):
    """An argparse type: `convert(text)`, refused in one line ("expected <expected>, got 'text'") unless `accept`ed."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # what argparse would name the type in its own messages
    return parse


positive_int = _number_type(int, lambda value: value >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda value: value >= 0, "an integer >= 0")
positive_float = _number_type(float, lambda value: math.isfinite(value) and value > 0, "a positive number")
non_negative_float = _number_type(float, lambda value: math.isfinite(value) and value >= 0, "a number >= 0")
unit_budget = _number_type(float, lambda value: math.isfinite(value) and 0 < value <= 1, "a number in (0, 1]")


RECON_WEIGHT_GONE = ("--recon-weight meant two things and was removed: use --recon-loss-weight (train: the weight of "
                     "the decoder's loss) or --detector-penalty (attack, detect, compare: the weight of the "
                     "reconstruction distance in rbim and vote-da)")


def add_removed_flag(group, flag: str, message: str) -> None:
    """A flag that no longer exists: given, argparse refuses it with `message` (which names its replacements)
    rather than a bare "unrecognized arguments"."""
    class Removed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(message)

    group.add_argument(flag, action=Removed, nargs="?", help=argparse.SUPPRESS)


def directory(text: str) -> str:
    """A directory path; an empty one is refused rather than taken as the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a directory, got {text!r}")
    return text


def writable_directory(path: str | Path) -> Path:
    """Creates `path` if needed and proves it writable with a temporary file, before any long computation.

    Permission bits alone do not tell (root ignores them; a read-only file system does not), so this writes.

    Raises:
        CapsrobustError: the directory cannot be created or written.
    """
    from capsrobust.errors import CapsrobustError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise CapsrobustError(f"cannot write to {path}: {error.strerror or error}") from None
    return path


def new_directory(parent: str | Path, name: str) -> Path:
    """Creates `parent/name`, or `name-2`, `name-3`, ... if it exists, so two runs never write into one directory.

    Raises:
        CapsrobustError: `parent` cannot be created or written.
    """
    from capsrobust.errors import CapsrobustError

    parent = writable_directory(parent)
    for attempt in range(1, 1000):
        path = parent / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as error:
            raise CapsrobustError(f"cannot write to {path}: {error.strerror or error}") from None
    raise CapsrobustError(f"cannot create a new directory {name} in {parent}: 999 exist already")


def config_item(text: str) -> tuple[str, object]:
    """`KEY=VALUE` with VALUE parsed as JSON when it is JSON (`routings=2`, `decoder_units=[256,512]`)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data-dir", type=directory, metavar="DIR",
                       help="directory with the data set's files (in DIR/<dataset>/ or DIR itself); "
                            "default: $CAPSROBUST_DATA, then ~/.cache/capsrobust/data, then download (not smallnorb)")
    group.add_argument("--subset", action="store_true", default=None,
                       help="use the small real subset bundled with capsrobust (4,000 train / 1,000 test images)")
    group.add_argument("--limit", type=positive_int, metavar="N", help="use at most N images")


def add_entry_args(parser: argparse.ArgumentParser) -> None:
    """`--model` and `--dataset`: the stored entry a command works on (see `resolve_entry`)."""
    parser.add_argument("--model", default="capsnet", help="registered model name (its best stored entry) or a "
                                                           "store entry id; default capsnet")
    parser.add_argument("--dataset", help="pick the best entry trained on this data set")


def resolve_entry(args):
    """`(store, entry)`: the store at `--store` and its entry named by `--model` and `--dataset`."""
    from capsrobust.store import ModelStore

    store = ModelStore(args.store)
    return store, store.resolve(args.model, dataset=args.dataset)


def entry_dataset(entry, data_dir: str | None = None, subset: bool | None = None):
    """The data set a store entry was trained on, split as it was: from `--data-dir` (or the usual places), or the
    bundled subset when the entry was trained on it and no directory is given (`--subset` forces it)."""
    from capsrobust.data import load_dataset

    trained_on = entry.card["dataset"]
    subset = subset if subset is not None else (data_dir is None and trained_on["source"] == "subset")
    if subset and trained_on["source"] != "subset":
        # A model trained on the whole data set, evaluated on the sample's test images (which are the first 1,000 of
        # the whole test set): its training split does not apply to the sample, and its card holds the detector.
        return load_dataset(trained_on["name"], subset=True)
    return load_dataset(trained_on["name"], data_dir=data_dir, subset=subset, val_size=trained_on.get("val"),
                        val_seed=trained_on.get("val_seed"))


def add_store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=directory, metavar="DIR",
                        help="trained-model store (default: $CAPSROBUST_HOME or ~/.capsrobust)")


def eps_list(text: str) -> tuple[float, ...]:
    """Comma-separated eps values, each a finite number >= 0 (pixel scale; L-inf callers also check <= 1)."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers >= 0 separated by commas, got {text!r}") from None
        if not (math.isfinite(value) and 0 <= value):
            raise argparse.ArgumentTypeError(f"eps must be a finite number >= 0 (pixel scale), got {part!r}")
        values.append(value)
    return tuple(values)


def shard(text: str) -> tuple[int, int]:
    """`K/N`: the K-th of N disjoint slices of the test images, 1 <= K <= N."""
    k, slash, n = text.partition("/")
    if not (slash and k.strip().isdigit() and n.strip().isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"expected K/N with 1 <= K <= N (the K-th of N slices), got {text!r}")
    return int(k), int(n)


def shard_range(count: int, k: int, n: int) -> tuple[int, int]:
    """The images `[start, stop)` of shard `k` of `n` over `count` images: contiguous, as equal as they can be."""
    return (k - 1) * count // n, k * count // n


def name_list(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected one or more names separated by commas, got {text!r}")
    return names
