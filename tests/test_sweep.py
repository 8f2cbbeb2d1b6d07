"""The sweep runner (planning, scheduling, signals) and the results table.

Real runs are tiny (shapes at 16x16, resnet8, one epoch) and go through real worker subprocesses; table
tests use hand-made summary.json files whose statistics are recomputed here with numpy.
"""
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distillscope.cli import main
from distillscope.config import load_config
from distillscope.errors import DistillscopeError
from distillscope.report import format_csv, format_markdown, read_summaries, table_rows
from distillscope.sweep import available_cores, parse_seeds, plan_sweep, run_sweep, split_threads, split_values
from conftest import wait_for

REPO = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny", "epochs": 1,
    "data": {"spec": "shapes?n=160&size=16&n_test=40", "val_fraction": 0.2, "batch_size": 32, "num_workers": 0},
    "student": {"name": "resnet8"}, "optim": {"lr": 0.05, "schedule": "cosine"}, "run": {"device": "cpu", "precision": "fp32"},
}
KD = {"teacher": {"name": "resnet8", "checkpoint": "set/by/the/sweep"}, "method": {"name": "kd", "T": 4.0}}


def recipe(folder: Path, stem: str, **sections) -> Path:
    path = folder / f"{stem}.yaml"
    data = {**TINY, "name": f"tiny-{stem}"}
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ arithmetic and parsing
@pytest.mark.parametrize("workers, cores, threads, expected",
                         [(1, 16, None, 16), (2, 2, None, 1), (3, 8, None, 2), (4, 2, None, 1), (2, 8, 3, 3)])
def test_threads_per_run(workers, cores, threads, expected):
    assert split_threads(workers, cores, threads) == expected


def test_default_split_uses_as_many_cores_as_fit():
    for cores in range(1, 33):
        for workers in range(1, cores + 1):
            threads = split_threads(workers, cores)
            assert workers * threads <= cores < workers * (threads + 1)
    with pytest.raises(DistillscopeError, match="--workers 0"):
        split_threads(0, 4)


def test_seeds_and_grid_values():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds("0-3") == [0, 1, 2, 3] and parse_seeds("5, 7-8") == [5, 7, 8]
    assert parse_seeds([4, 6]) == [4, 6] and parse_seeds(3) == [3]
    for bad in ("1,1", "a", "3-1", ""):
        with pytest.raises(DistillscopeError, match="--seeds"):
            parse_seeds(bad)
    assert split_values("2,4,8") == ["2", "4", "8"]
    assert split_values("[30,60],[40, 80]") == ["[30,60]", "[40, 80]"]


# ------------------------------------------------------------------------------ planning
def test_grid_expands_to_one_named_run_per_config_point_and_seed(tmp_path):
    ce, kd = recipe(tmp_path, "ce"), recipe(tmp_path, "kd", **KD)
    out = tmp_path / "sweep"
    runs = plan_sweep([ce, kd], "0,1", ["optim.lr=0.1,0.2", "kd:method.T=2,4"], [f"kd:teacher.checkpoint={out}/ce-lr={{lr}}-s{{seed}}"],
                      out)
    expected = [f"ce-lr={lr}-s{s}" for lr in ("0.1", "0.2") for s in (0, 1)]
    expected += [f"kd-lr={lr}-T={t}-s{s}" for lr in ("0.1", "0.2") for t in (2, 4) for s in (0, 1)]
    assert [r.name for r in runs] == expected
    run = runs[-1]
    assert run.folder == out / "kd-lr=0.2-T=4-s1" and run.grid == {"optim.lr": "0.2", "method.T": "4"}
    assert run.overrides == [f"teacher.checkpoint={out}/ce-lr=0.2-s1", "optim.lr=0.2", "method.T=4", "seed=1"]
    assert run.templates == {"teacher.checkpoint": f"{out}/ce-lr={{lr}}-s{{seed}}"} and run.depends_on == ["ce-lr=0.2-s1"]
    assert all(not r.depends_on for r in runs[:4]) and all(r.state == "new" for r in runs)
    config = load_config(run.config, run.overrides)
    assert (config.seed, config.optim.lr, config.method["T"], config.teacher.checkpoint) == (1, 0.2, 4, f"{out}/ce-lr=0.2-s1")
    as_dicts = plan_sweep([ce, kd], [0, 1], {"optim.lr": [0.1, 0.2], "kd:method.T": [2, 4]},
                          {"kd:teacher.checkpoint": f"{out}/ce-lr={{lr}}-s{{seed}}"}, out)
    assert [r.name for r in as_dicts] == expected


