"""Every marked table in docs/results.md is what its kept records give (bench/results_tables.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("results_tables", ROOT / "bench" / "results_tables.py")
results_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(results_tables)


def test_marked_docs_tables_match_their_records():
    lines = results_tables.DOCS.read_text().splitlines(keepends=True)
    assert results_tables.marked(lines), "docs/results.md has no marked table: nothing would be checked"
    loose = results_tables.unmarked(lines)
    assert not loose, f"tables with no records in docs/results.md (line, heading): {loose}; mark them or move them to results-unrecorded.md"
    _, diffs, failed = results_tables.regenerate(results_tables.DOCS)
    assert not failed and not diffs, "\n".join(failed + diffs) + "\n(if the records are right: python bench/results_tables.py --write)"


def fake_records(root: Path) -> None:
    """Two seeds of one run in ``root/records/sweep``: test top-1 at the last epoch 70 and 72 (71.00 ± 1.41)."""
    for seed, last, best in ((0, 70.0, 69.0), (1, 72.0, 71.0)):
        run = root / "records" / "sweep" / f"toy-s{seed}"
        run.mkdir(parents=True)
        run.joinpath("summary.json").write_text(json.dumps({
            "name": "toy", "student": "resnet8", "method": "kd", "seed": seed, "epochs": 3, "precision": "fp32",
            "best": {"epoch": 2, "test/top1": best, "val/top1": 60.0 + seed}, "last": {"epoch": 3, "test/top1": last},
            "seconds": 120.0, "machine": "toy CPU", "threads": 1,
        }))
    (root / "table.py").write_text("print('| a | b |\\n|---|---|\\n| 1 | 2 |')\n")


def marked_doc(table: str) -> str:
    return (
        "# Toy\n\nProse with a number, 71.00, that no marker owns.  \n\n"
        "| unmarked | table |\n|---|---|\n| 1 | 71.00 |\n\n"
        f"<!-- table: distillscope table records/sweep -->\n{table}\n<!-- /table -->\n\n"
        "<!-- table: python table.py -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /table -->\n"
        "```\n<!-- table: not a marker -->\n| in | fence |\n|---|---|\n```\nlast line, no newline"
    )


def test_check_fails_when_a_docs_number_differs_from_the_records_and_passes_when_equal(tmp_path, capsys):
    fake_records(tmp_path)
    table = results_tables.run("distillscope table records/sweep", tmp_path)
    assert "| 71.00 ± 1.41 |" in table and "Machine: toy CPU; 2 runs, 1 thread each." in table
    docs = tmp_path / "results.md"
    docs.write_text(marked_doc(table))
    assert results_tables.main(["--docs", str(docs), "--root", str(tmp_path)]) == 0

    docs.write_text(marked_doc(table.replace("71.00 ± 1.41", "71.10 ± 1.41")))
    capsys.readouterr()
    assert results_tables.main(["--check", "--docs", str(docs), "--root", str(tmp_path)]) == 1
    diff = capsys.readouterr().out
    assert "-| toy |" in diff and "71.10 ± 1.41" in diff and "+| toy |" in diff and "71.00 ± 1.41" in diff

    (tmp_path / "table.py").write_text("raise SystemExit('no records')\n")  # a command that fails is a failure too
    docs.write_text(marked_doc(table))
    assert results_tables.main(["--docs", str(docs), "--root", str(tmp_path)]) == 1
    assert "no records" in capsys.readouterr().err


def test_write_rewrites_only_the_marked_tables(tmp_path, capsys):
    fake_records(tmp_path)
    docs = tmp_path / "results.md"
    before = marked_doc("| stale |\n|---|\n| 99.99 |\n\nMachine: gone")
    docs.write_bytes(before.encode())
    assert results_tables.main(["--write", "--docs", str(docs), "--root", str(tmp_path)]) == 0
    after = docs.read_bytes().decode()
    table = results_tables.run("distillscope table records/sweep", tmp_path)
    assert after == before.replace("| stale |\n|---|\n| 99.99 |\n\nMachine: gone", table)
    head = before.index("<!-- table: distillscope")
    tail = before.index("<!-- /table -->")
    assert after[:head] == before[:head] and after.endswith(before[tail:])  # every unmarked byte as it was
    assert results_tables.main(["--docs", str(docs), "--root", str(tmp_path)]) == 0

    capsys.readouterr()
    assert results_tables.main(["--list", "--docs", str(docs)]) == 0
    listed = capsys.readouterr().out
    line = {command: after[:after.index(f"<!-- table: {command}")].count("\n") + 1
            for command in ("distillscope table records/sweep", "python table.py")}
    assert all(f":{n}: {command}" in listed for command, n in line.items())
    assert listed.split("no marker")[1].count("under '# Toy'") == 1  # the unmarked table; not the fenced one
