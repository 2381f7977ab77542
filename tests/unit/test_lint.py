"""The code rules a tool can check, checked by the suite: ruff with the project's configuration (pyproject.toml:
pyflakes, pycodestyle, import order, bugbear, and keyword-only parameters past the third)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_enforces_the_keyword_rule(tmp_path):
    source = tmp_path / "positional.py"
    source.write_text('def scaled(values, factor, offset, clip):\n    """Four positional parameters."""\n'
                      "    return values\n")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "json", "--config",
                             str(REPO / "pyproject.toml"), str(source)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert [finding["code"] for finding in json.loads(result.stdout)] == ["PLR0917"]
