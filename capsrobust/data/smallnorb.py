"""smallNORB (LeCun, Huang & Bottou 2004): a strict reader and writer for its binary matrix files, and the loading
and preprocessing of Hinton, Sabour & Frosst (2018), "Matrix capsules with EM routing".

Toys of 5 classes (animal, human, airplane, truck, car), 10 instances each, photographed by two cameras at 9
elevations, 18 azimuths and 6 lightings: 24,300 stereo pairs of 96x96 grey images for training (instances 4, 6, 7, 8,
9) and 24,300 for testing (instances 0, 1, 2, 3, 5). It is never downloaded and has no bundled subset: get the files
from https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/ . Only the `-dat` and `-cat` files are needed; `-info`
(instance, elevation, azimuth, lighting) is not used. No checksums are published, so every way a file can be broken
raises a one-line `DataError` instead.

File format, little-endian: int32 magic (the element type), int32 ndim, max(3, ndim) int32 sizes (those past ndim are
1 and ignored), then the elements in C order. `-dat`: uint8 `(N, 2, 96, 96)` stereo pairs; `-cat`: int32 `(N,)` labels
0 to 4; `-info`: int32 `(N, 4)`.

Preprocessing follows the paper: the first (left) camera's image, downscaled to 48x48 by averaging 2x2 blocks, as
float32 in [0, 1]. Training images stay 48x48 and each batch takes random 32x32 crops of them
(`capsrobust.training.augment`); validation and test images are centre-cropped to 32x32 when loaded. The paper's
random brightness and contrast jitter is not reproduced.

The paper also normalises each image to zero mean and unit variance. That is deliberately not done to the data: the
attacks need pixels in [0, 1] and an L-inf eps on that scale, so the normalisation is a layer of the model instead
(`capsrobust.layers.PerImageStandardization`, switched on through the data set's `model_defaults`,
`{"standardize": True}`, for models that take that key), and attacks differentiate through it.
"""

import os
from pathlib import Path

import numpy as np

from capsrobust.data.idx import array_after_header, gzip_bytes, read_bytes
from capsrobust.errors import DataError
from capsrobust.io import atomic_path

URL = "https://cs.nyu.edu/~ylclab/data/norb-v1.0-small/"
CLASS_NAMES = ("animal", "human", "airplane", "truck", "car")
TRAIN_DAT = "smallnorb-5x46789x9x18x6x2x96x96-training-dat.mat"
TRAIN_CAT = "smallnorb-5x46789x9x18x6x2x96x96-training-cat.mat"
TEST_DAT = "smallnorb-5x01235x9x18x6x2x96x96-testing-dat.mat"
TEST_CAT = "smallnorb-5x01235x9x18x6x2x96x96-testing-cat.mat"
FILES = (TRAIN_DAT, TRAIN_CAT, TEST_DAT, TEST_CAT)
PAIR_SHAPE = (2, 96, 96)
CROP = 32
MAX_DIMS = 8

# Magic number -> little-endian element type. 0x1E3D4C52 (packed matrix) is part of the format but never used by
# smallNORB, so it is rejected like any unknown magic.
MAGIC_DTYPES = {0x1E3D4C51: "<f4", 0x1E3D4C53: "<f8", 0x1E3D4C54: "<i4", 0x1E3D4C55: "u1", 0x1E3D4C56: "<i2"}
DTYPE_MAGICS = {np.dtype(code): magic for magic, code in MAGIC_DTYPES.items()}


def read_norb(path: str | os.PathLike) -> np.ndarray:
    """Reads a NORB binary matrix file, gunzipping it if its name ends in `.gz` or it starts with the gzip magic.

    Returns:
        An array of the header's shape, e.g. `(num_pairs, 2, 96, 96)` uint8 or `(num_pairs,)` int32, in native byte
        order.

    Raises:
        DataError: the file is missing, unreadable, a corrupt gzip stream, has a bad magic number or number of
            dimensions, is truncated or has trailing data.
    """
    name = os.fspath(path)
    data = read_bytes(path)
    if len(data) < 8:
        raise DataError(f"{name}: truncated: {len(data)} bytes, too short for the 8-byte NORB magic and ndim")
    magic, ndim = (int.from_bytes(data[i : i + 4], "little", signed=True) for i in (0, 4))
    if magic not in MAGIC_DTYPES:
        raise DataError(
            f"{name}: not a NORB matrix file: bad magic number 0x{magic & 0xFFFFFFFF:08X} "
            f"(expected one of {', '.join(f'0x{m:08X}' for m in MAGIC_DTYPES)})"
        )
    if not 1 <= ndim <= MAX_DIMS:
        raise DataError(f"{name}: unsupported number of dimensions {ndim} (expected 1 to {MAX_DIMS})")
    offset = 8 + 4 * max(3, ndim)
    if len(data) < offset:
        raise DataError(f"{name}: truncated: header needs {offset} bytes for {ndim} dimensions, file holds {len(data)}")
    shape = tuple(int.from_bytes(data[8 + 4 * i : 12 + 4 * i], "little", signed=True) for i in range(ndim))
    if min(shape) < 0:
        raise DataError(f"{name}: negative size in header shape {'x'.join(map(str, shape))}")
    return array_after_header(name, data, offset, shape, np.dtype(MAGIC_DTYPES[magic]), "x".join(map(str, shape)))


