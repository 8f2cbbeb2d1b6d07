"""``run_sweep``: plan the runs, train them with the worker pool, write the table."""
from __future__ import annotations

import os
import shlex
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from ..errors import DistillscopeError
from .executors import EXECUTORS, LOCAL_KEYS, SubmititLocal, load_submitit, parse_slurm, refuse_live_local_jobs, submit_slurm
from .plan import plan_sweep
from .scheduler import Scheduler, count_signals
from .status import write_plan
from .table import write_table


class SweepInterrupted(DistillscopeError):
    """Raised after SIGINT/SIGTERM, once every worker has checkpointed and exited."""


class SweepFailed(DistillscopeError):
    """Raised at the end when runs failed or were skipped; ``summaries`` holds the finished runs."""

    def __init__(self, message: str, summaries: list[dict]):
        super().__init__(message)
        self.summaries = summaries


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def parse_gpus(gpus: str | None) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]`` (GPU indices as ``CUDA_VISIBLE_DEVICES`` takes them); ``None`` -> ``[]``."""
    if gpus is None:
        return []
    ids = [part.strip() for part in str(gpus).split(",")]
    if not all(part.isdigit() for part in ids) or len(set(ids)) != len(ids):
        raise DistillscopeError(f"--gpus '{gpus}': give distinct GPU indices, e.g. --gpus 0 or --gpus 0,1")
    return ids


def split_threads(workers: int, cores: int, threads: int | None = None) -> int:
    """Torch threads per run: ``threads`` when given, else ``cores // workers`` (at least 1)."""
    if workers < 1:
        raise DistillscopeError(f"--workers {workers}: must be at least 1")
    if threads is not None and threads < 1:
        raise DistillscopeError(f"--threads {threads}: must be at least 1")
    return threads or max(1, cores // workers)


def _print(text: str) -> None:
    print(text, flush=True)


@contextmanager
def _sweep_lock(out: Path):
    """One sweep per folder. The lock's file descriptor is passed on to the workers, so it stays held
    while any of them still runs, even if the sweep itself was killed."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: no lock
        yield ()
        return
    handle = open(out / ".sweep.lock", "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DistillscopeError(f"another sweep, or a run it started, is still working in '{out}'; "
                                "wait for it or stop it, then re-run") from None
    try:
        yield (handle.fileno(),)
    finally:
        handle.close()


def run_sweep(configs: list[str | Path], seeds="0", grid=(), sets=(), out: str | Path = "runs/sweep", workers: int = 1,
              threads: int | None = None, dry_run: bool = False, echo=_print, imports: list[str] = (), gpus: str | None = None,
              baseline: str | None = None, executor: str = "processes", slurm: list[str] | dict = ()) -> list[dict]:
    """Train every (config × grid point × seed) run into ``out`` and return the finished runs' summaries.

    ``grid``: ``["method.T=2,4,8", "kd:optim.lr=0.05,0.1"]`` or ``{"method.T": [2, 4, 8]}``; ``sets``:
    ``["optim.lr=0.1"]`` or ``{"optim.lr": 0.1}``; a ``CONFIG:`` prefix (the file's stem) limits an entry
    to one config. ``{seed}`` and ``{KEY}`` of a grid key in a value are filled per run. ``imports`` (modules
    or ``.py`` files registering the user's models) are passed to every run as ``--import``. ``gpus``
    (``"0,1"``): each run gets the GPU running the fewest runs, alone in its ``CUDA_VISIBLE_DEVICES``, so
    ``workers`` above the GPU count puts several runs on one GPU (small-batch runs leave most of a GPU idle). Writes
    ``out/table.md`` and ``out/table.csv``, each row compared to the row ``baseline`` names (``report.table_rows``;
    one naming no finished row is a warning, the table written without it). Raises :class:`SweepInterrupted` after
    SIGINT/SIGTERM and :class:`SweepFailed` (with ``.summaries``) when runs failed or were skipped.

    ``executor``: ``processes`` (local processes, above), ``submitit-local`` (each run a job of submitit's
    LocalExecutor, scheduled the same way) or ``slurm`` (every unfinished run submitted as a SLURM job, students
    ``afterok`` their teacher's job; returns once submitted, the table is written by the re-run that finds every run
    finished). ``slurm``: submitit parameters, ``["partition=gpu", "timeout_min=120"]`` or a dict (see ``executors``).
    """
    out = Path(out)
    if executor not in EXECUTORS:
        raise DistillscopeError(f"--executor {executor}: choose one of {', '.join(EXECUTORS)}")
    if executor == "processes" and slurm:
        raise DistillscopeError("--slurm is for --executor slurm or submitit-local")
    if executor == "slurm" and gpus is not None:
        raise DistillscopeError("--gpus is for local runs; on SLURM ask for GPUs with --slurm gpus_per_node=N")
    if executor != "processes":
        load_submitit()
    params = parse_slurm([f"{k}={v}" for k, v in slurm.items()] if isinstance(slurm, dict) else list(slurm))
    gpu_ids = parse_gpus(gpus)
    runs = plan_sweep(configs, seeds, grid, sets, out)
    for run in runs:
        run.imports = list(imports)
    cores = available_cores()
    if threads is None:  # on SLURM a run gets the CPUs it asks for (cpus_per_task), one by default
        threads = params.get("cpus_per_task") or (1 if executor == "slurm" else None)
    threads = split_threads(workers, cores, threads)
    if executor == "slurm":
        return _slurm_sweep(runs, out, threads, params, dry_run, baseline, echo)
    states = Counter(run.state for run in runs)
    on_gpus = f" sharing GPU(s) {','.join(gpu_ids)}" if gpu_ids else ""
    echo(f"sweep {out}: {len(runs)} runs ({states['finished']} finished, {states['resume']} to resume, {states['new']} to start); "
         f"{workers} worker(s) × {threads} thread(s) on {cores} cores{on_gpus}; logs in {out / 'logs'}")
    if workers * threads > cores:
        echo(f"warning: {workers} workers × {threads} threads > {cores} cores: runs will slow each other down")
    if dry_run:
        for run in runs:
            after = f"  (after {', '.join(run.depends_on)})" if run.depends_on else ""
            echo(f"{run.state:<8} {run.name}{after}\n         {shlex.join(run.command(threads))}")
        return []

    with _sweep_lock(out) as pass_fds:
        write_plan(out, runs, executor)
        jobs = None
        if executor == "submitit-local":
            refuse_live_local_jobs(runs)
            ignored = sorted(set(params) - set(LOCAL_KEYS) - {"cpus_per_task"})
            if ignored:
                echo(f"note: submitit-local uses {', '.join(LOCAL_KEYS)} (and cpus_per_task as threads) of --slurm; "
                     f"ignored: {', '.join(ignored)}")
            jobs = SubmititLocal(out, threads, params)
        scheduler = Scheduler(runs, out, workers, threads, pass_fds, echo, gpu_ids, jobs)
        with count_signals(scheduler):
            scheduler.run()
    if scheduler.signals and (scheduler.todo or scheduler.stopped):
        raise SweepInterrupted(
            f"sweep interrupted: {len(scheduler.stopped)} run(s) stopped, {len(scheduler.todo)} not started; "
            "re-run the same command to resume"
        )
    summaries = write_table([run for run in runs if run.state == "finished"], out, baseline, echo)
    if scheduler.failed:
        why = "; ".join(f"{name} ({reason})" for name, reason in scheduler.failed.items())
        raise SweepFailed(f"{len(scheduler.failed)} of {len(runs)} runs did not finish: {why}; logs in {out / 'logs'}", summaries)
    return summaries


def _slurm_sweep(runs, out: Path, threads: int, params: dict, dry_run: bool, baseline: str | None, echo) -> list[dict]:
    """Submit the unfinished runs as SLURM jobs; once every run has finished, write the table."""
    states = Counter(run.state for run in runs)
    resources = ", ".join(f"{k}={v}" for k, v in params.items()) or "the cluster's defaults"
    echo(f"sweep {out}: {len(runs)} runs ({states['finished']} finished, {states['resume']} to resume, {states['new']} to start) "
         f"as SLURM jobs ({resources}; {threads} thread(s) per run); logs in {out / 'logs'}")
    if dry_run:
        for run in runs:
            after = f"  (after {', '.join(run.depends_on)})" if run.depends_on else ""
            echo(f"{run.state:<8} {run.name}{after}\n         {shlex.join(run.command(threads))}")
        return []
    with _sweep_lock(out):
        (out / "logs").mkdir(exist_ok=True)
        write_plan(out, runs, "slurm")
        jobs = submit_slurm(runs, out, threads, params, echo)
    if jobs:
        echo(f"{len(jobs)} run(s) queued or running as SLURM jobs. Follow them with: distillscope sweep --status {out}\n"
             "Re-run the same command to resubmit any run whose job died (it resumes from its checkpoint) and, once all have finished, to "
             "write the table.")
        return []
    return write_table(runs, out, baseline, echo)
