"""Tests for smallNORB: the binary matrix reader/writer, the loader's preprocessing and crops, per-image
standardisation, and the train command's configuration and errors.

The "data set" is 12 training and 6 test stereo pairs of random 96x96 pixels written in the real file format into
tmp_path (some files gzipped); nothing is downloaded.
"""

import gzip

import numpy as np
import pytest

from capsrobust.data import load_dataset, read_norb, smallnorb, write_norb
from capsrobust.data.smallnorb import TEST_CAT, TEST_DAT, TRAIN_CAT, TRAIN_DAT, URL
from capsrobust.errors import ConfigError, DataError
from capsrobust.training.augment import ShiftedBatches

NUM_TRAIN, NUM_TEST = 12, 6
TRAIN_INFO = "smallnorb-5x46789x9x18x6x2x96x96-training-info.mat"
TEST_INFO = "smallnorb-5x01235x9x18x6x2x96x96-testing-info.mat"


def fake_split(num, seed):
    """`num` random stereo pairs, labels cycling through the 5 classes, and an info table."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, 256, (num, 2, 96, 96), dtype=np.uint8)
    labels = (np.arange(num) % 5).astype(np.int32)
    info = rng.integers(0, 9, (num, 4), dtype=np.int32)
    return pairs, labels, info


def write_fake(directory, train=None, test=None):
    """Writes the six files into `directory` (training -dat and testing -cat gzipped); returns the arrays written."""
    directory.mkdir(parents=True, exist_ok=True)
    train = train or fake_split(NUM_TRAIN, 0)
    test = test or fake_split(NUM_TEST, 1)
    names = [(TRAIN_DAT + ".gz", TRAIN_CAT, TRAIN_INFO), (TEST_DAT, TEST_CAT + ".gz", TEST_INFO)]
    for files, arrays in zip(names, (train, test)):
        for file, array in zip(files, arrays):
            write_norb(directory / file, array)
    return {"train": train, "test": test}


@pytest.fixture
def fake_norb(tmp_path):
    """A fake smallNORB in tmp_path/data/smallnorb/; returns (data root, the arrays written)."""
    root = tmp_path / "data"
    return root, write_fake(root / "smallnorb")


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


def downscaled(image):
    """The 2x2 block mean of a 96x96 uint8 image, in [0, 1], computed the slow obvious way."""
    out = np.zeros((48, 48))
    for i in range(48):
        for j in range(48):
            out[i, j] = image[2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(float).mean() / 255
    return out


# --- reading and writing the file format ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mat", ".mat.gz"])
@pytest.mark.parametrize("array", [
    np.arange(3 * 2 * 4 * 5, dtype=np.uint8).reshape(3, 2, 4, 5),
    np.array([4, 0, 2], dtype=np.int32),
    np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
    np.array([[1.5, -2.0]], dtype=np.float32),
    np.array([1e300], dtype=np.float64),
    np.array([-7, 300], dtype=np.int16),
], ids=["uint8-4d", "int32-1d", "int32-2d", "float32", "float64", "int16"])
def test_round_trip(tmp_path, suffix, array):
    path = tmp_path / f"a{suffix}"
    write_norb(path, array)
    back = read_norb(path)
    assert back.dtype == array.dtype and back.shape == array.shape and np.array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".mat.gz")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file is left behind"


def test_header_layout_is_the_published_one(tmp_path):
    write_norb(tmp_path / "cat.mat", np.array([3, 1], dtype=np.int32))
    write_norb(tmp_path / "dat.mat", np.zeros((1, 2, 1, 1), dtype=np.uint8))
    # int32 magic, ndim, then max(3, ndim) sizes with the unused ones 1, all little-endian; then the data.
    assert (tmp_path / "cat.mat").read_bytes() == np.array([0x1E3D4C54, 1, 2, 1, 1, 3, 1], "<i4").tobytes()
    assert (tmp_path / "dat.mat").read_bytes() == np.array([0x1E3D4C55, 4, 1, 2, 1, 1], "<i4").tobytes() + b"\0\0"


def test_write_rejects_other_dtypes(tmp_path):
    with pytest.raises(ValueError, match="Received: array.dtype=int64"):
        write_norb(tmp_path / "a.mat", np.zeros(3, np.int64))


def header(magic, ndim, *sizes):
    return np.array([magic, ndim, *sizes], "<i4").tobytes()


LABELS = np.arange(4, dtype="<i4").tobytes()
BROKEN_FILES = {
    "bad magic": (header(0x1E3D4C99, 1, 4, 1, 1) + LABELS, "bad magic number 0x1E3D4C99"),
    "packed matrix magic": (header(0x1E3D4C52, 1, 4, 1, 1) + LABELS, "bad magic number 0x1E3D4C52"),
    "idx file": (bytes([0, 0, 8, 1, 0, 0, 0, 4]) + bytes(4), "bad magic number 0x01080000"),
    "zero dims": (header(0x1E3D4C54, 0, 1, 1, 1), "unsupported number of dimensions 0"),
    "nine dims": (header(0x1E3D4C55, 9, *[1] * 9) + b"\0", "unsupported number of dimensions 9"),
    "too short": (b"\x54\x4c\x3d\x1e", "truncated: 4 bytes"),
    "truncated header": (header(0x1E3D4C54, 1, 4), "truncated: header needs 20 bytes for 1 dimensions"),
    "truncated data": (header(0x1E3D4C54, 1, 4, 1, 1) + LABELS[:-1], "truncated: header says 4 of int32 (16 bytes)"),
    "trailing data": (header(0x1E3D4C54, 1, 4, 1, 1) + LABELS + b"\0\0", "trailing data (2 extra bytes)"),
    "negative size": (header(0x1E3D4C54, 1, -4, 1, 1), "negative size in header shape -4"),
    "empty": (b"", "empty file"),
}


@pytest.mark.parametrize("case", BROKEN_FILES)
@pytest.mark.parametrize("gzipped", [False, True])
def test_broken_files(tmp_path, case, gzipped):
    content, expected = BROKEN_FILES[case]
    path = tmp_path / ("cat.mat.gz" if gzipped else "cat.mat")
    path.write_bytes(gzip.compress(content, mtime=0) if gzipped and content else content)
    with pytest.raises(DataError) as excinfo:
        read_norb(path)
    one_line_error(excinfo, str(path), expected)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "dat.mat.gz"
    write_norb(path, np.random.default_rng(0).integers(0, 256, (4, 2, 96, 96), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as excinfo:
        read_norb(path)
    one_line_error(excinfo, "dat.mat.gz", "corrupt gzip stream")


# --- the loader -----------------------------------------------------------------------------------------------------


def test_load_shapes_values_and_crops(fake_norb):
    root, written = fake_norb
    ds = load_dataset("smallnorb", data_dir=root)
    assert ds.source == str(root / "smallnorb") and ds.train_crop == 32
    assert ds.x_train.shape == (NUM_TRAIN - 1, 48, 48, 1)  # default validation split: 1/12 of the training pairs
    assert ds.x_val.shape == (1, 32, 32, 1) and ds.x_test.shape == (NUM_TEST, 32, 32, 1)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int64 and 0 <= x.min() and x.max() <= 1
    assert ds.input_shape == (32, 32, 1) and ds.num_classes == 5
    assert ds.class_names == ("animal", "human", "airplane", "truck", "car")
    assert ds.y_train.tolist() == [i % 5 for i in range(NUM_TRAIN - 1)] and ds.y_test.tolist() == [0, 1, 2, 3, 4, 0]
    assert ds.describe()["input_shape"] == [32, 32, 1] and ds.describe()["train_crop"] == 32

    train_pairs, test_pairs = written["train"][0], written["test"][0]
    np.testing.assert_allclose(ds.x_train[3, :, :, 0], downscaled(train_pairs[3, 0]), rtol=1e-6)
    np.testing.assert_allclose(ds.x_val[0, :, :, 0], downscaled(train_pairs[-1, 0])[8:40, 8:40], rtol=1e-6)
    np.testing.assert_allclose(ds.x_test[2, :, :, 0], downscaled(test_pairs[2, 0])[8:40, 8:40], rtol=1e-6)
    assert not np.allclose(ds.x_test[2, :, :, 0], downscaled(test_pairs[2, 1])[8:40, 8:40]), "the left image, not right"


def test_load_split_options_and_flat_layout(fake_norb):
    root, _ = fake_norb
    ds = load_dataset("smallNORB", data_dir=root / "smallnorb", val_size=3, val_seed=1, limit=4)
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (4, 3, NUM_TEST) and ds.val_seed == 1
    assert ds.x_val.shape == (3, 32, 32, 1)


def test_missing_files_say_which_where_and_where_to_get_them(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as excinfo:
        load_dataset("smallnorb", data_dir=empty)
    one_line_error(excinfo, "no smallNORB files found", f"searched {empty / 'smallnorb'}, {empty}", URL, TRAIN_DAT,
                   TEST_CAT, "--data-dir", "never downloaded")


def test_some_files_missing_is_named(fake_norb):
    root, _ = fake_norb
    (root / "smallnorb" / (TEST_CAT + ".gz")).unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("smallnorb", data_dir=root)
    one_line_error(excinfo, "found 3 of the 4 smallNORB files", f"missing: {TEST_CAT}", URL)


def test_no_subset(fake_norb):
    with pytest.raises(DataError) as excinfo:
        load_dataset("smallnorb", subset=True, data_dir=fake_norb[0])
    one_line_error(excinfo, "no bundled subset", URL)


def broken_split(kind):
    pairs, labels, info = fake_split(NUM_TEST, 1)
    if kind == "count":
        return pairs[:-1], labels, info
    if kind == "label":
        labels = labels.copy()
        labels[4] = 7
        return pairs, labels, info
    if kind == "negative label":
        labels = labels.copy()
        labels[0] = -1
        return pairs, labels, info
    if kind == "mono images":
        return pairs[:, 0], labels, info
    return pairs, labels.astype(np.uint8), info


@pytest.mark.parametrize("kind, expected", [
    ("count", f"{TEST_CAT}.gz: holds 6 labels but {TEST_DAT} holds 5 image pairs"),
    ("label", f"{TEST_CAT}.gz: label 7 at index 4 is out of range (expected 0 to 4)"),
    ("negative label", "label -1 at index 0 is out of range"),
    ("mono images", f"{TEST_DAT}: expected uint8 stereo pairs of 2x96x96, got uint8 of shape 6x96x96"),
    ("uint8 labels", f"{TEST_CAT}.gz: expected 1-D int32 labels, got uint8"),
])
def test_inconsistent_files(tmp_path, kind, expected):
    write_fake(tmp_path, test=broken_split(kind))
    with pytest.raises(DataError) as excinfo:
        load_dataset("smallnorb", data_dir=tmp_path)
    one_line_error(excinfo, expected)


def test_bad_magic_through_the_loader(fake_norb):
    root, _ = fake_norb
    path = root / "smallnorb" / TRAIN_CAT
    path.write_bytes(b"\0\0\0\0" + path.read_bytes()[4:])
    with pytest.raises(DataError) as excinfo:
        load_dataset("smallnorb", data_dir=root)
    one_line_error(excinfo, TRAIN_CAT, "bad magic number 0x00000000")


# --- training crops -------------------------------------------------------------------------------------------------


def test_random_crops_are_windows_of_the_right_image_and_seeded_by_epoch(fake_norb):
    ds = load_dataset("smallnorb", data_dir=fake_norb[0])
    a, b = (ShiftedBatches(ds.x_train, ds.y_train, 5, 4, max_shift=2, seed=7, crop=32) for _ in range(2))
    a.epoch = b.epoch = 2
    inputs, one_hot = a[1]
    assert inputs["image"].shape == (4, 32, 32, 1) and inputs["image"].dtype == np.float32
    rows = a._order()[4:8]
    windows = np.lib.stride_tricks.sliding_window_view(ds.x_train[rows, :, :, 0], (32, 32), axis=(1, 2))
    for k in range(4):
        crop = inputs["image"][k, :, :, 0]
        assert np.any(np.all(windows[k] == crop, axis=(-2, -1))), "each crop is a window of its own image"
        assert not np.any(np.all(windows[(k + 1) % 4] == crop, axis=(-2, -1)))
    np.testing.assert_array_equal(one_hot, np.eye(5)[ds.y_train[rows]])
    np.testing.assert_array_equal(b[1][0]["image"], inputs["image"])
    b.epoch = 3
    assert not np.array_equal(b[1][0]["image"], inputs["image"])


def test_crops_vary_within_an_epoch(fake_norb):
    ds = load_dataset("smallnorb", data_dir=fake_norb[0])
    images = np.repeat(ds.x_train[:1], 64, axis=0)
    batches = ShiftedBatches(images, np.zeros(64, int), 5, 64, max_shift=2, seed=0, crop=32)
    crops = batches[0][0]["image"].reshape(64, -1)
    assert len(np.unique(crops, axis=0)) > 32, "offsets are drawn per image, over the whole 17x17 range"


# --- per-image standardisation --------------------------------------------------------------------------------------


def test_per_image_standardization():
    import tensorflow as tf

    from capsrobust.layers import PerImageStandardization

    layer = PerImageStandardization()
    scale = np.array([1.0, 0.5, 5.0, 0.02], "float32")[:, None, None, None]  # the last: std under the 1/32 floor
    images = np.random.default_rng(0).uniform(size=(4, 32, 32, 1)).astype("float32") * scale
    out = np.asarray(layer(images))
    assert out.shape == images.shape
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out[:3].std(axis=(1, 2, 3)), 1, rtol=1e-4)
    np.testing.assert_allclose(out, tf.image.per_image_standardization(images).numpy(), rtol=1e-4, atol=1e-5)

    constant = tf.Variable(np.full((2, 32, 32, 1), 0.5, dtype="float32"))
    with tf.GradientTape() as tape:
        standardized = layer(constant)
        loss = tf.reduce_sum(standardized * tf.reshape(tf.range(1024, dtype="float32"), (1, 32, 32, 1)))
    assert np.all(standardized.numpy() == 0)
    assert np.all(np.isfinite(tape.gradient(loss, constant).numpy()))


# --- the train command ----------------------------------------------------------------------------------------------


def test_model_config_comes_from_the_data_set(fake_norb, monkeypatch):
    from capsrobust.cli.train import _fit_config
    from capsrobust.models import registry

    def builder(image_shape=(28, 28, 1), num_classes=10, standardize=False, width=4):
        raise AssertionError("not built here")

    monkeypatch.setitem(registry._MODELS, "fake", registry.ModelSpec("fake", "cnn", "test model", builder))
    ds = load_dataset("smallnorb", data_dir=fake_norb[0])
    assert _fit_config("fake", {}, ds) == {"image_shape": [32, 32, 1], "num_classes": 5, "standardize": True,
                                           "width": 4}
    assert _fit_config("fake", {"standardize": False, "width": None}, ds)["standardize"] is False
    capsnet = _fit_config("capsnet", {"routings": 2}, ds)
    assert "standardize" not in capsnet and capsnet["image_shape"] == [32, 32, 1] and capsnet["num_classes"] == 5
    with pytest.raises(ConfigError) as excinfo:
        _fit_config("fake", {"image_shape": [28, 28, 1]}, ds)
    one_line_error(excinfo, "does not fit smallnorb: image_shape=[28, 28, 1]", "image_shape=[32, 32, 1]")


def test_train_without_files_is_one_line_and_exit_2(tmp_path, monkeypatch, in_process):
    monkeypatch.setenv("CAPSROBUST_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CAPSROBUST_DATA", raising=False)
    code, _, error = in_process(tmp_path, "train", "smallnorb", "--model", "cnn-small")
    assert code == 2
    assert len(error.strip().splitlines()) == 1, error
    assert "no smallNORB files found" in error and URL in error
    assert not any((tmp_path / "models").glob("*"))
