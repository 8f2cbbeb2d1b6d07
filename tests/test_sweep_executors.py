"""``sweep --executor slurm|submitit-local`` and ``sweep --status``.

SLURM submission runs against fake ``sbatch``/``squeue``/``sacct``/``scancel``/``srun`` executables on PATH that
record what they are given; submitit-local runs are real (tiny shapes data, resnet8, one thread): a job killed with
SIGKILL and a job told to stop (submitit's USR2) both resume exactly, and a student waits for its teacher.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distillscope.cli import main
from distillscope.errors import DistillscopeError
from distillscope.sweep import plan_sweep, run_sweep
from distillscope.sweep.status import format_status, sweep_status
from conftest import wait_for

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny", "epochs": 8,
    "data": {"spec": "shapes?n=160&size=16&n_test=40", "val_fraction": 0.2, "batch_size": 32, "num_workers": 0},
    "student": {"name": "resnet8"}, "optim": {"lr": 0.05, "schedule": "cosine"}, "run": {"device": "cpu", "precision": "fp32"},
}
KD = {"epochs": 2, "teacher": {"name": "resnet8", "checkpoint": "set/by/the/sweep"}, "method": {"name": "kd", "T": 4.0}}


def recipe(folder: Path, stem: str, **sections) -> Path:
    path = folder / f"{stem}.yaml"
    path.write_text(yaml.safe_dump({**TINY, "name": f"tiny-{stem}", **sections}))
    return path


# ------------------------------------------------------------------------------ options
def test_slurm_options_are_parsed_and_bad_ones_refused_in_one_line():
    pytest.importorskip("submitit")
    from distillscope.sweep.executors import parse_slurm

    assert parse_slurm(["partition=gpu", "gpus_per_node=2", "mem_gb=7.5", "timeout-min=60", "exclusive=true"]) == {
        "partition": "gpu", "gpus_per_node": 2, "mem_gb": 7.5, "timeout_min": 60, "exclusive": True}
    for bad, message in (("partition", "expected KEY=VALUE"), ("=gpu", "expected KEY=VALUE"), ("partition=", "expected KEY=VALUE"),
                         ("colour=red", "not a submitit SLURM parameter"), ("nodes=0", "whole number"),
                         ("gpus_per_node=a", "whole number")):
        with pytest.raises(DistillscopeError, match=message) as err:
            parse_slurm([bad])
        assert "\n" not in str(err.value)
    with pytest.raises(DistillscopeError, match="one torchrun per node"):
        parse_slurm(["nodes=2", "tasks_per_node=4"])


def test_executor_options_that_do_not_fit_are_refused(tmp_path, capsys):
    config, out = recipe(tmp_path, "t"), tmp_path / "sweep"
    assert main(["sweep", str(config), "--out", str(out), "--slurm", "partition=gpu"]) == 2
    assert "--slurm is for --executor slurm or submitit-local" in capsys.readouterr().err
    assert main(["sweep", str(config), "--out", str(out), "--executor", "slurm", "--gpus", "0"]) == 2
    assert "--slurm gpus_per_node=N" in capsys.readouterr().err
    assert main(["sweep", "--out", str(out)]) == 2 and "--status FOLDER" in capsys.readouterr().err


def test_without_submitit_the_executor_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit raises ImportError
    for executor in ("slurm", "submitit-local"):
        assert main(["sweep", str(recipe(tmp_path, "t")), "--out", str(tmp_path / "s"), "--executor", executor]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pip install 'distillscope[slurm]'" in err


# ------------------------------------------------------------------------------ SLURM, with fake commands
FAKES = {
    "sbatch": 'n=$(( $(cat "$FAKE_SLURM/next" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_SLURM/next"\n'
              'echo "$*" >> "$FAKE_SLURM/sbatch.calls"; cp "${@: -1}" "$FAKE_SLURM/job$n.sh"; echo "Submitted batch job $n"',
    "squeue": 'echo "$*" >> "$FAKE_SLURM/squeue.calls"; cat "$FAKE_SLURM/queue" 2>/dev/null; true',
    "sacct": 'echo "$*" >> "$FAKE_SLURM/sacct.calls"; echo "JobID|State|NodeList"; cat "$FAKE_SLURM/acct" 2>/dev/null; true',
    "scancel": 'echo "$*" >> "$FAKE_SLURM/scancel.calls"',
    "srun": "exit 0",  # submitit's SlurmExecutor checks that srun exists
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    bin_dir, record = tmp_path / "bin", tmp_path / "slurm"
    bin_dir.mkdir()
    record.mkdir()
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(record))
    monkeypatch.chdir(tmp_path)

    class Slurm:
        folder = record

        def calls(self, tool: str) -> list[str]:
            path = record / f"{tool}.calls"
            return path.read_text().splitlines() if path.exists() else []

        def script(self, job: str) -> str:
            return (record / f"job{job}.sh").read_text()

        def states(self, queue: dict[str, str], acct: dict[str, str] | None = None) -> None:
            (record / "queue").write_text("".join(f"{job}|{state}\n" for job, state in queue.items()))
            (record / "acct").write_text("".join(f"{job}|{state}|node1\n" for job, state in (acct or {}).items()))

    return Slurm()


def submitted(out: Path, job: str):
    """The callable submitit pickled for ``job``."""
    from submitit.core.utils import DelayedSubmission

    return DelayedSubmission.load(out / "submitit" / job / f"{job}_submitted.pkl").function


def test_slurm_jobs_wait_for_their_teachers_job_and_run_the_processes_command(tmp_path, fake_slurm):
    teacher, student = recipe(tmp_path, "t"), recipe(tmp_path, "kd", **KD)
    out, lines = Path("sweep"), []
    args = {"seeds": "0,1", "sets": ["kd:teacher.checkpoint=sweep/t-s{seed}"], "out": out, "executor": "slurm",
            "slurm": ["partition=gpu", "gpus_per_node=1", "cpus_per_task=3", "timeout_min=30", "mem_gb=8", "account=lab",
                      "constraint=a100"]}
    assert run_sweep([student, teacher], echo=lines.append, **args) == []
    assert len(fake_slurm.calls("sbatch")) == 4 and all(call.endswith(".sh") for call in fake_slurm.calls("sbatch"))
    jobs = {name: json.loads((out / name / "job.json").read_text())["job_id"] for name in ("t-s0", "t-s1", "kd-s0", "kd-s1")}
    assert sorted(jobs.values()) == ["101", "102", "103", "104"] and jobs["t-s0"] < jobs["kd-s0"]  # teachers first
    for seed in (0, 1):
        teacher_script, student_script = fake_slurm.script(jobs[f"t-s{seed}"]), fake_slurm.script(jobs[f"kd-s{seed}"])
        assert "--dependency" not in teacher_script
        assert (f"#SBATCH --dependency=afterok:{jobs[f't-s{seed}']}\n" in student_script
                and "#SBATCH --kill-on-invalid-dep=yes" in student_script)
        for line in ("--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=3", "--time=30", "--mem=8GB", "--account=lab",
                     "--constraint=a100", f"--job-name=kd-s{seed}", "--signal=USR2@90", "--nodes=1"):
            assert f"#SBATCH {line}\n" in student_script, line
        assert "srun --unbuffered" in student_script and "-m submitit.core._submit" in student_script
    # what each job runs is what the processes executor runs, with --cpus_per_task threads
    runs = {run.name: run for run in plan_sweep([student, teacher], "0,1", (), args["sets"], out)}
    for name, job in jobs.items():
        assert submitted(out, job).command() == runs[name].command(3)
        assert submitted(out, job).log == (out / "logs" / f"{name}.log").absolute()
    assert f"-m distillscope.cli train {student} --set teacher.checkpoint=sweep/t-s1" in fake_slurm.script(jobs["kd-s1"])
    assert "submit kd-s1: job 104 after job(s) 102" in lines

    fake_slurm.states({jobs["t-s0"]: "RUNNING", jobs["t-s1"]: "RUNNING", jobs["kd-s0"]: "PENDING", jobs["kd-s1"]: "PENDING"})
    rows = {name: (state, detail) for name, state, detail in sweep_status(out)}
    assert (rows["t-s0"] == ("running", f"job {jobs['t-s0']}")
            and rows["kd-s0"] == ("queued", f"job {jobs['kd-s0']} (after job(s) {jobs['t-s0']})"))
    again = []
    run_sweep([student, teacher], echo=again.append, **args)  # every job alive: nothing submitted
    assert len(fake_slurm.calls("sbatch")) == 4 and sum(line.startswith("kept") for line in again) == 4

    # t-s0's job died after it had started (it resumes), its student was cancelled; t-s1 finished, its student's job timed out
    (out / "t-s0" / "config.yaml").write_text((tmp_path / "t.yaml").read_text())
    (out / "t-s1" / "summary.json").write_text(json.dumps({"last": {"test/top1": 50.0}}))
    fake_slurm.states({}, {jobs["t-s0"]: "FAILED", jobs["kd-s0"]: "CANCELLED by 0", jobs["kd-s1"]: "TIMEOUT"})
    rows = {name: (state, detail) for name, state, detail in sweep_status(out)}
    assert rows["t-s0"] == ("failed", f"job {jobs['t-s0']} FAILED; log {out / 'logs' / 't-s0.log'}")
    assert rows["kd-s1"][0] == "failed" and "TIMEOUT" in rows["kd-s1"][1] and rows["t-s1"] == ("finished", "test top-1 50.00% (last epoch)")
    assert any(f"-j {jobs['t-s0']}" in call for call in fake_slurm.calls("sacct"))  # submitit's sacct query
    third = []
    run_sweep([student, teacher], echo=third.append, **args)
    new = {name: json.loads((out / name / "job.json").read_text())["job_id"] for name in ("t-s0", "kd-s0", "kd-s1")}
    assert sorted(new.values()) == ["105", "106", "107"] and len(fake_slurm.calls("sbatch")) == 7
    assert f"submit t-s0: job {new['t-s0']} (was job {jobs['t-s0']}, failed)" in third
    assert submitted(out, new["t-s0"]).command()[3:6] == ["train", "--resume", "--out"]  # it continues from its checkpoint
    assert f"--dependency=afterok:{new['t-s0']}\n" in fake_slurm.script(new["kd-s0"])
    assert "--dependency" not in fake_slurm.script(new["kd-s1"])  # its teacher has finished


def test_slurm_status_lists_every_state(tmp_path, fake_slurm, capsys):
    teacher = recipe(tmp_path, "t")
    run_sweep([teacher], "0-3", out="sweep", executor="slurm", echo=lambda line: None)
    (Path("sweep/t-s0/summary.json")).write_text(json.dumps({"last": {"test/top1": 61.25}}))
    Path("sweep/t-s3/job.json").unlink()  # as if the sweep had stopped before submitting it
    fake_slurm.states({"102": "RUNNING", "103": "PENDING"})
    assert main(["sweep", "--status", "sweep"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines() == format_status("sweep", sweep_status("sweep")).splitlines()
    assert text.splitlines()[0] == "sweep sweep: 4 runs, 1 finished, 1 running, 1 queued, 1 not started"
    assert "finished     t-s0  test top-1 61.25% (last epoch)" in text and "running      t-s1  job 102" in text
    assert "queued       t-s2  job 103" in text and "not started  t-s3" in text


def test_slurm_nodes_2_trains_each_run_with_torchrun_on_every_node(tmp_path, fake_slurm, monkeypatch):
    teacher = recipe(tmp_path, "t")
    run_sweep([teacher], out="sweep", executor="slurm", slurm=["nodes=2", "gpus_per_node=4"], echo=lambda line: None)
    script = fake_slurm.script("101")
    assert "#SBATCH --nodes=2\n" in script and "#SBATCH --ntasks-per-node=1\n" in script and "#SBATCH --gpus-per-node=4\n" in script
    assert "on each of the 2 nodes:" in script and "-m torch.distributed.run --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d" in script
    job = submitted(Path("sweep"), "101")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    plain = plan_sweep([teacher], out="sweep")[0].command(1)
    assert job.launch() == [plain[0], "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=4", "--rdzv-backend=c10d",
                            "--rdzv-endpoint=gpu07:29642", "--rdzv-id=4242", *plain[1:]]


# ------------------------------------------------------------------------------ status of local runs
def test_status_of_a_processes_sweep_from_its_folders_and_logs(tmp_path):
    from distillscope.sweep.status import write_plan

    teacher, out = recipe(tmp_path, "t"), tmp_path / "sweep"
    runs = plan_sweep([teacher], "0-3", out=out)
    out.mkdir()
    write_plan(out, runs, "processes")
    (out / "logs").mkdir()
    for run in runs[:3]:
        run.folder.mkdir()
        (out / "logs" / f"{run.name}.log").write_text("=== start\n")
    (runs[0].folder / "summary.json").write_text(json.dumps({"last": {"test/top1": 40.0}}))
    (runs[1].folder / "job.json").write_text(json.dumps({"executor": "processes", "pid": os.getpid(), "host": socket.gethostname(),
                                                         "match": ""}))
    (runs[2].folder / "job.json").write_text(json.dumps({"executor": "processes", "pid": 2**22 + 7, "host": socket.gethostname(),
                                                         "match": ""}))
    (runs[2].folder / "last.safetensors").write_text("x")
    (runs[2].folder / "metrics.jsonl").write_text("{}\n{}\n")
    plan = json.loads((out / "plan.json").read_text())
    (out / "plan.json").write_text(json.dumps({**plan, "pid": 2**22 + 7}))  # the sweep has ended
    assert [row[1] for row in sweep_status(out)] == ["finished", "running", "failed", "not started"]
    assert sweep_status(out)[2][2] == f"log {out / 'logs' / 't-s2.log'}; checkpoint after epoch 2: a re-run resumes it"
    (out / "plan.json").write_text(json.dumps({**plan, "pid": os.getpid()}))  # the sweep is still working
    assert [row[1] for row in sweep_status(out)] == ["finished", "running", "queued", "queued"]
    with pytest.raises(DistillscopeError, match="no such folder"):
        sweep_status(tmp_path / "nothing")


# ------------------------------------------------------------------------------ submitit-local, real runs
def sweep_command(configs: list[Path], out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distillscope.cli", "sweep", *map(str, configs), "--threads", "1", "--out", str(out), *extra]


ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def pids(match: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and match in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def last_metrics(folder: Path) -> dict:
    return {k: v for k, v in json.loads((folder / "summary.json").read_text())["last"].items() if k != "img_per_s"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The teacher trained uninterrupted by the processes executor: what every interrupted job must end with."""
    pytest.importorskip("submitit")
    folder = tmp_path_factory.mktemp("reference")
    teacher = recipe(folder, "t")
    subprocess.run(sweep_command([teacher], folder / "sweep"), env=ENV, check=True, capture_output=True, timeout=300)
    return last_metrics(folder / "sweep" / "t-s0")