@pytest.mark.parametrize(
    "grid, sets, message",
    [
        ([], ["optim.lr={rate}"], "unknown template {rate}"),
        ([], ["nope:optim.lr=0.1"], "names no config of this sweep"),
        ([], ["seed=3"], "give seeds with --seeds"),
        ([], ["run.threads=4"], "--threads"),
        ([], ["teacher.checkpoint=OUT/kd-s{seed}"], "uses no teacher"),
        ([], ["kd:teacher.checkpoint=/no/such/run"], "does not exist and is not a run of this sweep"),
        (["method.T=2,2"], [], "distinct"),
        ([], ["kd:teacher.checkpoint=OUT/kd-s{seed}"], "own folder"),
        ([], ["optim.lr=fast"], "should be float"),
    ],
)
def test_plan_refuses_bad_sweeps_with_one_clear_line(tmp_path, grid, sets, message):
    configs = [recipe(tmp_path, "ce"), recipe(tmp_path, "kd", **KD)]
    out = tmp_path / "sweep"
    sets = [s.replace("OUT", str(out)) for s in sets]
    grid = [f"kd:{g}" for g in grid]
    with pytest.raises(DistillscopeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        plan_sweep(configs, "0", grid, sets, out)


def test_plan_refuses_runs_that_wait_for_each_other_and_configs_sharing_a_name(tmp_path):
    k1, k2 = recipe(tmp_path, "k1", **KD), recipe(tmp_path, "k2", **KD)
    out = tmp_path / "sweep"
    with pytest.raises(DistillscopeError, match="cycle"):
        plan_sweep([k1, k2], "0", [], [f"k1:teacher.checkpoint={out}/k2-s0", f"k2:teacher.checkpoint={out}/k1-s0"], out)
    (tmp_path / "other").mkdir()
    with pytest.raises(DistillscopeError, match="both named 'k1'"):
        plan_sweep([k1, recipe(tmp_path / "other", "k1")], "0", out=out)


def test_existing_folders_are_skipped_resumed_or_refused(tmp_path):
    ce, out = recipe(tmp_path, "ce"), tmp_path / "sweep"
    for seed, files in ((0, ("config.yaml", "summary.json")), (1, ("config.yaml",))):
        folder = out / f"ce-s{seed}"
        folder.mkdir(parents=True)
        config = load_config(ce, [f"seed={seed}", "run.threads=7"]).to_dict()  # run-only keys may differ
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        if "summary.json" in files:
            (folder / "summary.json").write_text("{}")
    runs = plan_sweep([ce], "0-2", out=out)
    assert [r.state for r in runs] == ["finished", "resume", "new"]
    assert runs[1].command(2)[4:] == ["--resume", "--out", str(out / "ce-s1"), "--set", "run.threads=2", "--set", "run.progress=false"]
    assert runs[2].command(2)[4:] == [str(ce), "--set", "seed=2", "--set", "run.threads=2", "--set", "run.progress=false",
                                      "--out", str(out / "ce-s2")]
    with pytest.raises(DistillscopeError, match=r"ce-s0' holds a run with a different config \(optim.lr\)"):
        plan_sweep([ce], "0-2", sets=["optim.lr=0.2"], out=out)


# ------------------------------------------------------------------------------ real runs
def test_a_student_waits_for_its_teacher_and_a_rerun_skips_finished_runs(tmp_path):
    teacher, student = recipe(tmp_path, "t"), recipe(tmp_path, "kd", **KD)
    out, lines = tmp_path / "sweep", []
    args = dict(seeds="1", sets=[f"kd:teacher.checkpoint={tmp_path / 'sweep'}/t-s{{seed}}"], out=out, workers=2)
    summaries = run_sweep([student, teacher], echo=lines.append, **args)
    text = "\n".join(lines)
    assert "2 to start" in lines[0]
    started = [line.split()[1] for line in lines if line.startswith("start")]
    assert started == ["t-s1", "kd-s1"]  # the teacher first although listed second, and alone
    assert text.index("done   t-s1") < text.index("start  kd-s1")
    assert [s["name"] for s in summaries] == ["tiny-kd", "tiny-t"]
    assert all(s["threads"] == split_threads(2, available_cores()) and s["config"]["run"]["progress"] is False for s in summaries)
    assert yaml.safe_load((out / "kd-s1" / "config.yaml").read_text())["teacher"]["checkpoint"] == f"{out}/t-s1"
    record = json.loads((out / "kd-s1" / "sweep.json").read_text())
    assert record["seed"] == 1 and record["templates"] == {"teacher.checkpoint": f"{out}/t-s{{seed}}"} and record["grid"] == {}
    assert (out / "logs" / "t-s1.log").read_text().count("=== ") == 1
    assert "| tiny-kd | resnet8 | kd |" in (out / "table.md").read_text() and (out / "table.csv").is_file()

    again = []
    assert [s["folder"] for s in run_sweep([student, teacher], echo=again.append, **args)] == [s["folder"] for s in summaries]
    assert "2 finished, 0 to resume, 0 to start" in again[0] and not any(line.startswith("start") for line in again)
    assert (out / "logs" / "t-s1.log").read_text().count("=== ") == 1

    run_sweep([student, teacher], echo=again.append, baseline="tiny-t", **args)  # one seed each: no test possible
    table = (out / "table.md").read_text()
    assert ("Δ last vs tiny-t (95% CI)" in table
            and "| Welch, n=1 vs 1 (1 shared seed) | last: n/a (1 seed on one side, need 2 each);" in table)
    assert ",vs_baseline_last_diff," in (out / "table.csv").read_text()
    run_sweep([student, teacher], echo=again.append, baseline="tiny-x", **args)  # the table is still written
    assert "warning: --baseline 'tiny-x' matches no row" in again[-2] and "Δ last" not in (out / "table.md").read_text()


def test_a_failed_teacher_skips_its_students_and_the_sweep_exits_non_zero(tmp_path, capsys):
    teacher = recipe(tmp_path, "t", data={"spec": "cifar10:/no/such/folder"})
    student = recipe(tmp_path, "kd", **KD)
    out = tmp_path / "sweep"
    code = main(["sweep", str(teacher), str(student), "--set", f"kd:teacher.checkpoint={out}/t-s{{seed}}", "--out", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    assert "FAILED t-s0 (exit 2)" in stdout and "distillscope: error:" in stdout  # the log's last lines
    assert "skip   kd-s0: it needs t-s0" in stdout
    assert "2 of 2 runs did not finish" in stderr and stderr.count("\n") == 1


def test_ctrl_c_checkpoints_every_worker_and_the_same_command_resumes(tmp_path):
    # Enough epochs that the worker which started first cannot finish before the later one reaches epoch 1.
    a = recipe(tmp_path, "a", epochs=12, data={"spec": "shapes?n=480&size=16&n_test=40"})
    b = recipe(tmp_path, "b", epochs=12, data={"spec": "shapes?n=480&size=16&n_test=40"})
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "distillscope.cli", "sweep", str(a), str(b), "--workers", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    logs = [out / "logs" / "a-s0.log", out / "logs" / "b-s0.log"]
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: all(log.is_file() and "epoch   1/12" in log.read_text() for log in logs), "both workers to finish epoch 1", 180)
        sweep.send_signal(signal.SIGINT)
        output = sweep.communicate(timeout=120)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 130, output
    assert "re-run the same command to resume" in output and "2 run(s) stopped, 0 not started" in output
    assert output.count("(checkpoint kept)") == 2
    for name in ("a-s0", "b-s0"):
        assert (out / name / "last.safetensors").is_file() and not (out / name / "summary.json").exists()
        assert "interrupted" in (out / "logs" / f"{name}.log").read_text()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 to resume" in again.stdout
    for name in ("a-s0", "b-s0"):
        assert json.loads((out / name / "summary.json").read_text())["epochs"] == 12
        epochs = [json.loads(line)["epoch"] for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert epochs == list(range(1, 13))
        assert "sweep resume: " in (out / "logs" / f"{name}.log").read_text()


# ------------------------------------------------------------------------------ tables
def fake_run(root: Path, folder: str, name: str, seed: int, test_best: float, test_last: float, val_best: float, *, lr=0.1,
             teacher=None, grid=None, templates=None, precision="bf16", threads=1, legacy=False, extra=None, data=None) -> Path:
    run = root / folder
    run.mkdir(parents=True)
    summary = {
        "name": name, "student": "resnet8", "method": "kd" if teacher else "ce", "epochs": 30, "seed": seed,
        "best": {"epoch": 20 + seed, "test/top1": test_best, "val/top1": val_best}, "last": {"epoch": 30, "test/top1": test_last},
    }
    config = {"name": name, "seed": seed, "optim": {"lr": lr}, "run": {"threads": threads, "precision": "auto"},
              "teacher": {"checkpoint": teacher}}
    if data is not None:
        config["data"] = data
    if legacy:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    else:
        summary.update(precision=precision, machine="Test CPU, 2 cores", threads=threads, config=config)
    summary.update(extra or {})
    (run / "summary.json").write_text(json.dumps(summary))
    if grid is not None or templates is not None:
        (run / "sweep.json").write_text(json.dumps({"grid": grid or {}, "seed": seed, "templates": templates or {}}))
    return run


def markdown_rows(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def mean_pm_std(values) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


@pytest.fixture
def table_runs(tmp_path):
    """kd at T=2 (best test) and T=4 (best val), seeds 0-2, teacher per seed via a template; a ce row whose
    seeds differ in lr; a hand-run kd row whose teacher differs per seed without a template; a legacy run."""
    root = tmp_path / "runs"
    numbers = {"2": ([80.0, 81.0, 83.0], [79.0, 80.5, 82.0], [70.0, 71.0, 72.0]),
               "4": ([78.0, 78.5, 79.5], [77.0, 78.0, 78.5], [74.0, 75.0, 73.0])}
    for t, (best, last, val) in numbers.items():
        for seed in range(3):
            fake_run(root, f"kd-T={t}-s{seed}", "kd", seed, best[seed], last[seed], val[seed], teacher=f"runs/t-s{seed}",
                     grid={"method.T": t}, templates={"teacher.checkpoint": "runs/t-s{seed}"}, threads=1 + seed)
    fake_run(root, "ce-s0", "ce", 0, 70.0, 70.5, 65.0, lr=0.1)
    fake_run(root, "ce-s1", "ce", 1, 71.0, 71.5, 66.0, lr=0.2, precision="fp32")
    fake_run(root, "hand-s0", "hand", 0, 60.0, 61.0, 50.0, teacher="runs/t-s0")
    fake_run(root, "hand-s1", "hand", 1, 62.0, 63.0, 52.0, teacher="runs/t-s1")
    fake_run(root, "old-s0", "old", 0, 50.0, 51.0, 40.0, legacy=True)
    (root / "unfinished-s0").mkdir()
    (root / "unfinished-s0" / "config.yaml").write_text("name: unfinished\n")
    return root, numbers


def test_table_groups_by_config_and_grid_point_and_chooses_on_validation(table_runs):
    root, numbers = table_runs
    summaries = read_summaries(sorted(p for p in root.iterdir() if (p / "summary.json").is_file()))
    text = format_markdown(table_rows(summaries))
    rows = {(r["run"], r["grid point"]): r for r in markdown_rows(text)}
    assert set(rows) == {("ce", ""), ("hand", ""), ("kd", "method.T=2"), ("kd", "method.T=4"), ("old", "")}
    for t, (best, last, val) in numbers.items():
        row = rows["kd", f"method.T={t}"]
        assert row["seeds"] == "0, 1, 2" and row["precision"] == "bf16" and row["epochs"] == "30" and row["best epoch"] == "20, 21, 22"
        assert (row["test top-1 @ best val (%)"], row["test top-1 @ last (%)"],
                row["val top-1 @ best (%)"]) == tuple(map(mean_pm_std, (best, last, val)))
        assert row["notes"] == ""  # threads and the templated teacher differ per seed: not a difference
    assert rows["kd", "method.T=4"]["chosen on val"] == "✓" and rows["kd", "method.T=2"]["chosen on val"] == ""  # T=2 wins on test only
    assert all(rows[key]["chosen on val"] == "" for key in rows if key[0] != "kd")
    assert rows["ce", ""]["notes"] == "⚠ seeds differ in: optim.lr, precision used" and rows["ce", ""]["precision"] == "bf16, fp32"
    assert rows["hand", ""]["notes"] == "⚠ seeds differ in: teacher.checkpoint"
    assert rows["old", ""]["precision"] == "?" and rows["old", ""]["test top-1 @ last (%)"] == "51.00" and rows["old", ""]["notes"] == ""
    assert ("Machine: Test CPU, 2 cores; 6 runs, 1 thread each." in text and "Machine: Test CPU, 2 cores; 2 runs, 3 threads each." in text
            and "Machine not recorded: 1 run (older summaries)." in text)


def test_grid_points_are_compared_on_the_seeds_they_share(tmp_path):
    """A K grid on seed 0, then seeds 1 and 2 at the K chosen there: the choice stays on seed 0's validation."""
    for k, val in (("0.5", 74.0), ("0.7", 70.0)):
        fake_run(tmp_path, f"sfkd-K={k}-s0", "sfkd", 0, 71.0, 72.0, val, teacher="runs/t", grid={"method.mask.logits": k})
    for seed in (1, 2):  # seed-0 K = 0.5 wins (74 > 70) though its 3-seed mean, 64.67, is below K = 0.7's 70
        fake_run(tmp_path, f"sfkd-K=0.5-s{seed}", "sfkd", seed, 71.0, 72.0, 60.0, teacher="runs/t", grid={"method.mask.logits": "0.5"})
    rows = {row["grid point"]: row for row in table_rows(read_summaries(sorted(tmp_path.iterdir())))}
    assert rows["method.mask.logits=0.5"]["seeds"] == [0, 1, 2]
    assert rows["method.mask.logits=0.5"]["chosen on val"] and not rows["method.mask.logits=0.7"]["chosen on val"]


def test_table_csv_has_numeric_means_and_stds(table_runs):
    root, numbers = table_runs
    rows = list(csv.DictReader(io.StringIO(format_csv(table_rows(read_summaries(sorted(root.glob("kd-T=*"))))))))
    assert [(r["grid_point"], r["chosen_on_val"], r["seeds"], r["n"]) for r in rows] == [
        ("method.T=2", "0", "0 1 2", "3"), ("method.T=4", "1", "0 1 2", "3")]
    for row, (best, last, val) in zip(rows, numbers.values()):
        for column, values in (("test_top1_best_val", best), ("test_top1_last", last), ("val_top1_best", val)):
            assert float(row[f"{column}_mean"]) == pytest.approx(np.mean(values), abs=1e-4)
            assert float(row[f"{column}_std"]) == pytest.approx(np.std(values, ddof=1), abs=1e-4)


def test_table_shows_minutes_per_run_and_the_teachers_ensemble_where_summaries_have_them(tmp_path):
    seconds, ensemble = [600.0, 660.0, 750.0], [80.0, 81.5, 82.0]
    for seed in range(3):
        fake_run(tmp_path, f"mt-s{seed}", "mt", seed, 70.0, 71.0, 60.0,
                 extra={"seconds": seconds[seed], "ensemble_test_top1": ensemble[seed]})
    fake_run(tmp_path, "ce-s0", "ce", 0, 60.0, 61.0, 50.0, extra={"seconds": None})  # resumed from a checkpoint that predates the count
    fake_run(tmp_path, "kd-s0", "kd", 0, 60.0, 61.0, 50.0, extra={"seconds": 300.0})
    fake_run(tmp_path, "kd-s1", "kd", 1, 60.0, 61.0, 50.0)
    rows = table_rows(read_summaries(sorted(tmp_path.iterdir())))
    cells = {r["run"]: r for r in markdown_rows(format_markdown(rows))}
    assert cells["mt"]["minutes per run"] == f"{np.mean(seconds) / 60:.1f} (10.0–12.5)" and cells["ce"]["minutes per run"] == "n/a"
    assert cells["kd"]["minutes per run"] == "5.0 (1 of 2 runs)"
    assert (cells["mt"]["teachers' ensemble test top-1 (%)"] == mean_pm_std(ensemble)
            and cells["ce"]["teachers' ensemble test top-1 (%)"] == "n/a")
    by_run = {r["run"]: r for r in csv.DictReader(io.StringIO(format_csv(rows)))}
    assert float(by_run["mt"]["minutes_per_run_mean"]) == pytest.approx(np.mean(seconds) / 60, abs=1e-4)
    assert float(by_run["mt"]["ensemble_test_top1_std"]) == pytest.approx(np.std(ensemble, ddof=1), abs=1e-4)
    assert by_run["ce"]["minutes_per_run_mean"] == by_run["ce"]["ensemble_test_top1_mean"] == ""
    plain = format_markdown(table_rows(read_summaries([tmp_path / "ce-s0"])))
    assert "minutes per run" not in plain and "ensemble" not in plain


def test_table_command_reads_a_sweep_folder_and_writes_csv_once(table_runs, capsys):
    root, _ = table_runs
    code = main(["table", str(root), "--csv", str(root / "t.csv")])
    out = capsys.readouterr().out
    assert code == 0 and "| kd | resnet8 | kd | method.T=4 |" in out and "unfinished-s0" in out.split("Not finished, left out:")[1]
    assert len(list(csv.DictReader(open(root / "t.csv")))) == 5
    code = main(["table", str(root), "--csv", str(root / "t.csv")])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_table_figure_draws_each_rows_seeds_and_means_and_is_never_overwritten(table_runs, capsys, monkeypatch):
    from matplotlib.axes import Axes
    from PIL import Image

    root, numbers = table_runs
    drawn, errorbar = [], Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, **kw: drawn.append((y, x, kw.get("xerr"))) or errorbar(ax, x, y, **kw))
    assert main(["table", *map(str, sorted(root.glob("kd-T=*"))), "--figure", str(root / "kd.png")]) == 0
    assert "Figure: " in capsys.readouterr().out
    for (y, x, xerr), (best, last, val) in zip(drawn, numbers.values()):
        assert x == pytest.approx(np.mean(last)) and xerr == pytest.approx(np.std(last, ddof=1))
    assert [y for y, _, _ in drawn] == [0, 1]
    assert main(["table", str(root), "--figure", str(root / "all.png")]) == 0
    small, large = Image.open(root / "kd.png"), Image.open(root / "all.png")
    assert small.format == large.format == "PNG" and large.height > small.height  # a line per row: 2 rows vs 5
    assert main(["table", str(root), "--figure", str(root / "kd.png")]) == 2 and "--figure" in capsys.readouterr().err


@pytest.fixture
def baseline_runs(tmp_path):
    """ce (seeds 0-2, no teacher); kd on the same data (seeds 0-3); kd on another split, with another teacher,
    and with more epochs (seeds 0-2 each)."""
    data = {"spec": "cifar10:x", "val_fraction": 0.05}
    last = {"ce": [70.0, 71.0, 70.4], "kd": [72.0, 72.7, 72.5, 71.0], "split": [70.5, 70.2, 71.6], "other": [71.0, 72.0, 71.5],
            "long": [73.0, 73.5, 73.1]}
    best = {name: [v - 0.3 * (i % 2) for i, v in enumerate(values)] for name, values in last.items()}
    for name, values in last.items():
        for seed, value in enumerate(values):
            teacher = None if name == "ce" else f"runs/{'u' if name == 'other' else 't'}-s{seed}"
            fake_run(tmp_path, f"{name}-s{seed}", name, seed, best[name][seed], value, 60.0, teacher=teacher,
                     data={**data, "val_fraction": 0.1} if name == "split" else data, extra={"epochs": 60} if name == "long" else None)
    return tmp_path, last, best


def test_baseline_pairs_seeds_that_share_data_and_teacher_and_uses_welch_otherwise(baseline_runs):
    from scipy import stats

    root, last, best = baseline_runs
    rows = table_rows(read_summaries(sorted(root.iterdir())), baseline="ce")
    cells = {r["run"]: r for r in markdown_rows(format_markdown(rows))}
    assert cells["ce"]["Δ last vs ce (95% CI)"] == "baseline" and cells["ce"]["verdict"] == ""
    assert cells["kd"]["test"] == "paired, n=3"  # a row without a teacher pairs with a KD row; seed 3 is not shared
    assert cells["split"]["test"] == "Welch, n=3 vs 3 (seed 0: data.val_fraction differs)"
    assert cells["long"]["test"] == "Welch, n=3 vs 3 (seed 0: epochs differs)"
    assert cells["other"]["test"] == "paired, n=3"
    for name, ref in (("kd", stats.ttest_rel(last["kd"][:3], last["ce"])),
                      ("split", stats.ttest_ind(last["split"], last["ce"], equal_var=False))):
        ci = ref.confidence_interval(0.95)
        diff = (ci.low + ci.high) / 2
        assert cells[name]["Δ last vs ce (95% CI)"] == f"{diff:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}], p={ref.pvalue:.3f}"
    ref = stats.ttest_rel(best["kd"][:3], best["ce"])
    assert cells["kd"]["Δ best val vs ce (95% CI)"].startswith(f"{np.mean(np.subtract(best['kd'][:3], best['ce'])):+.2f} [")
    verdict = {r["run"]: r["vs baseline"] for r in rows if r["vs baseline"]}
    assert verdict["kd"]["best val"].p == pytest.approx(ref.pvalue)
    assert cells["kd"]["verdict"] == (f"last: above ({verdict['kd']['last'].diff:+.2f}); "
                                      f"best val: above ({verdict['kd']['best val'].diff:+.2f})")
    split = verdict["split"]["last"]
    assert split.ci_low < 0 < split.ci_high
    assert cells["split"]["verdict"].startswith(f"last: no detectable difference at 3 vs 3 seeds (MDE {split.mde:.1f}); best val: ")
    assert "above" not in cells["split"]["verdict"] and "below" not in cells["split"]["verdict"]

    by_run = {r["run"]: r for r in csv.DictReader(io.StringIO(format_csv(rows)))}
    assert (by_run["kd"]["baseline"] == "ce" and by_run["kd"]["vs_baseline_last_test"] == "paired"
            and by_run["kd"]["vs_baseline_last_n"] == "3")
    assert float(by_run["kd"]["vs_baseline_best_val_p"]) == pytest.approx(ref.pvalue, rel=1e-5)
    assert float(by_run["split"]["vs_baseline_last_df"]) == pytest.approx(stats.ttest_ind(last["split"], last["ce"], equal_var=False).df,
                                                                          abs=1e-3)
    assert (by_run["split"]["vs_baseline_last_test"] == "Welch"
            and float(by_run["split"]["vs_baseline_last_mde"]) == pytest.approx(split.mde, abs=1e-4))
    assert by_run["ce"]["vs_baseline_last_diff"] == "" and by_run["long"]["vs_baseline_unpaired_because"] == "seed 0: epochs differs"
    assert "vs_baseline_last_diff" not in format_csv(table_rows(read_summaries(sorted(root.iterdir())))).splitlines()[0]

    cells = {r["run"]: r for r in markdown_rows(format_markdown(table_rows(read_summaries(sorted(root.iterdir())), baseline="kd")))}
    assert cells["other"]["test"] == "Welch, n=3 vs 4 (seed 0: teacher.checkpoint differs)" and cells["ce"]["test"] == "paired, n=3"


def test_baseline_is_named_by_run_and_grid_point_or_refused_in_one_line(table_runs, capsys):
    root, _ = table_runs
    summaries = read_summaries(sorted(p for p in root.iterdir() if (p / "summary.json").is_file()))
    for name in ("kd T=4", "kd method.T=4"):
        rows = table_rows(summaries, baseline=name)
        assert [r["grid point"] for r in rows if r["vs baseline"] is None] == ["method.T=4"] and len(rows) == 5
    assert [r["run"] for r in table_rows(summaries, baseline="ce") if r["vs baseline"] is None] == ["ce"]
    for name, what in (("kd", "matches 2 rows"), ("nope", "matches no row"), ("kd T=3", "matches no row")):
        assert main(["table", str(root), "--baseline", name]) == 2
        out, err = capsys.readouterr()
        assert f"--baseline '{name}' {what}; the rows are: " in err and "'kd method.T=2', 'kd method.T=4'" in err and "'ce'" in err
        assert err.count("\n") == 1 and err.startswith("distillscope: error:") and "|" not in out


def test_baseline_figure_draws_each_difference_and_its_confidence_interval(baseline_runs, capsys, monkeypatch):
    from matplotlib.axes import Axes

    root, _, _ = baseline_runs
    drawn, errorbar = [], Axes.errorbar
    monkeypatch.setattr(Axes, "errorbar", lambda ax, x, y, **kw: drawn.append((ax, y, x, kw.get("xerr"))) or errorbar(ax, x, y, **kw))
    assert main(["table", str(root), "--baseline", "ce", "--figure", str(root / "f.png")]) == 0
    rows = table_rows(read_summaries(sorted(p for p in root.iterdir() if p.is_dir())), baseline="ce")
    panels = list(dict.fromkeys(ax for ax, *_ in drawn))
    assert len(panels) == 2 and panels[0].get_shared_y_axes().joined(panels[0], panels[1])
    differences = [(y, x, xerr) for ax, y, x, xerr in drawn if ax is panels[1]]
    expected = [(i + offset, d.diff, [[d.diff - d.ci_low], [d.ci_high - d.diff]])
                for i, row in enumerate(rows) if row["vs baseline"]
                for offset, d in ((-0.12, row["vs baseline"]["last"]), (0.12, row["vs baseline"]["best val"]))]
    assert len(differences) == len(expected) == 8
    for (y, x, xerr), (y_ref, x_ref, xerr_ref) in zip(differences, expected):
        assert y == pytest.approx(y_ref) and x == pytest.approx(x_ref) and np.asarray(xerr) == pytest.approx(np.asarray(xerr_ref))
    assert any(line.get_xdata()[0] == 0 for line in panels[1].lines)  # the line at 0


def test_sweep_command_passes_the_baseline_on(tmp_path, monkeypatch):
    import distillscope.sweep

    seen = {}
    monkeypatch.setattr(distillscope.sweep, "run_sweep", lambda *args, **kwargs: seen.update(kwargs))
    assert main(["sweep", str(recipe(tmp_path, "ce")), "--out", str(tmp_path / "s"), "--baseline", "tiny-ce"]) == 0
    assert seen["baseline"] == "tiny-ce"


def test_imports_are_passed_on_to_every_run(tmp_path):
    from distillscope.sweep import SweepRun

    run = SweepRun("r-s0", Path("c.yaml"), 0, {}, [], {}, [], tmp_path / "r-s0", imports=["my_models.py"])
    command = run.command(threads=1)
    assert command[command.index("--import") + 1] == "my_models.py" and command.index("--import") < command.index("train")


def test_gpus_go_to_the_least_busy_one_and_runs_see_only_theirs(tmp_path, monkeypatch):
    from distillscope.sweep import SweepRun, parse_gpus, processes
    from distillscope.sweep.scheduler import Scheduler

    started = []

    class FakeProcess:
        def __init__(self, command, env, **kwargs):
            started.append(env.get("CUDA_VISIBLE_DEVICES"))

        def poll(self):
            return None

    monkeypatch.setattr(processes.subprocess, "Popen", FakeProcess)
    runs = [SweepRun(f"r-s{i}", Path("c.yaml"), i, {}, [], {}, [], tmp_path / f"r-s{i}") for i in range(5)]
    scheduler = Scheduler(runs, tmp_path, workers=3, threads=1, pass_fds=(), echo=lambda text: None, gpus=parse_gpus("0,1"))
    scheduler.logs.mkdir()
    scheduler._start_ready()
    assert started == ["0", "1", "0"]  # three workers on two GPUs: GPU 0 runs two
    scheduler.running.pop("r-s1"), scheduler.gpu_of.pop("r-s1")  # the run on GPU 1 finished
    scheduler._start_ready()
    assert started[3] == "1" and scheduler.gpu_of == {"r-s0": "0", "r-s2": "0", "r-s3": "1"}
    assert parse_gpus(None) == [] and parse_gpus(" 3") == ["3"]
    for bad in ("0,0", "a", "0,"):
        with pytest.raises(DistillscopeError, match="--gpus"):
            parse_gpus(bad)
