"""Hostile data: every way an MNIST file can be broken, through `capsrobust train` as a user runs it.

Each fault damages one file of a small fake MNIST whose published checksums are patched to the damaged files (so the
damage reaches the parser; `checksum-mismatch` keeps the originals). Each must end in exit status 2, one error line
naming the file and what is wrong, and nothing written to the store.
"""

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from capsrobust.data import datasets, sha256_file, write_idx
from capsrobust.data.idx import gzip_bytes
from capsrobust.store import ModelStore

from conftest import assert_one_line_error

TRAIN_IMAGES, TRAIN_LABELS = datasets.TRAIN_IMAGES, datasets.TRAIN_LABELS
TEST_IMAGES, TEST_LABELS = datasets.TEST_IMAGES, datasets.TEST_LABELS


def _idx(array: np.ndarray) -> bytes:
    return bytes([0, 0, 8, array.ndim]) + b"".join(s.to_bytes(4, "big") for s in array.shape) + array.tobytes()


def _write(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip_bytes(payload))


def _labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _cut_gzip(path):
    path.write_bytes(path.read_bytes()[:-20])


def _flip_gzip(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    raw[-8] ^= 0xFF  # the CRC too, in case the flipped byte still inflates
    path.write_bytes(bytes(raw))


def _labels_out_of_range(path):
    labels = _labels(120)
    labels[7] = 10
    _write(path, _idx(labels))


def _unreadable(path, monkeypatch):
    """chmod 000; as root, which reads anyway, the read itself is made to fail with EACCES."""
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real = Path.read_bytes

    def read_bytes(self):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def _directory(path):
    path.unlink()
    path.mkdir()


# fault -> (file damaged, damage(path) or damage(path, monkeypatch), what the error says)
FAULTS = {
    "truncated-gzip": (TRAIN_IMAGES, _cut_gzip, "corrupt gzip stream"),
    "truncated-idx-payload": (TEST_IMAGES, lambda p: _write(p, _idx(_images(30))[:-100]),
                              "truncated: header says 30 items of 28x28 of uint8 (23520 bytes) but file holds 23420"),
    "gzip-corrupt": (TRAIN_LABELS, _flip_gzip, "corrupt gzip stream"),
    "wrong-magic": (TEST_LABELS, lambda p: _write(p, b"\x08\x03" + _idx(_labels(30))[2:]), "bad magic number"),
    "zero-dimensions": (TEST_LABELS, lambda p: _write(p, b"\x00\x00\x08\x00"), "unsupported number of dimensions 0"),
    "labels-with-3-dimensions": (TEST_LABELS, lambda p: _write(p, _idx(_labels(30).reshape(30, 1, 1))),
                                 "expected 1-D uint8 labels, got uint8 of shape 30x1x1"),
    "images-with-2-dimensions": (TEST_IMAGES, lambda p: _write(p, _idx(_images(30).reshape(30, 784))),
                                 "expected uint8 images of 28x28, got uint8 of shape 30x784"),
    "header-claims-more-items": (TRAIN_LABELS, lambda p: _write(p, bytes([0, 0, 8, 1]) + (500).to_bytes(4, "big")
                                                                + _labels(120).tobytes()),
                                 "truncated: header says 500 items of uint8 (500 bytes) but file holds 120 bytes"),
    "trailing-data": (TRAIN_LABELS, lambda p: _write(p, _idx(_labels(120)) + b"\x00" * 3), "trailing data"),
    "label-count-mismatch": (TEST_LABELS, lambda p: _write(p, _idx(_labels(29))),
                             f"holds 29 labels but {TEST_IMAGES} holds 30 images"),
    "label-outside-0-9": (TRAIN_LABELS, _labels_out_of_range, "label 10 at index 7 is out of range (expected 0 to 9)"),
    "checksum-mismatch": (TRAIN_IMAGES, lambda p: _write(p, _idx(_images(120)[::-1].copy())), "sha256 mismatch"),
    "empty-file": (TEST_IMAGES, lambda p: p.write_bytes(b""), "empty file"),
    "directory-instead-of-file": (TEST_LABELS, _directory, "not a regular file (it is a directory)"),
    "unreadable-permissions": (TRAIN_IMAGES, _unreadable, "cannot read: Permission denied"),
    "missing-file": (TEST_LABELS, lambda p: p.unlink(), f"found 3 of the 4 MNIST files; missing: {TEST_LABELS}"),
}


@pytest.fixture(scope="module")
def clean_mnist(tmp_path_factory):
    """A fake MNIST of 120 train and 30 test images, written once."""
    directory = tmp_path_factory.mktemp("clean") / "mnist"
    directory.mkdir()
    for name, array in {TRAIN_IMAGES: _images(120), TRAIN_LABELS: _labels(120), TEST_IMAGES: _images(30),
                        TEST_LABELS: _labels(30)}.items():
        write_idx(directory / name, array)
    return directory


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_data_file_is_one_line_exit_2_and_nothing_stored(fault, clean_mnist, tmp_path, monkeypatch, cli):
    file, damage, expected = FAULTS[fault]
    directory = tmp_path / "data" / "mnist"
    shutil.copytree(clean_mnist, directory)
    hashes = {name: sha256_file(directory / name) for name in datasets.FILES}
    target = directory / file
    if damage.__code__.co_argcount == 2:
        damage(target, monkeypatch)
    else:
        damage(target)
    if fault != "checksum-mismatch" and target.is_file() and os.access(target, os.R_OK):
        hashes[file] = sha256_file(target)  # the damaged file is "canonical": the parser must catch the damage
    monkeypatch.setitem(datasets.SHA256, "mnist", hashes)
    home = Path(os.environ["CAPSROBUST_HOME"])

    status, out, err = cli("train", "mnist", "--data-dir", directory.parent, "--model", "cnn-small", "--epochs", "1",
                           "--quiet")

    assert status == 2, err
    named = str(directory) if fault == "missing-file" else str(target)
    assert_one_line_error(err, named, expected)
    assert not any(home.iterdir()), "something was written to the store"


def test_a_clean_copy_of_the_fake_data_trains(clean_mnist, monkeypatch, cli):
    """The control: without damage the same command on the same fake data trains and stores a model, so each fault
    above is what fails."""
    monkeypatch.setitem(datasets.SHA256, "mnist", {n: sha256_file(clean_mnist / n) for n in datasets.FILES})
    data = datasets.load_dataset("mnist", data_dir=clean_mnist.parent)
    assert (len(data.y_train), len(data.y_val), len(data.y_test)) == (110, 10, 30)
    assert gzip.decompress((clean_mnist / TEST_LABELS).read_bytes())[:4] == b"\x00\x00\x08\x01"
    status, _, err = cli("train", "mnist", "--data-dir", clean_mnist.parent, "--model", "cnn-small", "--epochs", "1",
                         "--quiet")
    assert status == 0, err
    (entry,) = ModelStore(os.environ["CAPSROBUST_HOME"]).entries()
    assert not entry.problem and entry.card["dataset"]["train"] == 110


def test_a_resume_reads_the_data_directory_its_run_was_trained_on(clean_mnist, monkeypatch, cli, tmp_path):
    """`--resume` without `--data-dir` reads the images from where the run read them (its run record), not from the
    cache, which holds none here: offline, it failed with "no MNIST files found"."""
    monkeypatch.setitem(datasets.SHA256, "mnist", {n: sha256_file(clean_mnist / n) for n in datasets.FILES})
    store = tmp_path / "store"
    status, _, err = cli("train", "mnist", "--data-dir", clean_mnist.parent, "--model", "cnn-small", "--epochs", "1",
                         "--store", store, "--quiet")
    assert status == 0, err
    (run_dir,) = (store / "runs").iterdir()  # made unfinished, as a run stopped after its first epoch of two
    spec = json.loads((run_dir / "run.json").read_text())
    spec.pop("published")
    (run_dir / "run.json").write_text(json.dumps(spec))
    state = json.loads((run_dir / "state.json").read_text())
    (run_dir / "state.json").write_text(json.dumps({**state, "finished": False}))
    shutil.rmtree(store / "models")

    status, _, err = cli("train", "mnist", "--resume", run_dir.name, "--epochs", "2", "--store", store, "--quiet")
    assert status == 0, err
    (entry,) = ModelStore(store).entries()
    assert entry.card["dataset"]["source"] == str(clean_mnist) and entry.card["training"]["epochs_completed"] == 2
