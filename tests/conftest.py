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


@pytest.fixture(scope="session")
def trained_small_models(mnist_subset, tmp_path_factory):
    """capsnet-small and cnn-small trained 2 epochs on the subset, once per session (attack and sweep tests)."""
    from capsrobust.models import model_config
    from capsrobust.training import TrainSettings, fit

    settings = TrainSettings(epochs=2, batch_size=64)
    return {name: fit(name, model_config(name), mnist_subset, settings, tmp_path_factory.mktemp(name)).model
            for name in ("capsnet-small", "cnn-small")}
