"""MNIST, Fashion-MNIST and smallNORB: a table of what they are, and `load_dataset` to find, verify and split them.

Where the four files are looked for, in order (the first directory holding them wins):

1. `data_dir` (the CLI's `--data-dir`), 2. the `CAPSROBUST_DATA` environment variable, 3. the user cache
`$XDG_CACHE_HOME/capsrobust/data` (default `~/.cache/capsrobust/data`), each as `D/<name>/` then `D/` itself; then
4. a download from the canonical mirrors into the cache, unless `CAPSROBUST_OFFLINE=1`.

Every file is checked against its published sha256. `subset=True` loads instead the small real sample bundled in the
package (first 4000 train and 1000 test records; see `subset/SOURCE.md`), and looks nowhere else.

smallNORB is looked for in the same places (1 to 3) but never downloaded, has no published checksums and no bundled
subset; its reader and preprocessing are in `smallnorb`.
"""

import dataclasses
import hashlib
import http.client
import logging
import operator
import os
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from capsrobust.data import smallnorb
from capsrobust.data.idx import read_idx, sha256_file
from capsrobust.errors import DataError

logger = logging.getLogger(__name__)

TRAIN_IMAGES, TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TEST_IMAGES, TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
IMAGE_SHAPE = (28, 28, 1)
SUBSET_DIR = Path(__file__).resolve().parent / "subset"
DOWNLOAD_TIMEOUT_S = 30
DEFAULT_VAL_SIZE = 5000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set is: display title, download mirrors (base URLs ending in `/`; none: never downloaded), class
    names, and model configuration defaults for it (applied only to keys a model takes, before the user's overrides).
    """

    title: str
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]
    model_defaults: dict = dataclasses.field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        class_names=tuple(str(d) for d in range(10)),
    ),
    "fashion-mnist": DatasetInfo(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
    ),
    "smallnorb": DatasetInfo(
        title="smallNORB", mirrors=(), class_names=smallnorb.CLASS_NAMES, model_defaults={"standardize": True},
    ),
}

# Published sha256 of each canonical .gz file (see the data sets' SOURCE.md). A plain dict so tests can swap in the
# hashes of small fake files with `monkeypatch.setitem(SHA256, "mnist", {...})`.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        TRAIN_IMAGES: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        TRAIN_LABELS: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        TEST_IMAGES: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        TEST_LABELS: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        TRAIN_IMAGES: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        TRAIN_LABELS: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        TEST_IMAGES: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        TEST_LABELS: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set, split into train / validation / test.

    Images are float32 in [0, 1] of shape `(num_images, height, width, 1)`, 28x28 for MNIST; labels are int64 of shape
    `(num_images,)`. `source` is the directory the files were read from, or `"subset"` for the bundled sample. With
    `train_crop` (smallNORB: 32), training images are larger (48x48) and each batch takes random `train_crop` x
    `train_crop` crops of them, while validation and test images are already centre-cropped to that size.
    """

    name: str
    source: str
    x_train: np.ndarray = dataclasses.field(repr=False)
    y_train: np.ndarray = dataclasses.field(repr=False)
    x_val: np.ndarray = dataclasses.field(repr=False)
    y_val: np.ndarray = dataclasses.field(repr=False)
    x_test: np.ndarray = dataclasses.field(repr=False)
    y_test: np.ndarray = dataclasses.field(repr=False)
    class_names: tuple[str, ...]
    val_seed: int | None = None
    train_crop: int | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image as the model sees it: `(28, 28, 1)` for MNIST, the cropped `(32, 32, 1)` for smallNORB."""
        if self.train_crop is None:
            return tuple(self.x_train.shape[1:])
        return (self.train_crop, self.train_crop, *self.x_train.shape[3:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> dict:
        """JSON-able summary for a model card or report: name, source, split sizes and how the split was made."""
        return {
            "name": self.name,
            "source": self.source,
            "train": len(self.y_train),
            "val": len(self.y_val),
            "test": len(self.y_test),
            "val_seed": self.val_seed,
            "train_crop": self.train_crop,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`."""
    return sorted(DATASETS)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    subset: bool = False,
    val_size: int | None = None,
    val_seed: int | None = None,
    limit: int | None = None,
) -> Dataset:
    """Finds, verifies, decodes and splits a data set.

    Args:
        name: one of `list_datasets()`.
        data_dir: directory searched first, as `data_dir/<name>/` then `data_dir/`.
        subset: load the small sample bundled in the package (and look nowhere else); MNIST and Fashion-MNIST only.
        val_size: number of training images held out for validation; default `min(5000, num_train // 12)`.
        val_seed: if given, a random permutation seeded with it picks the validation images; otherwise they are the
            last `val_size` training images.
        limit: keep only the first `limit` training images (after the validation split).

    Returns:
        A `Dataset`.

    Raises:
        DataError: unknown name, bad argument, files not found or corrupt, or inconsistent labels.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in DATASETS:
        raise DataError(f"unknown data set (known: {', '.join(list_datasets())}). Received: name={name!r}")
    if limit is not None:
        limit = _check_int("limit", limit, low=1)
    if val_seed is not None:
        val_seed = _check_int("val_seed", val_seed, low=0)
    train_crop = None
    if key == "smallnorb":
        if subset:
            raise DataError(f"smallNORB has no bundled subset; get its files from {smallnorb.URL} and pass --data-dir")
        directory = smallnorb.locate([d for root, _ in _search_roots(data_dir) for d in (root / key, root)],
                                     cache_dir() / key)
        x_train, y_train, x_test, y_test = smallnorb.load_smallnorb(directory)
        source, train_crop = str(directory), smallnorb.CROP
    else:
        if subset:
            directory, hashes, source = SUBSET_DIR / key, _subset_sha256(key), "subset"
        else:
            directory, hashes = _locate(key, data_dir), SHA256[key]
            source = str(directory)
        arrays = {f: _read_verified(directory / f, hashes[f], key) for f in FILES}
        x_train, y_train = _check_pair(directory, arrays, TRAIN_IMAGES, TRAIN_LABELS, len(DATASETS[key].class_names))
        x_test, y_test = _check_pair(directory, arrays, TEST_IMAGES, TEST_LABELS, len(DATASETS[key].class_names))
        x_train, x_test = _to_float(x_train), _to_float(x_test)
    train_idx, val_idx = _split(len(y_train), val_size, val_seed)
    train_idx = train_idx[:limit]
    return Dataset(
        name=key,
        source=source,
        x_train=x_train[train_idx],
        y_train=y_train[train_idx],
        x_val=_centre_crop(x_train[val_idx], train_crop),
        y_val=y_train[val_idx],
        x_test=_centre_crop(x_test, train_crop),
        y_test=y_test,
        class_names=DATASETS[key].class_names,
        val_seed=val_seed,
        train_crop=train_crop,
    )


def cache_dir() -> Path:
    """The user cache for data sets: `$XDG_CACHE_HOME/capsrobust/data`, default `~/.cache/capsrobust/data`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "capsrobust" / "data"