def write_norb(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes an array as a NORB binary matrix file, atomically; gzipped (reproducibly) if `path` ends in `.gz`.

    Args:
        path: the file to write.
        array: uint8, int16, int32, float32 or float64, of 1 to 8 dimensions, e.g. `(num_pairs, 2, 96, 96)` uint8.

    Raises:
        ValueError: `array` has another dtype or an unsupported number of dimensions.
    """
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype not in DTYPE_MAGICS:
        raise ValueError(f"write_norb writes uint8, int16, int32, float32 or float64 arrays. "
                         f"Received: array.dtype={array.dtype}")
    if not 1 <= array.ndim <= MAX_DIMS:
        raise ValueError(f"write_norb needs 1 to {MAX_DIMS} dimensions. Received: array.shape={array.shape}")
    sizes = [*array.shape, *[1] * (3 - array.ndim)]
    header = np.array([DTYPE_MAGICS[dtype], array.ndim, *sizes], dtype="<i4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=dtype).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip_bytes(payload)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are world-readable like any other


def locate(directories: list[Path], target: Path) -> Path:
    """The first of `directories` holding the four `-dat` / `-cat` files, each as `.mat` or `.mat.gz`.

    Args:
        directories: where to look, in order.
        target: where the error message suggests putting the files.

    Raises:
        DataError: a directory holds only some of the files, or none holds any.
    """
    for directory in directories:
        present = [f for f in FILES if _find(directory, f) is not None]
        if len(present) == len(FILES):
            return directory
        if present:
            missing = [f for f in FILES if f not in present]
            raise DataError(f"{directory}: found {len(present)} of the 4 smallNORB files; missing: "
                            f"{', '.join(missing)} (.mat or .mat.gz, from {URL})")
    raise DataError(
        f"no smallNORB files found (searched {', '.join(map(str, directories))}); smallNORB is never downloaded: get "
        f"{', '.join(FILES)} (.mat or .mat.gz) from {URL} and put them in {target}/ or pass --data-dir"
    )


def load_smallnorb(directory: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reads, checks and preprocesses the training and test files in `directory` (see `locate`).

    Returns:
        `(x_train, y_train, x_test, y_test)`: float32 images `(num_pairs, 48, 48, 1)` in [0, 1] (not yet cropped) and
        int64 labels `(num_pairs,)`.

    Raises:
        DataError: a file is broken, has the wrong shape or type, the counts of pairs and labels differ, or a label is
            out of range.
    """
    splits = []
    for dat, cat in ((TRAIN_DAT, TRAIN_CAT), (TEST_DAT, TEST_CAT)):
        dat_path, cat_path = (_find(directory, f) or directory / f for f in (dat, cat))
        splits += _check_pair(read_norb(dat_path), read_norb(cat_path), dat_path.name, cat_path.name)
    x_train, y_train, x_test, y_test = splits
    return x_train, y_train, x_test, y_test


def preprocess(pairs: np.ndarray) -> np.ndarray:
    """Left camera image, 2x2 block mean, [0, 1]: uint8 `(n, 2, 96, 96)` -> float32 `(n, 48, 48, 1)`."""
    left = pairs[:, 0]
    # Four strided uint16 adds (a sum is at most 4 * 255): no float copy of the full-resolution images (0.9 GB for the
    # training set), and several times faster than a reduction over reshaped 2x2 blocks.
    sums = left[:, 0::2, 0::2].astype(np.uint16)
    sums += left[:, 0::2, 1::2]
    sums += left[:, 1::2, 0::2]
    sums += left[:, 1::2, 1::2]
    return (sums.astype(np.float32) / np.float32(4 * 255))[..., np.newaxis]


def _find(directory: Path, file: str) -> Path | None:
    """`directory/file` or `directory/file.gz`, whichever exists first; None if neither does."""
    return next((p for p in (directory / file, directory / f"{file}.gz") if p.exists()), None)


def _check_pair(pairs: np.ndarray, labels: np.ndarray, dat: str, cat: str) -> tuple[np.ndarray, np.ndarray]:
    """Checks a `-dat` array against its `-cat` array; returns (preprocessed images, int64 labels)."""
    if pairs.dtype != np.uint8 or pairs.shape[1:] != PAIR_SHAPE:
        shape = "x".join(map(str, pairs.shape))
        raise DataError(f"{dat}: expected uint8 stereo pairs of 2x96x96, got {pairs.dtype} of shape {shape}")
    if labels.dtype != np.int32 or labels.ndim != 1:
        raise DataError(f"{cat}: expected 1-D int32 labels, got {labels.dtype} of shape {labels.shape}")
    if len(labels) != len(pairs):
        raise DataError(f"{cat}: holds {len(labels)} labels but {dat} holds {len(pairs)} image pairs")
    bad = np.flatnonzero((labels < 0) | (labels >= len(CLASS_NAMES)))
    if len(bad):
        raise DataError(f"{cat}: label {labels[bad[0]]} at index {bad[0]} is out of range "
                        f"(expected 0 to {len(CLASS_NAMES) - 1})")
    return preprocess(pairs), labels.astype(np.int64)
