"""Robustness sweeps: models x attacks x eps, with reconstruction-error detection, worst case, verdicts and trust
checks.

Modules, each importing only those before it: `plan` (configuration, models under test, the steps that apply),
`results` (`Cell`, the one schema of JSON, CSV and tables, and `SweepResult`), `metrics` (a cell's figures, the
worst case, verdicts, the noise baseline), `checks` (trust checks) and `run` (`run_sweep`).
"""

from capsrobust.sweep.plan import ModelUnderTest, SweepConfig, config_dict
from capsrobust.sweep.results import CSV_COLUMNS, Cell, SweepResult
from capsrobust.sweep.run import run_sweep

__all__ = ["CSV_COLUMNS", "Cell", "ModelUnderTest", "SweepConfig", "SweepResult", "config_dict", "run_sweep"]
