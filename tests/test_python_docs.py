"""docs/python.md runs: its ```python blocks, in order, in a fresh process and folder, with fewer images and one epoch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"
SIZE_LINE = "N_IMAGES, EPOCHS = 400, 10"


def example_code() -> str:
    blocks = re.findall(r"^```python\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    code = "\n".join(blocks)
    assert len(blocks) >= 5 and code.count(SIZE_LINE) == 1, "the example's size line changed; update this test"
    return code.replace(SIZE_LINE, "N_IMAGES, EPOCHS = 96, 1")


def test_the_python_example_runs_and_writes_its_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "DISTILLSCOPE_CACHE": str(tmp_path / "teacher-cache")}
    done = subprocess.run([sys.executable, "-c", example_code()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(re.fullmatch(r"CE student \d+\.\d%, KD student \d+\.\d%", line) for line in lines)
    assert "smallnet patterns?n=96" in lines and "python:SmallNet python:Patterns" in lines
    assert any("records Python objects (student 'python:SmallNet', data 'python:Patterns')" in line for line in lines)
    html = tmp_path / "runs" / "py" / "report" / "report.html"
    assert str(html.relative_to(tmp_path)) in lines and "Agreement with the teacher" in html.read_text()