@pytest.mark.slow
def test_submitit_local_job_killed_with_sigkill_resumes_on_rerun_and_the_student_waits_for_it(tmp_path, reference):
    teacher, student = recipe(tmp_path, "t"), recipe(tmp_path, "kd", **KD)
    out = tmp_path / "sweep"
    command = sweep_command([student, teacher], out, "--set", f"kd:teacher.checkpoint={out}/t-s{{seed}}", "--executor", "submitit-local",
                            "--workers", "2")
    sweep = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "t-s0" / "last.safetensors").is_file(), "the teacher's first checkpoint", 240)
        run = pids(f"train {teacher} ")
        assert len(run) == 1
        os.kill(run[0], signal.SIGKILL)
        output = sweep.communicate(timeout=240)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 1, output
    assert "FAILED t-s0 (killed by signal 9)" in output and "skip   kd-s0: it needs t-s0" in output
    assert not (out / "t-s0" / "summary.json").exists() and not (out / "kd-s0").exists()
    record = json.loads((out / "t-s0" / "job.json").read_text())
    assert record["executor"] == "submitit-local" and (out / "submitit" / record["job_id"]).is_dir()
    status = {name: (state, detail) for name, state, detail in sweep_status(out)}
    assert status["t-s0"][0] == "failed" and "a re-run resumes it" in status["t-s0"][1] and status["kd-s0"] == ("not started", "after t-s0")

    again = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 to resume, 1 to start" in again.stdout
    assert again.stdout.index("done   t-s0") < again.stdout.index("start  kd-s0")  # the student waited for its teacher
    assert f"train --resume --out {out / 't-s0'}" in (out / "logs" / "t-s0.log").read_text()
    assert last_metrics(out / "t-s0") == reference  # resumed exactly
    assert json.loads((out / "kd-s0" / "summary.json").read_text())["config"]["teacher"]["checkpoint"] == f"{out}/t-s0"
    assert [row[1] for row in sweep_status(out)] == ["finished", "finished"]


@pytest.mark.slow
def test_submitit_local_job_told_to_stop_checkpoints_requeues_itself_and_resumes(tmp_path, reference):
    out = tmp_path / "sweep"
    sweep = subprocess.Popen(sweep_command([recipe(tmp_path, "t")], out, "--executor", "submitit-local"), env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "t-s0" / "last.safetensors").is_file(), "the first checkpoint", 240)
        controller = int(json.loads((out / "t-s0" / "job.json").read_text())["job_id"])
        (job,) = children(controller)  # the job's task: submitit's wrapper around the training command
        os.kill(job, signal.SIGUSR2)  # what submitit's controller (or SLURM) sends before the time limit
        output = sweep.communicate(timeout=240)[0]
    finally:
        sweep.kill()
    assert sweep.returncode == 0, output
    log = (out / "logs" / "t-s0.log").read_text()
    assert "interrupted at epoch" in log and f"train --resume --out {out / 't-s0'}" in log
    assert log.count("=== ") == 3 and log.count(f" job {controller} on ") == 2  # requeued as the same job
    assert last_metrics(out / "t-s0") == reference