def _offline() -> bool:
    return os.environ.get("CAPSROBUST_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _subset_sha256(key: str) -> dict[str, str]:
    """Reads `subset/SHA256SUMS` (lines `<sha256>  <name>/<file>`) for one data set."""
    sums = SUBSET_DIR / "SHA256SUMS"
    try:
        lines = sums.read_text().splitlines()
    except OSError as e:
        raise DataError(f"{sums}: cannot read the bundled subset's checksums ({e.strerror or e}); reinstall") from None
    table = {}
    for line in lines:
        digest, _, rel = line.strip().partition("  ")
        if rel.startswith(f"{key}/"):
            table[rel[len(key) + 1 :]] = digest
    missing = [f for f in FILES if f not in table]
    if missing:
        raise DataError(f"{sums}: no checksum for {key}/{missing[0]}; reinstall")
    return table


def _owner(path: Path) -> str | None:
    """Which data set a file belongs to, by its name and sha256; None if it is no known canonical file."""
    digest = sha256_file(path)
    return next((key for key, table in SHA256.items() if table.get(path.name) == digest), None)


def _read_verified(path: Path, sha256: str, key: str) -> np.ndarray:
    """`read_idx` with checksum; a mismatch says which other data set the file belongs to, if any."""
    try:
        return read_idx(path, expected_sha256=sha256)
    except DataError as e:
        owner = _owner(path) if "sha256 mismatch" in str(e) else None
        if owner is not None and owner != key:
            raise DataError(
                f"{path}: this is {DATASETS[owner].title}'s file, not {DATASETS[key].title}'s; "
                f"put each data set in its own folder, e.g. {path.parent / key}/"
            ) from None
        raise


def _search_roots(data_dir: str | os.PathLike | None) -> list[tuple[Path, bool]]:
    """Directories to search, each with whether the user named it (explicit) or it is the cache."""
    roots = []
    for label, value in (("data_dir", data_dir), ("CAPSROBUST_DATA", os.environ.get("CAPSROBUST_DATA") or None)):
        if value is None:
            continue
        root = Path(value).expanduser()
        if not root.is_dir():
            raise DataError(
                f"data directory {root} does not exist or is not a directory. Received: {label}={os.fspath(value)!r}"
            )
        roots.append((root, True))
    roots.append((cache_dir(), False))
    return roots


def _locate(key: str, data_dir: str | os.PathLike | None) -> Path:
    """Returns the directory holding the four files of data set `key`, downloading them into the cache if needed."""
    title, searched = DATASETS[key].title, []
    for root, explicit in _search_roots(data_dir):
        for directory in (root / key, root):
            searched.append(str(directory))
            present = [f for f in FILES if (directory / f).exists()]
            if not present:
                continue
            probe = directory / min(present, key=lambda f: (directory / f).stat().st_size)
            if directory == root and probe.is_file():
                owner = _owner(probe)
                if owner is not None and owner != key:  # another data set's files, laid out flat: keep looking
                    searched[-1] += f" (holds {DATASETS[owner].title})"
                    continue
            missing = [f for f in FILES if f not in present]
            if not missing:
                return directory
            if explicit or directory == root:
                raise DataError(
                    f"{directory}: found {len(present)} of the 4 {title} files; missing: {', '.join(missing)}"
                )
            searched[-1] += f" ({len(present)} of 4 files)"  # a partial download in the cache: fetch the rest
    target = cache_dir() / key
    if _offline():
        why = "downloads disabled by CAPSROBUST_OFFLINE"
    else:
        why = _download(key, target)
        if why is None:
            return target
    raise DataError(
        f"no {title} files found (searched {', '.join(searched)}; {why}); put the 4 canonical .gz files "
        f"({', '.join(FILES)}) in {target}/ or pass --data-dir, or use --subset for the bundled sample"
    )


def _download(key: str, target: Path) -> str | None:
    """Downloads the missing files of `key` into `target`, verifying each; returns None or why it failed."""
    failures = []
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"cannot create {target}: {e.strerror or e}"
    for file in FILES:
        if (target / file).is_file():
            continue
        for mirror in DATASETS[key].mirrors:
            url = mirror + file
            try:
                _fetch(url, target / file, SHA256[key][file])
                break
            except (OSError, ValueError, http.client.HTTPException, DataError) as e:  # URLError, timeouts: OSError
                failures.append(f"{url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        else:
            return "download failed: " + "; ".join(failures)
    return None


def _fetch(url: str, path: Path, sha256: str) -> None:
    """Streams `url` into a temp file beside `path`, checks its sha256, then renames it into place."""
    logger.info("downloading %s", url)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise DataError(f"sha256 mismatch: expected {sha256[:12]}..., got {digest.hexdigest()[:12]}...")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_pair(directory: Path, arrays: dict, images_file: str, labels_file: str,
                num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Checks that an images file and its labels file (in `directory`) agree; returns (uint8 images, int64 labels).

    Errors name the file by its full path: a user with several copies of a data set needs to know which is bad.
    """
    images, labels = arrays[images_file], arrays[labels_file]
    images_path, labels_path = directory / images_file, directory / labels_file
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[:2]:
        shape = "x".join(map(str, images.shape))
        raise DataError(f"{images_path}: expected uint8 images of 28x28, got {images.dtype} of shape {shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        shape = "x".join(map(str, labels.shape))
        raise DataError(f"{labels_path}: expected 1-D uint8 labels, got {labels.dtype} of shape {shape}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: holds {len(labels)} labels but {images_file} holds {len(images)} images")
    if len(labels) and labels.max() >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{labels_path}: label {labels[bad]} at index {bad} is out of range (expected 0 to {num_classes - 1})"
        )
    return images, labels.astype(np.int64)


def _split(num_train: int, val_size: int | None, val_seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (train indices, validation indices), each in increasing order."""
    if val_size is None:
        val_size = min(DEFAULT_VAL_SIZE, num_train // 12)
    val_size = _check_int("val_size", val_size, low=0, high=num_train - 1)
    cut = num_train - val_size
    if val_seed is None:
        order = np.arange(num_train)
    else:
        order = np.random.default_rng(val_seed).permutation(num_train)
        order = np.concatenate([np.sort(order[:cut]), np.sort(order[cut:])])
    return order[:cut], order[cut:]


def _check_int(arg: str, value, low: int, high: int | None = None) -> int:
    """Returns `value` as an int in [low, high], or raises a DataError naming `arg`."""
    in_range = f"in [{low}, {high}]" if high is not None else f">= {low}"
    try:
        number = operator.index(value) if not isinstance(value, bool) else None
    except TypeError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        raise DataError(f"{arg} must be an integer {in_range}. Received: {arg}={value!r}")
    return number


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 `(n, 28, 28)` -> float32 `(n, 28, 28, 1)` in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def _centre_crop(images: np.ndarray, size: int | None) -> np.ndarray:
    """The middle `size`x`size` of each image, `(n, height, width, c)` -> `(n, size, size, c)`; `images` if None."""
    if size is None:
        return images
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    return np.ascontiguousarray(images[:, top:top + size, left:left + size])
