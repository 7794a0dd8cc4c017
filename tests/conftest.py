import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Under pytest-xdist (`-n 2`) each worker computes on one thread, in its subprocesses too: TensorFlow's and torch's
# pools otherwise size themselves to every core in each worker, two workers' worth of threads on two cores.
if "PYTEST_XDIST_WORKER" in os.environ:
    for variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# ART sets up logging handlers on sys.stderr when first imported. Imported inside a test that captures output (capsys),
# they would hold that test's capture buffer and write to it after it is closed ("I/O operation on closed file",
# "lost sys.stderr": a crash that depended on which test imported ART first); imported here, at collection, they hold
# the real stderr.
import capsrobust.sweep  # noqa: F401  (imports ART)

ROOT = Path(__file__).resolve().parents[1]

# Fixtures whose set-up trains models or starts subprocesses (seconds to minutes on a CPU): every test that uses one,
# directly or through another fixture, is marked slow. Tests that train or start processes in their own body carry
# `@pytest.mark.slow` themselves. `python -m pytest -m "not slow"` runs the quick tier (see pytest.ini).
SLOW_FIXTURES = {
    "trained_small_models",  # below: the zoo's capsnet-small and cnn-small (attack, sweep, cross-backend tests)
    "run_under_backend",  # below: a Python subprocess under another Keras backend
    "two_device_run",  # test_distribute.py: a subprocess training on two logical devices
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)


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
def trained_small_models(tmp_path_factory):
    """The zoo's capsnet-small and cnn-small (attack, sweep and cross-backend tests), loaded once per session.

    Converged models, as users attack them, trained on full MNIST by `capsrobust train` (their cards say how).
    Training two models for two epochs here took about two minutes of every test process, and gave half-trained
    models, not the converged ones robustness figures are measured on (whose margin loss is often flat).
    """
    from capsrobust.store import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("store"))
    return {name: store.load(store.resolve(name, "mnist", zoo_only=True)) for name in ("capsnet-small", "cnn-small")}


@pytest.fixture(scope="session")
def run_under_backend():
    """`run(backend, script, timeout=300) -> stdout`: runs Python `script` in a subprocess under that Keras backend.

    The subprocess imports this checkout's package and inherits the calling test's isolated environment. The test is
    skipped when the backend's framework is not installed (CI installs the CPU builds of all three) and fails, showing
    the subprocess's stderr, when the script exits non-zero.
    """
    from capsrobust.backend import backend_environment, is_installed

    def run(backend: str, script: str, timeout: float = 300) -> str:
        if not is_installed(backend):
            pytest.skip(f"the {backend} backend is not installed")
        done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout, env=backend_environment(backend, PYTHONPATH=str(ROOT)))
        assert done.returncode == 0, f"{backend} subprocess failed:\n{done.stderr[-3000:]}"
        return done.stdout

    return run


@pytest.fixture
def in_process(monkeypatch, capsys):
    """`in_process(home, *args) -> (exit code, stdout, stderr)`: `capsrobust ARGS` in this process, with the store in
    `home`, for commands whose exit code and output a test checks once a real process has shown what only a process
    can (each new process costs a TensorFlow import)."""
    from capsrobust.cli import main

    def run(home, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("CAPSROBUST_HOME", str(home))
        monkeypatch.setenv("COLUMNS", "200")
        capsys.readouterr()
        code = main(list(args))
        return (code, *capsys.readouterr())

    return run


@pytest.fixture(scope="session")
def torch_cnn(mnist_subset):
    """A small torch CNN trained one epoch on the subset (~1 s), 81% test accuracy: FAB-T and Square are checked
    against torchattacks on it."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches on shared cores: more threads only contend (5-10x slower measured)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    images, labels = torch.tensor(mnist_subset.x_train).permute(0, 3, 1, 2), torch.tensor(mnist_subset.y_train)
    for batch in torch.randperm(len(images)).split(64):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(images[batch]), labels[batch]).backward()
        optimizer.step()
    yield net.eval()
    torch.set_num_threads(threads)
