"""ruff, configured in pyproject.toml ([tool.ruff]), finds nothing in the repository (issue 13: CI runs it with the tests)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _ruff() -> list[str] | None:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    path = shutil.which("ruff")
    return [path] if path else None


def test_ruff_finds_nothing():
    ruff = _ruff()
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]' brings it)")
    done = subprocess.run([*ruff, "check", "--no-cache", "--output-format", "concise", "."], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check . found:\n{done.stdout}{done.stderr}"
