import os

# TensorFlow keeps allocator statistics (current and peak bytes, resettable) on a CPU only with its BFC allocator, and
# reads this when it starts: set before anything imports it, so that the memory benchmarks can measure on a CPU.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

import pytest  # noqa: E402

from benchmarks.results import Result, new_run, results_path, save  # noqa: E402

_RUN = new_run()


def pytest_addoption(parser):
    parser.addoption("--jit", action="store_true",
                     help="compile the routing kernels with XLA (as the trainer's jit_compile='auto' does on a CPU) "
                          "instead of as plain tf.function graphs (as the ART bridge runs them)")


@pytest.fixture(scope="session")
def jit(request) -> bool:
    return bool(request.config.getoption("--jit"))


@pytest.fixture(scope="session")
def benchmark_dataset():
    """Full MNIST when `CAPSROBUST_DATA` points at it, else the bundled subset (the figures say which)."""
    from capsrobust.data import load_dataset

    if os.environ.get("CAPSROBUST_DATA"):
        return load_dataset("mnist")
    return load_dataset("mnist", subset=True)


@pytest.fixture
def record(request, benchmark):
    """`record(suite, case, variant, peak_bytes=None, images=None, **extra)` after the benchmark ran: keeps its median
    (and images/s when `images` per round is given) for the results file that `benchmarks.report` reads."""
    def keep(suite: str, case: str, variant: str, peak_bytes: int | None = None, images: int | None = None,
             **extra) -> None:
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return
        median = benchmark.stats.stats.median
        per_second = float(f"{images / median:.4g}") if images else None  # 4 digits: PGD-100 may be < 0.1/s
        benchmark.extra_info.update(case=case, variant=variant, peak_bytes=peak_bytes, images_per_second=per_second,
                                    **extra)
        save([Result(request.node.nodeid, suite, case, variant, median, peak_bytes, per_second, extra)], _RUN)

    return keep


def pytest_terminal_summary(terminalreporter):
    if results_path().is_file():
        terminalreporter.write_line(f"benchmark results: {results_path()} (python -m benchmarks.report)")
