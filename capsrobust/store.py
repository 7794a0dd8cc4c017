"""The trained-model store: one directory per trained model, a JSON card and weights-only HDF5.

Layout under the store root (`--store`, else `$CAPSROBUST_HOME`, else `~/.capsrobust`):

    models/<model>-<dataset>-<YYYYmmdd-HHMMSS>-<hex>/card.json, model.weights.h5   finished models
    runs/<same kind of id>/                                                       training runs (checkpoints, logs)

The zoo, `capsrobust/zoo/<id>/` inside the package, holds converged models in the same layout, read-only: every
command sees them beside the store's own entries, and a registered name resolves to the user's best entry before the
zoo's (`resolve`). `add_to_zoo` copies a store entry there, byte for byte, for a maintainer working from a checkout.

An entry appears in one `rename` of a fully written directory, so readers and concurrent writers never see half an
entry, and two trainings never share a directory. Loading rebuilds the architecture from the registry by name and
JSON config, checks the weights' sha256 against the card, and reads plain HDF5 arrays: nothing from the store can run
code.
"""

import dataclasses
import datetime
import hashlib
import math
import os
import re
import secrets
import shutil
from pathlib import Path

from capsrobust.cards import card_problem, seal
from capsrobust.errors import StoreError
from capsrobust.io import read_json, write_json
from capsrobust.models import create_model, list_models

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.weights.h5"
RUN_FILE = "run.json"
ZOO_DIR = Path(__file__).resolve().parent / "zoo"


