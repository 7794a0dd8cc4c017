"""Data sets: strict IDX reading, MNIST / Fashion-MNIST resolution with checksums, a bundled real subset, and
smallNORB (strict reader of its binary matrix files, the preprocessing of Hinton et al. 2018).

>>> from capsrobust.data import load_dataset
>>> ds = load_dataset("mnist", subset=True)
>>> ds.x_train.shape, ds.x_test.shape
((3667, 28, 28, 1), (1000, 28, 28, 1))
"""

from capsrobust.data.datasets import Dataset, list_datasets, load_dataset
from capsrobust.data.idx import read_idx, sha256_file, write_idx
from capsrobust.data.smallnorb import read_norb, write_norb

__all__ = ["Dataset", "list_datasets", "load_dataset", "read_idx", "read_norb", "sha256_file", "write_idx",
           "write_norb"]
