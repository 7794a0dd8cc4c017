"""Tests for capsrobust.data: the IDX reader/writer, the bundled subset and the data set loader.

No network and nothing outside the repo: the "full" data sets here are small IDX files written into tmp_path, with
the published-checksum table patched to their hashes.
"""

import gzip
import hashlib
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from capsrobust.data import datasets, list_datasets, load_dataset, read_idx, sha256_file, write_idx
from capsrobust.errors import CapsrobustError, DataError

NUM_TRAIN, NUM_TEST = 120, 30


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """No network, no user cache, no CAPSROBUST_DATA from the developer's shell."""
    monkeypatch.setenv("CAPSROBUST_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CAPSROBUST_DATA", raising=False)


def fake_arrays(num, offset=0):
    """`num` 28x28 uint8 images whose pixel [0, 0] is their index (mod 256), and labels (index + offset) % 10."""
    images = np.full((num, 28, 28), offset, dtype=np.uint8)
    images[:, 0, 0] = np.arange(num) % 256
    return images, ((np.arange(num) + offset) % 10).astype(np.uint8)


def write_fake(directory, offset=0, train=None, test=None):
    """Writes the four files of a fake data set into `directory`; returns {file name: sha256}."""
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train = train if train is not None else fake_arrays(NUM_TRAIN, offset)
    x_test, y_test = test if test is not None else fake_arrays(NUM_TEST, offset)
    contents = {
        datasets.TRAIN_IMAGES: x_train, datasets.TRAIN_LABELS: y_train,
        datasets.TEST_IMAGES: x_test, datasets.TEST_LABELS: y_test,
    }
    for file, array in contents.items():
        write_idx(directory / file, array)
    return {file: sha256_file(directory / file) for file in contents}


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """A fake MNIST in tmp_path/data/mnist/, registered as the canonical files; returns the data root."""
    root = tmp_path / "data"
    monkeypatch.setitem(datasets.SHA256, "mnist", write_fake(root / "mnist"))
    return root


def pixel_ids(images):
    """Recovers the index written by `fake_arrays` from float images of shape (n, 28, 28, 1)."""
    return np.rint(images[:, 0, 0, 0] * 255).astype(int)


def one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# --- the bundled subset ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_subset_loads(name):
    ds = load_dataset(name, subset=True)
    assert ds.source == "subset" and ds.name == name
    assert ds.x_train.shape == (3667, 28, 28, 1) and ds.x_val.shape == (333, 28, 28, 1)
    assert ds.x_test.shape == (1000, 28, 28, 1)
    for x, y in [(ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)]:
        assert x.dtype == np.float32 and y.dtype == np.int64 and len(x) == len(y)
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10)), "every class is present in every split"
    assert ds.input_shape == (28, 28, 1) and ds.num_classes == 10 and len(ds.class_names) == 10
    assert json.loads(json.dumps(ds.describe()))["train"] == 3667


def test_subset_is_the_first_canonical_records():
    labels = read_idx(datasets.SUBSET_DIR / "mnist" / datasets.TRAIN_LABELS)
    assert labels.shape == (4000,) and labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert read_idx(datasets.SUBSET_DIR / "fashion-mnist" / datasets.TEST_IMAGES).shape == (1000, 28, 28)


def test_subset_files_match_sha256sums():
    lines = (datasets.SUBSET_DIR / "SHA256SUMS").read_text().split("\n")
    entries = [line.split("  ") for line in lines if line]
    assert len(entries) == 8
    for digest, relative in entries:
        assert sha256_file(datasets.SUBSET_DIR / relative) == digest, relative


def test_subset_checksum_is_verified(tmp_path, monkeypatch):
    copy = tmp_path / "subset"
    shutil.copytree(datasets.SUBSET_DIR, copy)
    monkeypatch.setattr(datasets, "SUBSET_DIR", copy)
    target = copy / "mnist" / datasets.TEST_LABELS
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes()), mtime=0, compresslevel=1))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", subset=True)
    one_line_error(excinfo, datasets.TEST_LABELS, "sha256 mismatch")


def test_subset_looks_nowhere_else(tmp_path):
    ds = load_dataset("mnist", subset=True, data_dir=tmp_path / "does-not-exist")
    assert ds.source == "subset"


