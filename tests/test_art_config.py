"""capsrobust writes ART's configuration before ART can race two first imports into a NameError."""

import json
import os
import subprocess
import sys


def _run(code: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_importing_capsrobust_writes_the_file_art_would_write(tmp_path):
    ours, arts = tmp_path / "ours", tmp_path / "arts"
    ours.mkdir()
    arts.mkdir()

    before_art = _run("import capsrobust, os; print(os.path.exists(os.path.expanduser('~/.art/config.json')))", ours)
    assert before_art.returncode == 0, before_art.stderr
    assert before_art.stdout.strip() == "True"  # there before anything imports ART
    assert _run("import art.config", arts).returncode == 0  # ART alone, writing its own default

    def config(home):
        return json.loads((home / ".art" / "config.json").read_text())

    assert config(ours) == {"ART_DATA_PATH": str(ours / ".art" / "data")}
    assert config(arts) == {"ART_DATA_PATH": str(arts / ".art" / "data")}
    assert sorted(p.name for p in (ours / ".art").iterdir() if p.name != "data") == ["config.json"]  # no temp file


def test_a_users_own_art_config_is_left_as_it_is(tmp_path):
    (tmp_path / ".art").mkdir()
    own = {"ART_DATA_PATH": str(tmp_path / "elsewhere")}
    (tmp_path / ".art" / "config.json").write_text(json.dumps(own))

    result = _run("import capsrobust, art.config; print(art.config.ART_DATA_PATH)", tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == own["ART_DATA_PATH"]
    assert json.loads((tmp_path / ".art" / "config.json").read_text()) == own
