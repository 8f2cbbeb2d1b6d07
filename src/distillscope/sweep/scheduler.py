"""The sweep's worker pool: starts runs when a worker is free and the runs they need have finished, reaps them,
reports each with its result or its log's last lines and an ETA, and forwards SIGINT/SIGTERM to the running ones."""
from __future__ import annotations

import json
import shlex
import signal
import statistics
import subprocess
import time
from pathlib import Path

from ..engine.device import on_signals
from .plan import SweepRun
from .processes import LocalProcesses

POLL_SECONDS = 0.2
LOG_TAIL_LINES = 15


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _exit_reason(code: int) -> str:
    if code == 130:
        return "stopped by a signal (exit 130); a re-run resumes it"
    return f"killed by signal {-code}" if code < 0 else f"exit {code}"


def _result_text(folder: Path) -> str:
    s = json.loads((folder / "summary.json").read_text())
    text = f"test top-1 {s['last']['test/top1']:.2f}% last"
    if s.get("best"):
        text += f", {s['best']['test/top1']:.2f}% @best-val (epoch {s['best']['epoch']}, val {s['best']['val/top1']:.2f}%)"
    return text


class Scheduler:
    """Starts runs (those others wait for first), reaps them, reports, forwards signals. ``executor`` starts a run
    (default: :class:`LocalProcesses`; ``executors.SubmititLocal`` for submitit-local jobs)."""

    def __init__(self, runs: list[SweepRun], out: Path, workers: int, threads: int, pass_fds: tuple, echo, gpus: list[str] = (),
                 executor=None):
        needed = {dep for run in runs for dep in run.depends_on}
        self.todo = sorted((r for r in runs if r.state != "finished"), key=lambda r: r.name not in needed)
        self.total = len(self.todo)
        self.done = {r.name for r in runs if r.state == "finished"}
        self.failed: dict[str, str] = {}  # name -> why
        self.stopped: list[str] = []
        self.running: dict[str, tuple[SweepRun, subprocess.Popen, float]] = {}
        self.durations: dict[str, list[float]] = {}  # group -> seconds, runs finished in this sweep
        self.logs, self.workers, self.threads, self.echo = out / "logs", workers, threads, echo
        self.processes = executor or LocalProcesses(threads, pass_fds)  # start(command, log, gpu, run) -> a handle with poll()
        self.gpus, self.gpu_of = list(gpus), {}  # name of a running run -> the GPU it was given
        self.signals = self.forwarded = 0

    def run(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            while self.todo or self.running:
                if self.signals > self.forwarded:
                    self._forward_signal()
                self._reap()
                if self.signals:
                    if not self.running:
                        break
                else:
                    self._skip_orphans()
                    self._start_ready()
                time.sleep(POLL_SECONDS)
        finally:  # an unexpected error here must not leave workers running on their own
            for _, proc, _ in self.running.values():
                proc.send_signal(signal.SIGINT)
                proc.wait()

    def _start_ready(self) -> None:
        for run in list(self.todo):
            if len(self.running) >= self.workers:
                return
            if all(dep in self.done for dep in run.depends_on):
                self.todo.remove(run)
                self._start(run)

    def _start(self, run: SweepRun) -> None:
        action = "resume" if run.state == "resume" else "start"
        command = run.command(self.threads)
        run.folder.mkdir(parents=True, exist_ok=True)
        run.write_record()
        gpu, on = None, ""
        if self.gpus:  # the GPU running the fewest runs; the run sees it as its only device
            gpu = min(self.gpus, key=lambda g: sum(used == g for used in self.gpu_of.values()))
            on = f" on GPU {gpu}"
            self.gpu_of[run.name] = gpu
        log = self.logs / f"{run.name}.log"
        with open(log, "a") as fh:
            fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep {action}{on}: {shlex.join(command)}\n")
        proc = self.processes.start(command, log, gpu, run)
        self.running[run.name] = (run, proc, time.monotonic())
        self.echo(f"{action:<6} {run.name}{on}")

    def _reap(self) -> None:
        for name, (run, proc, started) in list(self.running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.running[name]
            self.gpu_of.pop(name, None)
            seconds = time.monotonic() - started
            count = f"[{self.total - len(self.todo) - len(self.running)}/{self.total}]"
            if (run.folder / "summary.json").is_file():  # written last: the run finished, whatever the exit
                self.done.add(name)
                self.durations.setdefault(run.group, []).append(seconds)
                self.echo(f"{count} done   {name}  {_result_text(run.folder)}  in {_duration(seconds)}  | {self._progress()}")
            elif self.signals:
                self.stopped.append(name)
                saved = "checkpoint kept" if (run.folder / "last.safetensors").is_file() else "no checkpoint yet: it will start over"
                self.echo(f"{count} stopped {name} ({saved})")
            else:
                self.failed[name] = _exit_reason(code)
                log = self.logs / f"{name}.log"
                tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                self.echo(f"{count} FAILED {name} ({self.failed[name]}) after {_duration(seconds)}; last lines of {log}:")
                self.echo("\n".join("    " + line for line in tail) + f"\n  | {self._progress()}")

    def _skip_orphans(self) -> None:
        """Skip runs waiting for a run that failed or was skipped (and, in turn, their own dependents)."""
        skipped = True
        while skipped:
            skipped = False
            for run in list(self.todo):
                bad = next((dep for dep in run.depends_on if dep in self.failed), None)
                if bad:
                    self.todo.remove(run)
                    self.failed[run.name] = f"skipped: it needs {bad}, which did not finish"
                    self.echo(f"skip   {run.name}: it needs {bad}, which did not finish ({self.failed[bad]})")
                    skipped = True

    def _progress(self) -> str:
        if not self.todo and not self.running:
            return "nothing left to run"
        eta = self._eta()
        return f"{len(self.running)} running, {len(self.todo)} queued" + (f", ETA {_duration(eta)}" if eta is not None else "")

    def _eta(self) -> float | None:
        """Remaining runs laid greedily onto the workers; a run is estimated by the mean duration of its
        group's finished runs (else of all finished runs)."""
        every = [s for group in self.durations.values() for s in group]
        if not every:
            return None

        def estimate(run: SweepRun) -> float:
            return statistics.fmean(self.durations.get(run.group) or every)

        now = time.monotonic()
        loads = [max(estimate(run) - (now - started), 0.0) for run, _, started in self.running.values()]
        loads += [0.0] * (self.workers - len(loads))
        for run in self.todo:
            loads[loads.index(min(loads))] += estimate(run)
        return max(loads)

    def _forward_signal(self) -> None:
        first = self.forwarded == 0
        self.forwarded = self.signals
        if first:
            self.echo(f"\nstopping: {len(self.running)} running run(s) checkpoint and stop; no new runs start (Ctrl-C again: stop at once)")
        for _, proc, _ in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)


def count_signals(scheduler: Scheduler):
    """SIGINT/SIGTERM only count up ``scheduler.signals``; the scheduler forwards them to the workers."""
    def count(signum, frame):
        scheduler.signals += 1

    return on_signals(count)
