"""Smoke test of bench/imagenet_loader.py: its rows and the sections it writes (no timing thresholds)."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "imagenet_loader.py"


def test_quick_run_writes_its_section_into_each_out_file(tmp_path):
    spec = importlib.util.spec_from_file_location("imagenet_loader", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    record, docs = tmp_path / "record.md", tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{bench.START}\nstale\n{bench.END}\n\ntail kept\n")
    text = bench.main(["--quick", "--threads", "1", "--out", str(record), "--out", str(docs)])
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith(("| loader", "| resnet18"))]
    assert [r[0].split(" (")[0].strip() for r in rows[:3]] == ["loader, 0 workers", "loader, 1 worker", "loader, 2 workers"]
    assert rows[3][0].strip() == "resnet18 training step at 32 px, fp32" and len(rows) in (4, 5)
    assert all(math.isfinite(float(r[i])) and float(r[i]) > 0 for r in rows for i in (1, 2))
    assert "bounds the run" in text and "CPU ms per image" in text
    assert text in record.read_text()
    written = docs.read_text()
    assert "stale" not in written and text in written and written.endswith(f"{bench.END}\n\ntail kept\n")
