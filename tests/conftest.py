import pytest


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    """No test touches the network, the user's store or the user's data cache."""
    monkeypatch.setenv("CAPSROBUST_OFFLINE", "1")
    monkeypatch.setenv("CAPSROBUST_HOME", str(tmp_path_factory.mktemp("home")))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("CAPSROBUST_DATA", raising=False)


@pytest.fixture(scope="session")
def mnist_subset():
    from capsrobust.data import load_dataset

    return load_dataset("mnist", subset=True)
