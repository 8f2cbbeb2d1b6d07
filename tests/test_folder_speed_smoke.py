"""Smoke test of bench/folder_speed.py: table rows and the --out section handling (no timing thresholds)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from conftest import CIFAR10_5K

BENCH = Path(__file__).resolve().parents[1] / "bench" / "folder_speed.py"


@pytest.mark.skipif(not CIFAR10_5K.is_dir(), reason="cifar10-5k subset not present")
def test_quick_run_writes_its_section(tmp_path):
    spec = importlib.util.spec_from_file_location("folder_speed", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Benchmarks\n\n{bench.START}\nstale\n{bench.END}\n\ntail kept\n")
    text = bench.main(["--quick", "--images", "128", "--out", str(out)])
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| CIFAR") or line.startswith("| folder")]
    assert [r[0].strip() for r in rows] == ["CIFAR-10 in memory (reference)", "folder, in memory", "folder, streamed, 0 workers",
                                            "folder, streamed, 1 worker"]
    assert all(math.isfinite(float(r[i])) and float(r[i]) > 0 for r in rows for i in (1, 2, 3))
    assert "Decoding the folder into memory" in text
    written = out.read_text()
    assert "stale" not in written and text in written and written.endswith(f"{bench.END}\n\ntail kept\n")