# --- IDX reading and writing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_round_trip(tmp_path, suffix):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / f"a-idx3-ubyte{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.uint8 and np.array_equal(back, array)
    back[0, 0, 0] = 7  # the result is an ordinary writable array
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_write_is_byte_reproducible_and_leaves_no_temp_file(tmp_path):
    array = np.eye(28, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    first = (tmp_path / "a.gz").read_bytes()
    write_idx(tmp_path / "a.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["a.gz"]


def test_write_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="Received: array.dtype=float32"):
        write_idx(tmp_path / "a.gz", np.zeros(3, np.float32))


def test_reads_other_idx_type_codes(tmp_path):
    path = tmp_path / "f.idx"
    path.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 2]) + np.array([1.5, -2.0], ">f4").tobytes())
    assert read_idx(path).tolist() == [1.5, -2.0]


def idx_bytes(array):
    return bytes([0, 0, 8, array.ndim]) + b"".join(s.to_bytes(4, "big") for s in array.shape) + array.tobytes()


LABELS = np.arange(10, dtype=np.uint8)
BROKEN_FILES = {
    "truncated": (idx_bytes(LABELS)[:6], "truncated: header needs 8 bytes"),
    "wrong magic": (b"\x01\x02" + idx_bytes(LABELS)[2:], "bad magic number 0x01020801"),
    "unknown type code": (b"\x00\x00\x07\x01" + idx_bytes(LABELS)[4:], "bad magic number 0x00000701"),
    "zero dims": (b"\x00\x00\x08\x00", "unsupported number of dimensions 0"),
    "five dims": (b"\x00\x00\x08\x05" + b"\x00\x00\x00\x01" * 5 + b"\x00", "unsupported number of dimensions 5"),
    "more items than present": (
        idx_bytes(np.zeros((10, 28, 28), np.uint8))[:16 + 312],
        "truncated: header says 10 items of 28x28 of uint8 (7840 bytes) but file holds 312 bytes of data",
    ),
    "zero items but overflowing dims": (
        b"\x00\x00\x08\x03" + b"\x00\x00\x00\x00" + b"\xff\xff\xff\xff" * 2, "unsupported shape 0x4294967295x4294967295"
    ),
    "trailing bytes": (idx_bytes(LABELS) + b"\x00\x00\x00", "trailing data (3 extra bytes)"),
    "empty": (b"", "empty file"),
}


@pytest.mark.parametrize("case", BROKEN_FILES)
@pytest.mark.parametrize("gzipped", [False, True])
def test_broken_files(tmp_path, case, gzipped):
    content, expected = BROKEN_FILES[case]
    path = tmp_path / ("labels.gz" if gzipped else "labels")
    path.write_bytes(gzip.compress(content, mtime=0) if gzipped and content else content)
    with pytest.raises(DataError) as excinfo:
        read_idx(path)
    one_line_error(excinfo, str(path), expected)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_corrupt_gzip(tmp_path, damage):
    path = tmp_path / "images.gz"
    write_idx(path, np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8))
    raw = bytearray(path.read_bytes())
    if damage == "cut":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 2] ^= 0xFF
        raw[-8] ^= 0xFF  # the CRC, in case the flipped bit still inflates
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as excinfo:
        read_idx(path)
    one_line_error(excinfo, "images.gz", "corrupt gzip stream")


def test_gz_suffix_on_a_raw_file_is_corrupt(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(idx_bytes(LABELS))
    with pytest.raises(DataError, match="corrupt gzip stream"):
        read_idx(path)


def test_gzip_magic_without_suffix_is_gunzipped(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(idx_bytes(LABELS)))
    assert np.array_equal(read_idx(path), LABELS)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_idx(tmp_path / "nope.gz")
    one_line_error(excinfo, "nope.gz", "no such file")
    (tmp_path / "dir.gz").mkdir()
    with pytest.raises(DataError) as excinfo:
        read_idx(tmp_path / "dir.gz")
    one_line_error(excinfo, "dir.gz", "not a regular file (it is a directory)")


def test_checksum_mismatch_gives_both_short_hashes(tmp_path):
    path = tmp_path / "labels.gz"
    write_idx(path, LABELS)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.array_equal(read_idx(path, expected_sha256=actual), LABELS)
    with pytest.raises(DataError) as excinfo:
        read_idx(path, expected_sha256="ab" * 32)
    one_line_error(excinfo, "labels.gz", "sha256 mismatch", "abababababab", actual[:12])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=hnp.arrays(np.uint8, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6)))
def test_property_round_trip(tmp_path, array):
    for name in ("p.gz", "p"):
        write_idx(tmp_path / name, array)
        back = read_idx(tmp_path / name)
        assert back.shape == array.shape and np.array_equal(back, array)


