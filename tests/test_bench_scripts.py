"""The cifar10-5k bench scripts' plumbing: which commands they issue, with a stub ``distillscope`` that records them."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# Records each call; a sweep makes one finished-looking run folder under its --out; eval prints a JSON object.
STUB = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
args=("$@")
for i in "${!args[@]}"; do
  [ "${args[$i]}" = --out ] && [[ " $* " == *" sweep "* ]] && mkdir -p "${args[$((i + 1))]}/resnet8_kd-s0"
done
[[ " $* " == *" eval "* ]] && echo '{"test/top1": 50.0}'
exit 0
"""
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(name: str, tmp_path: Path, **env: str) -> list[str]:
    stub = tmp_path / "bin" / "distillscope"
    stub.parent.mkdir(parents=True)
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls.txt"
    full_env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}", "CALLS": str(calls), **env}
    subprocess.run(["bash", str(BENCH / name)], cwd=tmp_path, env=full_env, check=True, capture_output=True, text=True)
    return calls.read_text().splitlines()


@needs_bash
def test_teachers_script_data_free_part_only_with_pinned_precision(tmp_path):
    calls = run_script("cifar10_5k_teachers.sh", tmp_path, PARTS="df", PRECISION="fp32", THREADS="1", WORKERS="1")
    commands = [c.split()[0] if not c.startswith("--threads") else c.split()[2] for c in calls]
    assert commands == ["synthesize", "sweep"] * 3 + ["sweep"] + ["eval", "eval"] * 4
    assert all(c.startswith("--threads 1 ") for c in calls if " sweep " not in f" {c} ")
    sweeps = [c for c in calls if c.startswith("sweep ")]
    assert all("--set run.precision=fp32" in c and "--workers 1 --threads 1" in c for c in sweeps)
    assert "--set method.ce_weight=0" in sweeps[0] and "folder:runs/c10k-df/noise" in sweeps[0]
    assert "resnet8_sfkd_kd.yaml" in sweeps[-1] and "folder:runs/c10k-df/deepinversion" in sweeps[-1]
    rows = (tmp_path / "runs/c10k-df/real_test.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all('"best": {"test/top1": 50.0}' in r for r in rows)


@needs_bash
def test_teachers_script_modes_pick_the_synthetic_sets(tmp_path):
    calls = run_script("cifar10_5k_teachers.sh", tmp_path, PARTS="df", MODES="deepdream")
    assert [c.split()[0] for c in calls] == ["synthesize", "sweep", "eval", "eval"]  # no noise, no DeepInversion, no SFKD
    assert "--mode deepdream" in calls[0] and "folder:runs/c10k-df/deepdream" in calls[1]
    calls = run_script("cifar10_5k_teachers.sh", tmp_path / "di", PARTS="df", MODES="deepinversion")
    assert [c.split()[0] for c in calls] == ["synthesize", "sweep", "sweep"] + ["eval"] * 4 and "resnet8_sfkd_kd.yaml" in calls[2]


@needs_bash
def test_teachers_script_default_runs_every_part_without_pinning(tmp_path):
    calls = run_script("cifar10_5k_teachers.sh", tmp_path)
    assert [c.split()[0] for c in calls if c.split()[0] in ("chain", "explain")] == ["chain"] + ["explain"] * 3
    sweeps = [c for c in calls if c.startswith("sweep ")]
    assert "resnet8_mtkd.yaml" in sweeps[0] and "resnet8_aekd_f.yaml" in sweeps[-1]
    assert not any("run.precision" in c or "--threads" in c for c in calls)


@needs_bash
def test_sfkd_script_passes_precision_and_uses_the_k_chosen_on_validation(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/chosen_on_val.py").write_text("print(0.7)\n")
    calls = run_script("cifar10_5k_sfkd_k.sh", tmp_path, PRECISION="fp32", WORKERS="1")
    # no arguments: all six methods, each a grid on seed 0 and then seeds 0, 1, 2 at the chosen K
    assert len(calls) == 12 and all("--set run.precision=fp32" in c for c in calls)
    assert "--grid resnet8_sfkd_kd:method.mask.logits=0.5,0.6,0.7,0.8,0.9" in calls[0] and "--seeds 0 " in calls[0]
    assert "--grid resnet8_sfkd_kd:method.mask.logits=0.7" in calls[1] and "--seeds 0,1,2 " in calls[1]
    assert "method.mask.features=0.1,0.2,0.3,0.4,0.5" in calls[6]


@needs_bash
def test_sweep_script_pins_precision_for_teacher_cache_and_runs_alike(tmp_path):
    calls = run_script("cifar10_5k_sweep.sh", tmp_path, PRECISION="fp32")
    assert [c.split()[0] for c in calls] == ["sweep", "cache", "sweep"]  # teacher, its cache, then every row
    assert all("--set run.precision=fp32" in c for c in calls)  # a cache in another precision would never be read
    assert not any("run.precision" in c for c in run_script("cifar10_5k_sweep.sh", tmp_path / "plain"))


def test_real_test_table_pools_each_rows_seeds_and_reads_minutes_from_summaries(tmp_path):
    import json
    import sys

    import numpy as np

    scores = {"kd-a": ([20.0, 22.5, 27.0], [21.0, 25.0, 26.5]), "kd-b": ([60.0, 64.0, 61.5], [62.0, 66.5, 63.0])}
    lines = []
    for group, (best, last) in scores.items():
        for seed in range(3):
            run = tmp_path / group / f"resnet8_kd-s{seed}"
            run.mkdir(parents=True)
            if group == "kd-a":
                (run / "summary.json").write_text(json.dumps({"seconds": 60.0 * (seed + 2)}))
            lines.append(json.dumps({"run": str(run), "best": {"top1": best[seed]}, "last": {"top1": last[seed]}}))
    lines.append(lines[0].replace("20.0", "99.0"))  # a run scored twice: its last line counts
    (tmp_path / "real.jsonl").write_text("\n".join(lines) + "\n")
    scores["kd-a"][0][0] = 99.0
    figure = tmp_path / "df.png"
    command = [sys.executable, str(BENCH / "real_test_table.py"), str(tmp_path / "real.jsonl"), f"A={tmp_path}/kd-a/*",
               f"B={tmp_path}/kd-b/*", "--figure", str(figure), "--chance", "10"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    rows = [line.split(" | ") for line in done.stdout.splitlines()[2:]]
    stat = lambda v: f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}"  # noqa: E731
    assert rows[0][1:4] == ["0, 1, 2", stat(scores["kd-a"][0]), stat(scores["kd-a"][1])] and rows[0][4] == "3.0 (2.0–4.0) |"
    assert rows[1][1:4] == ["0, 1, 2", stat(scores["kd-b"][0]), stat(scores["kd-b"][1])] and rows[1][4] == "n/a |"
    assert figure.stat().st_size > 0
    again = subprocess.run(command, capture_output=True, text=True)  # the figure is never overwritten
    assert again.returncode != 0 and "exists" in again.stderr
    (tmp_path / "bad.jsonl").write_text('{"run": "x"}\n')
    bad = subprocess.run([sys.executable, str(BENCH / "real_test_table.py"), str(tmp_path / "bad.jsonl"), "A=*"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "bad.jsonl:1: not a real-test line" in bad.stderr


def test_keep_records_copies_a_runs_small_files_once_and_never_overwrites(tmp_path):
    import sys

    from distillscope.report import read_summaries

    runs, records = tmp_path / "runs", tmp_path / "records"
    run = runs / "df" / "kd-s0"
    run.mkdir(parents=True)
    summary = '{"name": "kd", "seed": 0, "student": "resnet8", "method": "kd", "epochs": 1, "last": {"test/top1": 50.0}}'
    for name, text in {"summary.json": summary, "config.yaml": "name: kd\n", "metrics.csv": "epoch\n1\n",
                       "best.safetensors": "w"}.items():
        (run / name).write_text(text)
    (runs / "df" / "real.jsonl").write_text("{}\n")
    command = [sys.executable, str(BENCH / "keep_records.py"), str(run), str(runs / "df" / "real.jsonl"), "--runs", str(runs),
               "--records", str(records)]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "kept 4 new file(s)" in first.stderr
    assert sorted(p.name for p in (records / "df" / "kd-s0").iterdir()) == ["config.yaml", "metrics.csv", "summary.json"]
    assert (records / "df" / "real.jsonl").read_text() == "{}\n"
    assert read_summaries([records / "df" / "kd-s0"])[0]["seed"] == 0  # a table reads the record as it reads the run
    assert "kept 0 new file(s)" in subprocess.run(command, capture_output=True, text=True, check=True).stderr
    (run / "summary.json").write_text(summary.replace('"seed": 0', '"seed": 1'))
    changed = subprocess.run(command, capture_output=True, text=True)
    assert changed.returncode != 0 and "exists with other contents" in changed.stderr
    assert '"seed": 0' in (records / "df" / "kd-s0" / "summary.json").read_text()
    outside = subprocess.run([*command[:2], str(tmp_path), "--runs", str(runs), "--records", str(records)], capture_output=True, text=True)
    assert outside.returncode != 0 and "is not below" in outside.stderr
    (runs / "unfinished").mkdir()
    unfinished = subprocess.run([*command[:2], str(runs / "unfinished"), "--runs", str(runs), "--records", str(records)],
                                capture_output=True, text=True)
    assert unfinished.returncode != 0 and "has no summary.json" in unfinished.stderr


@needs_bash
def test_verdicts_script_grids_fill_and_k_on_grid_seeds_then_runs_the_chosen_point_on_every_seed(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench/chosen_on_val.py").write_text("print('method.mask.logits_fill=-inf method.mask.logits=0.7')\n")
    (tmp_path / "runs/c10k/wrn_40_2-s0").mkdir(parents=True)  # teacher B already restored
    calls = run_script("cifar10_5k_verdicts.sh", tmp_path, PARTS="self kd sfkd")
    assert len(calls) == 2 + 2 * 2 and all("--set run.precision=fp32" in c and "--threads 1" in c for c in calls)
    assert "resnet8_ce.yaml" in calls[0] and "resnet8_cskd.yaml" in calls[0] and "--seeds 0-9 " in calls[0]
    assert "resnet8_kd.yaml" in calls[1] and "resnet8_dkd.yaml" in calls[1]
    grid, chosen = calls[2], calls[3]
    assert "--grid method.mask.logits_fill=0,-inf --grid method.mask.logits=0.5,0.6,0.7,0.8,0.9" in grid and "--seeds 0,1 " in grid
    assert "--seeds 0-9 --grid method.mask.logits_fill=-inf --grid method.mask.logits=0.7 " in chosen
    assert "resnet8_sfkd_dkd.yaml" in calls[4]
    only = run_script("cifar10_5k_verdicts.sh", tmp_path / "only", PARTS="self", SEEDS="0-2")
    assert len(only) == 1 and "--seeds 0-2 " in only[0]


def test_chosen_on_val_picks_the_best_mean_validation_point_over_the_grid_seeds(tmp_path):
    import json
    import sys

    vals = {("0", "0.5"): [60.0, 70.0], ("-inf", "0.5"): [66.0, 66.0], ("0", "0.7"): [71.0, 50.0]}  # means 65, 66, 60.5
    for (fill, k), scores in vals.items():
        for seed, val in enumerate(scores + [99.0]):  # seed 2 is not a grid seed: it must not count
            run = tmp_path / f"resnet8_sfkd_kd-logits_fill={fill}-logits={k}-s{seed}"
            run.mkdir()
            grid = {"method.mask.logits_fill": fill, "method.mask.logits": k}
            (run / "sweep.json").write_text(json.dumps({"grid": grid}))
            (run / "summary.json").write_text(json.dumps({
                "name": "sfkd", "student": "resnet8", "method": "kd", "seed": seed, "epochs": 3,
                "best": {"epoch": 3, "val/top1": val if seed < 2 else (99.0 if fill == "0" and k == "0.7" else 0.0), "test/top1": 50.0},
                "last": {"test/top1": 50.0}}))
    command = [sys.executable, str(BENCH / "chosen_on_val.py"), str(tmp_path), "resnet8_sfkd_kd", "--seeds", "0,1", "--point"]
    assert subprocess.run(command, capture_output=True, text=True, check=True).stdout.split() == [
        "method.mask.logits_fill=-inf", "method.mask.logits=0.5"]


@needs_bash
def test_verdicts_script_interaction_part_trains_two_more_teachers_then_compares_three_layers(tmp_path):
    (tmp_path / "runs/c10k/wrn_40_2-s0").mkdir(parents=True)
    calls = run_script("cifar10_5k_verdicts.sh", tmp_path, PARTS="itensor")
    assert calls[0].startswith("sweep configs/cifar10_5k/wrn_40_2.yaml --seeds 1,2 ") and "--out runs/c10k" in calls[0]
    interactions = [c for c in calls if " interaction " in f" {c} "]
    assert len(interactions) == 6 and all(c.startswith("--threads 1 interaction ") for c in interactions)
    assert "--group teacher=runs/c10k/wrn_40_2-s0,runs/c10k/wrn_40_2-s1,runs/c10k/wrn_40_2-s2 --layer stage:-1 " in interactions[0]
    assert ("--group ce=runs/c10k-v/resnet8_ce-s0,runs/c10k-v/resnet8_ce-s1" in interactions[1]
            and "--group cd=runs/c10k-v/resnet8_cd-s0" in interactions[1])
    assert [c.split("--layer ")[1].split()[0] for c in interactions] == ["stage:-1"] * 2 + ["stage:-2"] * 2 + ["embedding"] * 2


@needs_bash
@pytest.mark.slow
def test_gpu_check_without_a_gpu_runs_its_cpu_parts_and_writes_its_section(tmp_path):
    import json
    import sys

    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nkept\n\n<!-- gpu_check:cpu:start -->\nold\n<!-- gpu_check:cpu:end -->\n\ntail kept\n")
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n") and text.endswith("tail kept\n") and "\nold\n" not in text
    section = text.split("<!-- gpu_check:cpu:start -->")[1].split("<!-- gpu_check:cpu:end -->")[0]
    assert "## GPU check: CPU only (" in section and "no GPU here" in section
    assert "| resnet8→resnet8 | fp32 | kd warm |" in section and "teacher cache: created" not in section  # speed.py's table only
    rows = [line for line in section.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert len(rows) == 2 and all(row.endswith("| yes |") for row in rows)  # two workers gave the one-by-one metrics
    assert "### DDP: `torchrun --standalone --nproc-per-node=2`" in section and "2 epochs in" in section
    assert json.loads((tmp_path / "work" / "ddp" / "summary.json").read_text())["epochs"] == 2
