import os

import pytest


@pytest.fixture(scope="session")
def benchmark_dataset():
    """Full MNIST when `CAPSROBUST_DATA` points at it, else the bundled subset (the figures say which)."""
    from capsrobust.data import load_dataset

    if os.environ.get("CAPSROBUST_DATA"):
        return load_dataset("mnist")
    return load_dataset("mnist", subset=True)
