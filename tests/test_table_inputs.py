"""`distillscope table` on damaged run records (one line naming the file and the fix) and on runs of one recipe
on different data (a data column; the shared data under the table otherwise)."""
import csv
import io
import json
import re
from pathlib import Path

import pytest

from distillscope.cli import main
from distillscope.errors import DistillscopeError
from distillscope.report import format_csv, format_markdown, read_summaries, table_rows


def run(root: Path, folder: str, seed: int, top1: float, spec: str | None = "shapes?n=2000", name: str = "c10k-resnet8-kd") -> Path:
    path = root / folder
    path.mkdir(parents=True)
    config = {"name": name, "seed": seed} | ({"data": {"spec": spec}} if spec else {})
    summary = {"name": name, "student": "resnet8", "method": "kd", "epochs": 3, "seed": seed,
               "best": {"epoch": 2, "test/top1": top1, "val/top1": top1}, "last": {"epoch": 3, "test/top1": top1}, "precision": "fp32",
               "machine": "Test CPU", "threads": 1, "config": config}
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    return path


def one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err.strip()


@pytest.mark.parametrize("record, text, expected", [
    ("summary.json", None, r"summary.json is not valid JSON \(truncated\?\): line 3 column 1; "
                           r"re-run `distillscope train --resume --out .*x` .* or remove the folder"),
    ("summary.json", "[1, 2]", r"summary.json holds a JSON list, not an object"),
    ("summary.json", '{"name": "x"}', r"summary.json lacks student, method, seed, epochs, last; re-run `distillscope train --resume"),
    ("sweep.json", '{"grid": {', r"sweep.json is not valid JSON \(truncated\?\): line 1 column 11; remove it"),
    ("chain.json", "", r"chain.json is not valid JSON \(truncated\?\): line 1 column 1; re-run the `distillscope chain` command"),
])
def test_a_damaged_record_is_one_line_naming_the_file_and_the_fix(tmp_path, capsys, record, text, expected):
    folder = run(tmp_path, "x", 0, 50.0)
    path = folder / record
    if text is None:  # summary.json cut off after its second line
        text = "\n".join(path.read_text().splitlines()[:2]) + "\n"
    path.write_text(text)
    line = one_error_line(capsys, ["table", str(folder)])
    assert line.startswith(f"distillscope: error: {path}"), line
    assert re.search(expected, line), line


def test_a_damaged_run_inside_a_sweep_folder_is_named_too(tmp_path, capsys):
    run(tmp_path / "sweep", "a-s0", 0, 50.0)
    bad = run(tmp_path / "sweep", "a-s1", 1, 51.0)
    (bad / "summary.json").write_text('{"name": "c10k-resnet8-kd", "student": "res')
    assert f"{bad / 'summary.json'} is not valid JSON" in one_error_line(capsys, ["table", str(tmp_path / "sweep")])


def test_rows_on_different_data_get_a_data_column_and_are_not_merged(tmp_path):
    for seed in (0, 1):
        run(tmp_path, f"c10k-s{seed}", seed, 60.0 + seed, spec="cifar10:data/cifar-10-batches-py")
        run(tmp_path, f"clothes-s{seed}", seed, 80.0 + seed, spec="folder:data/clothes")
    rows = table_rows(read_summaries(sorted(tmp_path.iterdir())))
    assert [(r["run"], r["data"], r["seeds"]) for r in rows] == [
        ("c10k-resnet8-kd", "cifar10:data/cifar-10-batches-py", [0, 1]), ("c10k-resnet8-kd", "folder:data/clothes", [0, 1])]
    text = format_markdown(rows)
    header = text.splitlines()[0]
    assert header.startswith("| run | model | method | data |")
    assert "| c10k-resnet8-kd | resnet8 | kd | folder:data/clothes |" in text and "Data:" not in text
    assert all(r["notes"] == "" and not r["chosen on val"] for r in rows)  # not seeds of one row, and not grid points to choose among
    by_data = {r["data"]: r for r in csv.DictReader(io.StringIO(format_csv(rows)))}
    assert by_data["folder:data/clothes"]["test_top1_last_mean"] == "80.5"
    # ambiguous name: the labels that tell them apart
    with pytest.raises(DistillscopeError, match="'c10k-resnet8-kd data=folder:data/clothes'"):
        table_rows(read_summaries(sorted(tmp_path.iterdir())), baseline="c10k-resnet8-kd")
    compared = table_rows(read_summaries(sorted(tmp_path.iterdir())), baseline="c10k-resnet8-kd data=folder:data/clothes")
    assert [r["vs baseline"] is None for r in compared] == [False, True]


def test_rows_on_the_same_data_name_it_once_under_the_table(tmp_path):
    for seed in (0, 1):
        run(tmp_path, f"kd-s{seed}", seed, 60.0 + seed, spec="folder:data/clothes")
        run(tmp_path, f"ce-s{seed}", seed, 50.0 + seed, spec="folder:data/clothes", name="c10k-resnet8-ce")
    text = format_markdown(table_rows(read_summaries(sorted(tmp_path.iterdir()))))
    assert "| data |" not in text.splitlines()[0]
    assert "\nData: folder:data/clothes.\n" in text
    # not recorded: not said
    assert "Data:" not in format_markdown(table_rows(read_summaries([run(tmp_path / "old", "x", 0, 1.0, spec=None)])))
