"""ART's per-user configuration file, written before ART is first imported.

ART 1.20 writes `~/.art/config.json` on its first import with a check-then-write: a process that finds the file
missing at the first check and present at the second never defines its configuration and dies with
`NameError: name '_config' is not defined`. Two processes importing ART together for the first time on a machine,
as the README's two attack shards side by side do, hit exactly that. Writing ART's own default atomically, before
either imports ART, leaves ART nothing to race on.
"""

import json
import os
from pathlib import Path

from capsrobust.io import atomic_path


def art_config_path() -> Path:
    """Where ART looks for its configuration: `~/.art/config.json`, or `/tmp/.art/config.json` if home is read-only."""
    home = os.path.expanduser("~")
    return Path(home if os.access(home, os.W_OK) else "/tmp") / ".art" / "config.json"


def write_default_art_config() -> None:
    """Writes ART's default configuration (data under `.art/data` beside it) if there is none; never raises.

    A user's own file is left as it is; if the file cannot be written, ART's own start-up has its say.
    """
    path = art_config_path()
    if path.exists():
        return
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"ART_DATA_PATH": str(path.parent / "data")}, indent=4), encoding="utf8")
    except OSError:
        pass
