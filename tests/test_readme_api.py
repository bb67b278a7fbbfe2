"""README's "Python API" example, run verbatim in a fresh interpreter (it must not import torch)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs_verbatim(tmp_path):
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    check = code + "\nimport sys\nassert 'torch' not in sys.modules, 'the CPU example imported torch'\n"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(README.parent), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "numpy on cpu (fp32), x4" in out.stdout and "model not found" in out.stdout