HEADERS = st.builds(
    lambda code, ndim, dims: bytes([0, 0, code, ndim]) + b"".join(d.to_bytes(4, "big") for d in dims),
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x01]),
    st.integers(0, 6),
    st.lists(st.integers(0, 5) | st.integers(0, 2**32 - 1), max_size=6),
)


# Hypothesis's default 100 examples: each of the three kinds of content is tried about 30 times per run.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(max_size=64)
    | st.builds(bytes.__add__, HEADERS, st.binary(max_size=64))
    | st.builds(lambda tail: b"\x1f\x8b\x08" + tail, st.binary(max_size=64)),
    compress=st.booleans(),
    cut=st.integers(-30, 0),
    name=st.sampled_from(["r.gz", "r"]),
)
def test_property_random_bytes_parse_or_raise_data_error(tmp_path, content, compress, cut, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content)[: cut or None] if compress else content)
    try:
        result = read_idx(path)
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(result, np.ndarray) and 1 <= result.ndim <= 4


# --- the loader -----------------------------------------------------------------------------------------------------


def test_list_datasets():
    assert list_datasets() == ["fashion-mnist", "mnist", "smallnorb"]


def test_unknown_name():
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar10")
    one_line_error(excinfo, "fashion-mnist, mnist", "Received: name='cifar10'")
    assert isinstance(excinfo.value, CapsrobustError)


def test_nothing_found_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    cache = tmp_path / "cache" / "capsrobust" / "data"
    one_line_error(
        excinfo, "no MNIST files found", f"searched {cache / 'mnist'}, {cache}", "CAPSROBUST_OFFLINE",
        f"in {cache / 'mnist'}/", "--data-dir", "--subset", datasets.TRAIN_IMAGES,
    )


def test_layout_name_subdirectory(fake_mnist):
    ds = load_dataset("mnist", data_dir=fake_mnist)
    assert ds.source == str(fake_mnist / "mnist")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (NUM_TRAIN - 10, 10, NUM_TEST)
    assert ds.x_train.shape[1:] == (28, 28, 1) and ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64


def test_layout_flat_directory(fake_mnist):
    flat = fake_mnist / "mnist"
    assert load_dataset("mnist", data_dir=flat).source == str(flat)


def test_flat_directory_of_the_other_data_set_is_skipped(fake_mnist, tmp_path, monkeypatch):
    fashion = tmp_path / "fashion"
    monkeypatch.setitem(datasets.SHA256, "fashion-mnist", write_fake(fashion, offset=1))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=fashion)
    one_line_error(excinfo, f"{fashion} (holds Fashion-MNIST)", "no MNIST files found")
    assert load_dataset("fashion-mnist", data_dir=fashion).source == str(fashion)


def test_other_data_set_in_the_named_folder_is_an_error(fake_mnist, tmp_path, monkeypatch):
    root = tmp_path / "mixed"
    monkeypatch.setitem(datasets.SHA256, "fashion-mnist", write_fake(root / "mnist", offset=1))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=root)
    one_line_error(excinfo, "is Fashion-MNIST's file, not MNIST's")


def test_wrong_checksum_in_explicit_directory_is_an_error(fake_mnist):
    write_idx(fake_mnist / "mnist" / datasets.TEST_LABELS, np.zeros(NUM_TEST, np.uint8))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=fake_mnist)
    one_line_error(excinfo, datasets.TEST_LABELS, "sha256 mismatch")


def test_missing_one_file_is_named(fake_mnist):
    (fake_mnist / "mnist" / datasets.TRAIN_LABELS).unlink()
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=fake_mnist)
    one_line_error(excinfo, "found 3 of the 4 MNIST files", f"missing: {datasets.TRAIN_LABELS}")


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path / "typo")
    one_line_error(excinfo, "does not exist", "Received: data_dir=")


def test_partial_cache_is_reported_offline(fake_mnist, tmp_path):
    cache = tmp_path / "cache" / "capsrobust" / "data" / "mnist"
    cache.mkdir(parents=True)
    shutil.copy(fake_mnist / "mnist" / datasets.TEST_LABELS, cache)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    one_line_error(excinfo, f"{cache} (1 of 4 files)", "downloads disabled")


