"""Runs as submitit jobs: on SLURM (``--executor slurm``) or as submitit's local subprocesses (``submitit-local``).

Each run is one job whose callable, :class:`TrainJob`, starts the very command the ``processes`` executor runs
(``python -m distillscope.cli train … --out RUN``, or ``train --resume`` once the folder holds a run), with its
output appended to ``OUT/logs/RUN.log``. When the job is told to stop (SLURM's signal before the time limit, or a
preemption), submitit calls :meth:`TrainJob.checkpoint`: the run checkpoints (SIGTERM, as after Ctrl-C) and the
job requeues itself with the same callable, which then resumes the run. A job's id is kept in ``RUN/job.json``.

SLURM: every unfinished run is submitted at once, a student whose teacher is a run of the sweep with
``--dependency=afterok:<the teacher's job>`` (and ``--kill-on-invalid-dep=yes``); the sweep command returns after
submitting. ``submitit-local`` has no dependencies, so the sweep's own scheduler starts a student once its
teacher has finished, ``--workers`` jobs at a time, and waits for them, like ``processes``.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import DistillscopeError
from .plan import SweepRun
from .processes import _worker_env

EXECUTORS = ("processes", "slurm", "submitit-local")
INSTALL = "pip install 'distillscope[slurm]' (or pip install submitit)"
DEFAULT_TIMEOUT_MIN = 240  # a longer run continues over several jobs: it requeues itself at the time limit
MAX_REQUEUES = 20
RDZV_PORT = 29400
LOCAL_KEYS = ("timeout_min", "signal_delay_s", "gpus_per_node")  # what submitit's LocalExecutor uses of --slurm
STOP_WAIT_S = 80  # SIGTERM to the run, then this long for its checkpoint (submitit signals 90 s before the limit)
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


def load_submitit():
    try:
        import submitit
    except ImportError:
        raise DistillscopeError(f"--executor slurm and submitit-local need submitit: {INSTALL}") from None
    return submitit


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_slurm(pairs: list[str]) -> dict:
    """``["partition=gpu", "gpus_per_node=1"]`` -> ``{"partition": "gpu", "gpus_per_node": 1}``; a malformed pair or
    a key submitit's SLURM executor does not take is refused in one line."""
    params = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key or not value.strip():
            raise DistillscopeError(f"--slurm '{pair}': expected KEY=VALUE, e.g. --slurm partition=gpu or --slurm timeout_min=120")
        params[key] = _value(value.strip())
    if params:
        from submitit.slurm.slurm import SlurmExecutor, _get_default_parameters

        valid = set(_get_default_parameters()) | set(SlurmExecutor._equivalence_dict())
        bad = sorted(set(params) - valid)
        if bad:
            common = "partition, gpus_per_node, cpus_per_task, timeout_min, mem_gb, account, constraint, nodes, qos"
            raise DistillscopeError(f"--slurm {bad[0]}=…: not a submitit SLURM parameter; e.g. {common}")
    for key in ("nodes", "gpus_per_node", "tasks_per_node", "ntasks_per_node", "cpus_per_task"):
        if key in params and not (isinstance(params[key], int) and params[key] >= 1):
            raise DistillscopeError(f"--slurm {key}={params[key]}: give a whole number ≥ 1")
    if params.get("nodes", 1) > 1 and params.get("tasks_per_node", params.get("ntasks_per_node", 1)) != 1:
        raise DistillscopeError("--slurm nodes>1 runs one torchrun per node: leave tasks_per_node out (it is 1)")
    return params


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def write_job(run: SweepRun, record: dict) -> None:
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "job.json").write_text(json.dumps(record, indent=2) + "\n")


def read_job(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "job.json").read_text())
    except (OSError, ValueError):
        return None


def local_alive(record: dict) -> bool:
    """Whether the process ``record`` names (a submitit-local controller or a processes-executor run) still runs here."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        cmdline = Path(f"/proc/{int(record['pid'])}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, KeyError, ValueError):
        return False
    return record.get("match", "") in cmdline


# ------------------------------------------------------------------------------ the job's callable
class RunFailed(RuntimeError):
    """The run's command ended without a summary.json; the message holds its exit code (``ended with exit N``)."""