def default_root() -> Path:
    return Path(os.environ.get("CAPSROBUST_HOME") or Path.home() / ".capsrobust")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def _new_id(model: str, dataset: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{model}-{dataset}-{stamp}-{secrets.token_hex(3)}"


_ID = re.compile(r"(.+?)-(mnist|fashion-mnist|smallnorb)-\d{8}-\d{6}-[0-9a-f]+$")


def model_name_of(model_id: str) -> str:
    """The registry name part of a store id (`capsnet-small-mnist-20261201-120623-dbf94d` -> `capsnet-small`); any
    other string unchanged."""
    match = _ID.match(model_id)
    return match.group(1) if match else model_id


@dataclasses.dataclass(frozen=True)
class Entry:
    """A store entry; `problem` says why a broken entry cannot be loaded (empty for a healthy one); `zoo` marks one
    that ships with the package."""

    id: str
    path: Path
    card: dict
    problem: str = ""
    zoo: bool = False

    # A broken entry's card may hold anything (that is why it is broken), so these never assume its types.
    @property
    def model(self) -> str:
        model = self.card.get("model")
        return model if isinstance(model, str) else "?"

    @property
    def name(self) -> str:
        """The name `--model` knows it by: the registry name, with `-at` if it was adversarially trained."""
        return self.model + (DEFENDED_SUFFIX if is_defended(self) else "")

    @property
    def dataset(self) -> str:
        name = _field(self.card, "dataset", "name")
        return name if isinstance(name, str) else "?"

    @property
    def val_accuracy(self) -> float:
        value = _field(self.card, "metrics", "val_accuracy")
        return float(value) if _is_number(value) else float("nan")


DEFENDED_SUFFIX = "-at"


def preference(entry: Entry) -> tuple:
    """How `ModelStore.resolve` ranks the entries one name could mean, best last.

    Undefended entries rank by validation accuracy. Adversarially trained ones rank by the eps they were trained for,
    then by the validation PGD-10 accuracy their run chose its epoch by: clean accuracy would pick a model whose
    robustness collapsed, since catastrophic overfitting keeps (and often raises) clean accuracy. Ties go to the newer.
    """
    created = str(entry.card.get("created", ""))
    if not is_defended(entry):
        return (_number_or_lowest(entry.val_accuracy), created)
    eps = entry.card["threat_model"].get("eps")
    robust = _field(entry.card, "metrics", "val_pgd_accuracy")
    return (_number_or_lowest(eps), _number_or_lowest(robust), created)


def _number_or_lowest(value) -> float:
    """`value` as a float for ranking; missing or NaN ranks below every number."""
    return float(value) if _is_number(value) and not math.isnan(value) else -math.inf


def model_and_defence(name: str) -> tuple[str, bool]:
    """`("cnn-small", True)` for `cnn-small-at` (adversarially trained), `("cnn-small", False)` for `cnn-small`."""
    base = name.removesuffix(DEFENDED_SUFFIX)
    return (base, True) if base != name and base in list_models() else (name, False)


def is_defended(entry: Entry) -> bool:
    """Whether the entry's model was adversarially trained (its card has a threat model)."""
    return isinstance(entry.card.get("threat_model"), dict)


def _entry_dirs(directory: Path) -> list[Path]:
    """The entry directories in a store's `models/` or the zoo (not the staging directories of a publish)."""
    if not directory.is_dir():
        return []
    return [path for path in sorted(directory.iterdir()) if path.is_dir() and not path.name.startswith((".", "_"))]


def add_to_zoo(entry: Entry, zoo_dir: Path = ZOO_DIR) -> Path:
    """Copies a healthy, verified store entry into the zoo, byte for byte (card and weights), in one `rename`.

    Only whole-data-set models with the sample figure the zoo's tests check (`metrics.sample_accuracy`, recorded by
    `capsrobust train` when it publishes) are taken.

    Raises:
        StoreError: a broken or zoo entry, one without the sample figure or trained on the sample, an existing zoo
            entry of that id, or an unwritable zoo directory.
    """
    if entry.zoo:
        raise StoreError(f"{entry.id} is already a zoo entry")
    if entry.problem:
        raise StoreError(f"store entry {entry.id} is broken: {entry.problem}")
    if sha256_of(entry.path / WEIGHTS_FILE) != entry.card["weights"]["sha256"]:
        raise StoreError(f"{entry.path / WEIGHTS_FILE} does not match its card's sha256; not shipped")
    if entry.card["dataset"].get("source") == "subset":
        raise StoreError(f"{entry.id} was trained on the bundled sample; the zoo ships models trained on whole data sets")
    if not _is_number(entry.card.get("metrics", {}).get("sample_accuracy")):
        raise StoreError(f"{entry.id}'s card has no sample_accuracy (cards written before it was recorded); "
                         f"train the model again to ship it")
    target = Path(zoo_dir) / entry.id
    if target.exists():
        raise StoreError(f"the zoo already holds {entry.id} ({target})")
    staging = Path(zoo_dir) / f".staging-{entry.id}-{secrets.token_hex(3)}"
    try:
        staging.mkdir(parents=True)
        for name in (CARD_FILE, WEIGHTS_FILE):
            shutil.copyfile(entry.path / name, staging / name)
        os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise StoreError(f"cannot write into the zoo at {zoo_dir}: {error.strerror}") from None
    return target


def _field(card: dict, section: str, key: str):
    """`card[section][key]`, or None where the section is not a dict or lacks the key."""
    part = card.get(section)
    return part.get(key) if isinstance(part, dict) else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ModelStore:
    """Trained models and training runs under one root directory."""

    def __init__(self, root: str | os.PathLike | None = None, zoo: str | os.PathLike | None = ZOO_DIR):
        """`root`: the store's directory (default `default_root()`); `zoo`: the read-only zoo beside it (None: none)."""
        self.root = Path(root) if root is not None else default_root()
        self.models_dir = self.root / "models"
        self.runs_dir = self.root / "runs"
        self.zoo_dir = Path(zoo) if zoo is not None else None

    # Runs ----------------------------------------------------------------------------------------------------------

    def new_run(self, spec: dict) -> Path:
        """Creates a run directory holding `run.json` (what to train and how) and returns it."""
        # An adversarially trained model's id says so (`cnn-small-at-mnist-...`), and reports name it by its id.
        defended = DEFENDED_SUFFIX if spec.get("settings", {}).get("adversarial") else ""
        run_dir = self.runs_dir / _new_id(spec["model"] + defended, spec["dataset"]["name"])
        try:
            run_dir.mkdir(parents=True)
            write_json(run_dir / RUN_FILE, {**spec, "run": run_dir.name})
        except OSError as error:
            raise StoreError(f"cannot create a training run in {self.runs_dir}: {error.strerror}") from None
        return run_dir

    def unfinished_runs(self, model: str | None = None, dataset: str | None = None) -> list[tuple[Path, dict]]:
        """Runs without a published model, newest first, optionally filtered by model and data set name."""
        found = []
        for run_dir in sorted(self.runs_dir.glob("*/"), key=_mtime, reverse=True):
            spec = self.read_run(run_dir)
            if spec is None or spec.get("published") or (model and spec["model"] != model) or \
                    (dataset and spec["dataset"]["name"] != dataset):
                continue
            found.append((run_dir, spec))
        return found

    @staticmethod
    def read_run(run_dir: Path) -> dict | None:
        """A run's `run.json`, or None if it is unreadable or lacks what a resume needs."""
        try:
            spec = read_json(Path(run_dir) / RUN_FILE)
        except (OSError, ValueError):
            return None
        needs = {"model": str, "config": dict, "settings": dict, "data": dict, "dataset": dict}
        if not isinstance(spec, dict) or any(not isinstance(spec.get(k), t) for k, t in needs.items()) or \
                not isinstance(spec["dataset"].get("name"), str):
            return None
        return spec

    # Models --------------------------------------------------------------------------------------------------------

    def publish(self, run_dir: Path, model, card: dict) -> Entry:
        """Writes `model`'s weights (without optimizer state) and the card with their sha256 as a new entry, atomically.

        Args:
            run_dir: the training run; the entry takes its id.
            model: the trained model; `card["model"]` and `card["config"]` must rebuild its architecture.
            card: everything the card records besides format, id and weights.
        """
        entry_id = Path(run_dir).name
        for stale in self.models_dir.glob(f".staging-{entry_id}-*"):  # a publish of this run that was killed
            shutil.rmtree(stale, ignore_errors=True)
        if (self.models_dir / entry_id).is_dir():  # published, but the process died before run.json said so
            return self._republish(run_dir, entry_id)
        staging = self.models_dir / f".staging-{entry_id}-{secrets.token_hex(3)}"
        try:
            staging.mkdir(parents=True)
            # A fresh model has no optimizer, so the file holds the weights alone.
            fresh = create_model(card["model"], **card["config"])
            fresh.set_weights(model.get_weights())
            fresh.save_weights(staging / WEIGHTS_FILE)
            card = seal(card, entry_id, WEIGHTS_FILE, sha256_of(staging / WEIGHTS_FILE))
            write_json(staging / CARD_FILE, card)
            os.rename(staging, self.models_dir / entry_id)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(f"cannot write model {entry_id} into {self.models_dir}: {error.strerror}") from None
        self._mark_published(run_dir, entry_id)
        return Entry(entry_id, self.models_dir / entry_id, card)

    def _republish(self, run_dir: Path, entry_id: str) -> Entry:
        """Finishes a publish that stopped between the entry's rename and the run's record of it: the entry is kept
        if it is whole, so publishing again (a `--resume`) is harmless."""
        entry = self._read_entry(self.models_dir / entry_id, verify=True)
        if entry.problem:
            raise StoreError(f"cannot publish {entry_id}: the store already holds a broken entry of that name "
                             f"({entry.problem}); remove {entry.path} and resume again")
        self._mark_published(run_dir, entry_id)
        return entry

    @staticmethod
    def _mark_published(run_dir: Path, entry_id: str) -> None:
        spec = read_json(Path(run_dir) / RUN_FILE)
        write_json(Path(run_dir) / RUN_FILE, {**spec, "published": entry_id})

    def entries(self, verify: bool = False, zoo: bool = False) -> list[Entry]:
        """Every entry, healthy or not (a broken one carries its `problem`): the store's own, oldest first, and with
        `zoo` the zoo's after them.

        Args:
            verify: also hash every weights file and mark those that do not match their card (reads all weights).
            zoo: include the zoo's entries.
        """
        own = _entry_dirs(self.models_dir)
        shipped = _entry_dirs(self.zoo_dir) if zoo and self.zoo_dir is not None else []
        return [self._read_entry(path, verify) for path in own] + \
            [dataclasses.replace(self._read_entry(path, verify), zoo=True) for path in shipped]

    def zoo_entries(self, verify: bool = False) -> list[Entry]:
        """The zoo's entries alone."""
        return [e for e in self.entries(verify, zoo=True) if e.zoo]

    def _read_entry(self, path: Path, verify: bool = False) -> Entry:
        try:
            card = read_json(path / CARD_FILE)
        except FileNotFoundError:
            return Entry(path.name, path, {}, "no card.json")
        except (OSError, ValueError) as error:
            return Entry(path.name, path, {}, f"unreadable card.json ({type(error).__name__})")
        problem = card_problem(card)
        if problem:
            return Entry(path.name, path, card if isinstance(card, dict) else {}, problem)
        if not (path / WEIGHTS_FILE).is_file():
            return Entry(path.name, path, card, f"missing {WEIGHTS_FILE}")
        if verify:
            try:
                matches = sha256_of(path / WEIGHTS_FILE) == card["weights"]["sha256"]
            except OSError as error:
                return Entry(path.name, path, card, f"unreadable {WEIGHTS_FILE} ({error.strerror or error})")
            if not matches:
                return Entry(path.name, path, card, f"{WEIGHTS_FILE} does not match the card's sha256 "
                                                    "(modified or corrupted)")
        return Entry(path.name, path, card)

    def resolve(self, name: str, dataset: str | None = None, zoo_only: bool = False) -> Entry:
        """An entry by id, or the best healthy entry of a registered model name (see `preference`): the user's own
        where there is one, else the zoo's.

        A plain name (`cnn-small`) picks among undefended entries, the name with `-at` (`cnn-small-at`) among the
        adversarially trained ones (cards with a `threat_model`), so that neither is ever taken for the other.

        Args:
            name: a registered model name, with `-at` or without, or an entry id.
            dataset: only entries trained on this data set.
            zoo_only: only the zoo's entries (the demo: not whatever the user trained last).

        Raises:
            StoreError: nothing matches.
        """
        entries = [e for e in self.entries(zoo=True) if e.zoo or not zoo_only]
        for entry in entries:
            if entry.id == name:
                if entry.problem:
                    raise StoreError(f"{'zoo' if entry.zoo else 'store'} entry {name} is broken: {entry.problem}")
                return entry
        model, defended = model_and_defence(name)
        candidates = [e for e in entries if not e.problem and e.model == model and is_defended(e) == defended
                      and (dataset is None or e.dataset == dataset)]
        candidates = [e for e in candidates if not e.zoo] or candidates
        if not candidates:
            on = f" on {dataset}" if dataset else ""
            how = " --adversarial pgd --eps 0.3" if defended else ""
            where = "the zoo" if zoo_only else f"{self.models_dir} or the zoo"
            raise StoreError(f"no trained {name!r}{on} in {where}; train one with "
                             f"`capsrobust train {dataset or 'mnist'} --model {model}{how}`")
        return max(candidates, key=preference)

    def load(self, entry: Entry):
        """Rebuilds the entry's model from the registry and loads its verified weights.

        Raises:
            StoreError: broken entry, sha256 mismatch, or weights that do not fit the architecture.
        """
        if entry.problem:
            raise StoreError(f"{'zoo' if entry.zoo else 'store'} entry {entry.id} is broken: {entry.problem}")
        weights = entry.path / WEIGHTS_FILE
        expected = entry.card.get("weights", {}).get("sha256")
        try:
            actual = sha256_of(weights)
        except OSError as error:
            raise StoreError(f"{weights}: cannot read: {error.strerror or error}") from None
        if actual != expected:
            raise StoreError(f"{weights}: sha256 {actual[:12]}… does not match the card's {str(expected)[:12]}…; "
                             f"the weights were modified or corrupted")
        model = create_model(entry.card["model"], **entry.card["config"])
        try:
            model.load_weights(weights)
        except (ValueError, OSError, KeyError) as error:
            raise StoreError(f"{weights}: cannot load into {entry.card['model']}: "
                             f"{str(error).splitlines()[0][:200]}") from None
        return model