def test_env_and_cache_are_searched(fake_mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSROBUST_DATA", str(fake_mnist))
    assert load_dataset("mnist").source == str(fake_mnist / "mnist")
    monkeypatch.delenv("CAPSROBUST_DATA")
    cache = tmp_path / "cache" / "capsrobust" / "data"
    shutil.copytree(fake_mnist / "mnist", cache / "mnist")
    assert load_dataset("mnist").source == str(cache / "mnist")


def test_download_falls_through_mirrors_and_verifies(fake_mnist, tmp_path, monkeypatch):
    bad = tmp_path / "bad-mirror"
    write_fake(bad, offset=2)  # right names, wrong checksums
    mirrors = (f"{(tmp_path / 'absent').as_uri()}/", f"{bad.as_uri()}/", f"{(fake_mnist / 'mnist').as_uri()}/")
    monkeypatch.setitem(datasets.DATASETS, "mnist", datasets.DatasetInfo("MNIST", mirrors, tuple("0123456789")))
    monkeypatch.delenv("CAPSROBUST_OFFLINE")
    ds = load_dataset("mnist")
    cache = tmp_path / "cache" / "capsrobust" / "data" / "mnist"
    assert ds.source == str(cache) and sorted(p.name for p in cache.iterdir()) == sorted(datasets.FILES)
    monkeypatch.setenv("CAPSROBUST_OFFLINE", "1")
    assert load_dataset("mnist").source == str(cache)


def test_labels_count_must_match_images(tmp_path, monkeypatch):
    x, y = fake_arrays(NUM_TEST)
    monkeypatch.setitem(datasets.SHA256, "mnist", write_fake(tmp_path / "d", test=(x, y[:-1])))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path / "d")
    one_line_error(excinfo, f"{datasets.TEST_LABELS}: holds 29 labels but {datasets.TEST_IMAGES} holds 30 images")


def test_labels_must_be_in_range(tmp_path, monkeypatch):
    x, y = fake_arrays(NUM_TRAIN)
    y[7] = 10
    monkeypatch.setitem(datasets.SHA256, "mnist", write_fake(tmp_path / "d", train=(x, y)))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=tmp_path / "d")
    one_line_error(excinfo, datasets.TRAIN_LABELS, "label 10 at index 7 is out of range (expected 0 to 9)")


def test_images_must_be_28x28(tmp_path, monkeypatch):
    x = np.zeros((NUM_TEST, 32, 32), np.uint8)
    monkeypatch.setitem(datasets.SHA256, "mnist", write_fake(tmp_path / "d", test=(x, fake_arrays(NUM_TEST)[1])))
    with pytest.raises(DataError, match="expected uint8 images of 28x28, got uint8 of shape 30x32x32"):
        load_dataset("mnist", data_dir=tmp_path / "d")


def test_default_validation_split_is_the_last_images(fake_mnist):
    ds = load_dataset("mnist", data_dir=fake_mnist)
    assert pixel_ids(ds.x_val).tolist() == list(range(NUM_TRAIN - 10, NUM_TRAIN))
    assert pixel_ids(ds.x_train).tolist() == list(range(NUM_TRAIN - 10))
    assert ds.y_val.tolist() == [i % 10 for i in range(NUM_TRAIN - 10, NUM_TRAIN)]
    assert pixel_ids(ds.x_test).tolist() == list(range(NUM_TEST))
    assert len(load_dataset("mnist", data_dir=fake_mnist, val_size=0).y_val) == 0


def test_val_seed_is_deterministic(fake_mnist):
    a, b, c = (load_dataset("mnist", data_dir=fake_mnist, val_size=20, val_seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(pixel_ids(a.x_val), pixel_ids(c.x_val))
    train, val = pixel_ids(a.x_train), pixel_ids(a.x_val)
    assert len(val) == 20 and sorted([*train, *val]) == list(range(NUM_TRAIN))
    assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0), "each split keeps the file's order"
    assert np.array_equal(a.y_val, val % 10), "labels travel with their images"
    assert a.describe()["val_seed"] == 1


def test_limit_caps_training_images_only(fake_mnist):
    ds = load_dataset("mnist", data_dir=fake_mnist, limit=25)
    assert pixel_ids(ds.x_train).tolist() == list(range(25))
    assert (len(ds.y_val), len(ds.y_test)) == (10, NUM_TEST)
    assert len(load_dataset("mnist", data_dir=fake_mnist, limit=10**6).y_train) == NUM_TRAIN - 10


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"limit": 0}, "limit=0"),
        ({"limit": 2.5}, "limit=2.5"),
        ({"val_size": NUM_TRAIN}, f"val_size={NUM_TRAIN}"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_seed": "x"}, "val_seed='x'"),
    ],
)
def test_bad_arguments(fake_mnist, kwargs, received):
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=fake_mnist, **kwargs)
    one_line_error(excinfo, f"Received: {received}")
