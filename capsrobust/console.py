"""The `rich` consoles every command prints through: results on stdout, progress and errors on stderr."""

import sys

from rich.console import Console

# Rich assumes 80 columns when output is not a terminal, which folds every table in logs and CI output.
_LOG_WIDTH = 140

console = Console(width=None if sys.stdout.isatty() else _LOG_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _LOG_WIDTH)
