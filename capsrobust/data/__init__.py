"""Data sets: strict IDX reading, MNIST / Fashion-MNIST resolution with checksums, and a bundled real subset.

>>> from capsrobust.data import load_dataset
>>> ds = load_dataset("mnist", subset=True)
>>> ds.x_train.shape, ds.x_test.shape
((3667, 28, 28, 1), (1000, 28, 28, 1))
"""

from capsrobust.data.datasets import Dataset, list_datasets, load_dataset
from capsrobust.data.idx import read_idx, sha256_file, write_idx

__all__ = ["Dataset", "list_datasets", "load_dataset", "read_idx", "sha256_file", "write_idx"]