class TrainJob:
    """What a submitit job runs: the run's training command, in its own session, output appended to ``log``.

    ``nodes`` > 1 (or ``gpus_per_node`` > 1) launches it with torchrun, one launcher per node (submitit's srun
    starts one task per node), rendezvous on the job's first node."""

    def __init__(self, run: SweepRun, threads: int, log: Path, cwd: Path, nodes: int = 1, gpus_per_node: int = 1):
        self.run, self.threads, self.log, self.cwd = run, threads, Path(log).absolute(), Path(cwd).absolute()
        self.nodes, self.gpus_per_node = nodes, gpus_per_node
        self._proc = None

    def __getstate__(self):
        return {**self.__dict__, "_proc": None}

    def command(self, first_node: str = "localhost", job_id: str = "0") -> list[str]:
        """The run's command as the processes executor would run it (``train --resume`` once the folder holds a
        run), behind ``torchrun`` when the job spans nodes or GPUs."""
        command = self.run.command(self.threads)
        if self.nodes == 1 and self.gpus_per_node == 1:
            return command
        launcher = [command[0], "-m", "torch.distributed.run", f"--nnodes={self.nodes}", f"--nproc-per-node={self.gpus_per_node}"]
        if self.nodes == 1:
            launcher.append("--standalone")
        else:
            port = RDZV_PORT + int(re.sub(r"\D", "", job_id) or 0) % 1000
            launcher += ["--rdzv-backend=c10d", f"--rdzv-endpoint={first_node}:{port}", f"--rdzv-id={job_id}"]
        return launcher + command[1:]

    def launch(self) -> list[str]:
        """:meth:`command` in the running job: the rendezvous is on the job's first node."""
        import submitit

        env = submitit.JobEnvironment()
        return self.command(env.hostnames[0], env.job_id)

    def __call__(self) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        command = self.launch()
        # SLURM sends the stop signal (USR2) to every process of the job: the run inherits it blocked, so that only
        # this process's handler (submitit's, which calls checkpoint) acts on it
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {env._usr_sig()})
        with open(self.log, "a") as out:
            out.write(f"\n=== {_now()} job {env.job_id} on {env.hostname}: {shlex.join(command)}\n")
            out.flush()
            try:
                self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                              env=_worker_env(self.threads), cwd=self.cwd, start_new_session=True)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        # submitit-local's controller passes SIGTERM (a stop) to this process only; SLURM signals the run itself
        forward = os.environ.get("SUBMITIT_EXECUTOR") == "local" and threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)} if forward else {}
        try:
            code = self._proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if (self.cwd / self.run.folder / "summary.json").is_file():
            return {"run": self.run.name, "folder": str(self.run.folder)}
        raise RunFailed(f"run {self.run.name} ended with exit {code} and no summary.json; log {self.log}")

    def _running(self) -> bool:
        """Whether the run's process still runs. Signal handlers call it while ``__call__`` waits for that process,
        so it must not reap it (``Popen.poll`` inside the waiting ``Popen.wait`` never sees the exit)."""
        if self._proc is None:
            return False
        try:
            return os.waitid(os.P_PID, self._proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped already
            return False

    def _forward(self, signum, frame) -> None:
        if self._running():
            self._proc.send_signal(signal.SIGTERM)

    def checkpoint(self):
        """submitit's hook when the job is told to stop: the run checkpoints and stops, and the job is requeued
        with this callable, whose command is then ``train --resume``."""
        from submitit.helpers import DelayedSubmission

        if self._running():
            self._proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            while self._running() and time.monotonic() < deadline:  # after that it is killed with the job; its last checkpoint stays
                time.sleep(0.2)
        return DelayedSubmission(TrainJob(self.run, self.threads, self.log, self.cwd, self.nodes, self.gpus_per_node))


def _python() -> str:
    """How jobs start Python: this interpreter, with this very distillscope first on its path."""
    package_parent = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    return shlex.join(["env", f"PYTHONPATH={path}", sys.executable])


# ------------------------------------------------------------------------------ submitit-local (the scheduler's executor)
class LocalJobHandle:
    """A submitit-local job as the scheduler sees a process: ``poll()`` gives the run's exit code once the job ended."""

    def __init__(self, job):
        self.job, self.process = job, job._process

    def poll(self) -> int | None:
        if self.process.poll() is None:
            return None
        try:
            outcome, value = self.job._get_outcome_and_result()
        except (RuntimeError, OSError, EOFError):  # no result: the job itself was killed
            return self.process.returncode or 1
        if outcome == "success":
            return 0
        match = re.search(r"ended with exit (-?\d+)", str(value))
        return int(match[1]) if match else 1

    def send_signal(self, sig) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the controller passes it on: the run checkpoints and stops

    def wait(self) -> int:
        return self.process.wait()


class SubmititLocal:
    """The scheduler's executor for ``--executor submitit-local``: each run a job of submitit's LocalExecutor."""

    def __init__(self, out: Path, threads: int, params: dict):
        submitit = load_submitit()
        self.executor = submitit.LocalExecutor(folder=out / "submitit" / "%j", python=_python(), max_num_timeout=MAX_REQUEUES)
        self.executor.update_parameters(**{"timeout_min": DEFAULT_TIMEOUT_MIN, **{k: params[k] for k in LOCAL_KEYS if k in params}})
        self.threads, self.gpus_per_node = threads, params.get("gpus_per_node", 1)

    def start(self, command: list[str], log: Path, gpu: str | None = None, run: SweepRun | None = None) -> LocalJobHandle:
        gpus = self.gpus_per_node
        if gpu is not None:  # --gpus: the scheduler's choice, one GPU per run
            gpus = 1
            self.executor.update_parameters(gpus_per_node=1, visible_gpus=[int(gpu)])
        job = self.executor.submit(TrainJob(run, self.threads, log, Path.cwd(), gpus_per_node=gpus))
        write_job(run, {"executor": "submitit-local", "job_id": job.job_id, "pid": int(job.job_id), "host": socket.gethostname(),
                        "match": "submitit.local", "submitit_folder": str(job.paths.folder), "submitted": _now(), "command": command})
        return LocalJobHandle(job)


def refuse_live_local_jobs(runs: list[SweepRun]) -> None:
    for run in runs:
        record = read_job(run.folder)
        if run.state != "finished" and record and record.get("executor") == "submitit-local" and local_alive(record):
            raise DistillscopeError(f"run {run.name}: its job {record['job_id']} (submitit-local) still runs; wait for it or stop it "
                                    f"(kill {record['pid']}), then re-run")


# ------------------------------------------------------------------------------ SLURM
def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's SLURM state: ``squeue`` for the jobs still queued or running, else ``sacct`` (as submitit reads
    it); ``GONE`` where neither knows the job."""
    states = {}
    if job_ids:
        user = os.environ.get("USER") or os.environ.get("LOGNAME") or ""
        try:
            done = subprocess.run(["squeue", "--noheader", f"--user={user}", "--format=%i|%T"], capture_output=True, text=True)
        except FileNotFoundError:
            raise DistillscopeError("the sweep's runs are SLURM jobs, and squeue is not found here: run this on the cluster") from None
        if done.returncode != 0:
            raise DistillscopeError(f"squeue failed: {(done.stderr.strip().splitlines() or ['no message'])[-1]}")
        live = dict(line.strip().split("|", 1) for line in done.stdout.splitlines() if "|" in line)
        states = {job: live[job] for job in job_ids if job in live}
        rest = [job for job in job_ids if job not in states]
        if rest:
            watcher = load_submitit().slurm.slurm.SlurmInfoWatcher()
            for job in rest:
                watcher.register_job(job)
            watcher.update()
            states.update({job: watcher.get_state(job, mode="cache") for job in rest})
    return {job: ("GONE" if state == "UNKNOWN" else state.split()[0]) for job, state in states.items()}


def _topological(runs: list[SweepRun]) -> list[SweepRun]:
    order, placed = [], set()
    while len(order) < len(runs):
        for run in runs:
            if run.name not in placed and all(dep in placed for dep in run.depends_on):
                order.append(run)
                placed.add(run.name)
    return order


def submit_slurm(runs: list[SweepRun], out: Path, threads: int, params: dict, echo) -> dict[str, str]:
    """Submit every unfinished run whose job is not queued or running; returns ``{run name: job id}`` of the runs
    left to finish. A student whose teacher is unfinished waits for the teacher's job (``afterok``)."""
    submitit = load_submitit()
    try:
        executor = submitit.SlurmExecutor(folder=out / "submitit" / "%j", python=_python(), max_num_timeout=MAX_REQUEUES)
    except RuntimeError as err:
        raise DistillscopeError(f"--executor slurm: {err} (run the sweep on the cluster's login node, or use --executor "
                                "submitit-local)") from None
    nodes, gpus = params.get("nodes", 1), params.get("gpus_per_node", 1)
    base = {"timeout_min": DEFAULT_TIMEOUT_MIN, "cpus_per_task": threads, **params}
    if nodes > 1:
        base["tasks_per_node"] = 1
    try:
        executor.update_parameters(**executor._convert_parameters(base))
    except (ValueError, TypeError) as err:
        raise DistillscopeError(f"--slurm: {str(err).splitlines()[0]}") from None
    todo = [run for run in _topological(runs) if run.state != "finished"]
    records = {run.name: read_job(run.folder) for run in todo}
    known = [r["job_id"] for r in records.values() if r and r.get("executor") == "slurm"]
    states = slurm_states(known)
    jobs: dict[str, str] = {}
    for run in todo:
        record = records[run.name]
        if record and record.get("executor") == "slurm" and (states.get(record["job_id"]) in QUEUED
                                                             or _running(states.get(record["job_id"]))):
            jobs[run.name] = record["job_id"]
            echo(f"kept   {run.name}: job {record['job_id']} is {states[record['job_id']].lower()}")
            continue
        after = [jobs[dep] for dep in run.depends_on if dep in jobs]
        train = TrainJob(run, threads, out / "logs" / f"{run.name}.log", Path.cwd(), nodes, gpus)
        shown = train.command("FIRST_NODE", "$SLURM_JOB_ID")
        launch = f"on each of the {nodes} nodes: " if nodes > 1 else ""
        executor.update_parameters(
            job_name=run.name, dependency=f"afterok:{':'.join(after)}" if after else None,
            additional_parameters={"kill-on-invalid-dep": "yes"} if after else None,
            setup=[f"# distillscope sweep run {run.name} ({run.state}), {launch}{shlex.join(shown)}"],
        )
        run.folder.mkdir(parents=True, exist_ok=True)
        run.write_record()
        try:
            job = executor.submit(train)
        except (RuntimeError, OSError) as err:  # sbatch's own message, e.g. an unknown partition
            raise DistillscopeError(f"run {run.name}: sbatch failed: {' '.join(str(err).split())[:400]}") from None
        jobs[run.name] = job.job_id
        write_job(run, {"executor": "slurm", "job_id": job.job_id, "after": after, "submitit_folder": str(job.paths.folder),
                        "submitted": _now(), "command": shown})
        previous = (f" (was job {record['job_id']}, {states.get(record['job_id'], 'gone').lower()})" if record and record.get("job_id")
                    else "")
        echo(f"submit {run.name}: job {job.job_id}" + (f" after job(s) {', '.join(after)}" if after else "") + previous)
    return jobs


def _running(state: str | None) -> bool:
    return state in {"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STAGE_OUT", "RESIZING", "SIGNALING", "STOPPED"}
