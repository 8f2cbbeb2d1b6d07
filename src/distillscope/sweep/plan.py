"""``distillscope sweep``: configs × grid points × seeds, trained as parallel subprocesses.

Each run is ``python -m distillscope.cli train`` in its own process and session, ``workers`` at a time
with ``run.threads`` chosen so that workers × threads ≤ cores. Run folders are
``OUT/<config file stem>[-<key>=<value>…]-s<seed>``; each holds a ``sweep.json`` recording what the sweep
asked (config, grid point, seed, the ``--set`` values as written). Re-running the same command skips
finished runs (``summary.json``) and resumes the others. A run whose ``teacher.checkpoint`` (or
``student.checkpoint``) is another run of the sweep starts once that run has finished; if it failed, the
run is skipped. SIGINT/SIGTERM are forwarded once to every worker, which checkpoints and stops.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .config import Config, from_dict, load_config
from .engine.trainer import RUN_ONLY_KEYS
from .errors import DistillscopeError
from .methods.registry import METHODS
from .report import format_csv, format_markdown, read_summaries, table_rows
from .report.tables import differing_keys, flatten

TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
POLL_SECONDS = 0.2
LOG_TAIL_LINES = 15


class SweepInterrupted(DistillscopeError):
    """Raised after SIGINT/SIGTERM, once every worker has checkpointed and exited."""


class SweepFailed(DistillscopeError):
    """Raised at the end when runs failed or were skipped; ``summaries`` holds the finished runs."""

    def __init__(self, message: str, summaries: list[dict]):
        super().__init__(message)
        self.summaries = summaries


@dataclass
class SweepRun:
    """One training run of a sweep: a config file, a grid point and a seed."""

    name: str
    config: Path
    seed: int
    grid: dict[str, str]
    sets: list[str]  # the --set values for this config, as written (templates unfilled)
    templates: dict[str, str]  # KEY -> value as written, for values holding a {…} template
    overrides: list[str]  # KEY=VALUE as the run gets them, templates filled
    folder: Path
    depends_on: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)  # --import modules, passed on to the run's process

    @property
    def group(self) -> str:
        """The run's name without its seed: runs of one group should take about as long."""
        return self.name.rsplit("-s", 1)[0]

    @property
    def state(self) -> str:
        if (self.folder / "summary.json").is_file():
            return "finished"
        return "resume" if (self.folder / "config.yaml").is_file() else "new"

    def command(self, threads: int) -> list[str]:
        train = [sys.executable, "-m", "distillscope.cli", *(arg for name in self.imports for arg in ("--import", name)), "train"]
        run_only = ["--set", f"run.threads={threads}", "--set", "run.progress=false"]
        if self.state == "resume":
            return [*train, "--resume", "--out", str(self.folder), *run_only]
        sets = [arg for item in self.overrides for arg in ("--set", item)]
        return [*train, str(self.config), *sets, *run_only, "--out", str(self.folder)]

    def write_record(self) -> None:
        """``sweep.json``: what the sweep asked of this run; ``table`` reads ``grid`` and ``templates``."""
        record = {
            "config": str(self.config), "grid": self.grid, "seed": self.seed,
            "set": self.sets, "templates": self.templates, "overrides": self.overrides,
        }
        (self.folder / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------------------- planning
def parse_seeds(seeds) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` (inclusive), an int or a list of ints."""
    if isinstance(seeds, int):
        return [seeds]
    text = seeds if isinstance(seeds, str) else ",".join(map(str, seeds))
    out = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or int(match[2] or match[1]) < int(match[1]):
            raise DistillscopeError(f"--seeds '{text}': expected seeds like 0,1,2 or a range like 0-4")
        out += range(int(match[1]), int(match[2] or match[1]) + 1)
    if len(set(out)) != len(out):
        raise DistillscopeError(f"--seeds '{text}' names a seed twice")
    return out


def split_values(text: str) -> list[str]:
    """Grid values: commas separate them except inside brackets (``2,4,8``; ``[30,60],[40,80]``)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return values + [current.strip()]


def _as_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _split_target(target: str, flag: str, example: str) -> tuple[str | None, str]:
    """``[CONFIG:]KEY`` -> (CONFIG or None, KEY)."""
    scope, _, key = target.rpartition(":")
    if not key or key == "seed" or key == "run.threads":
        hints = {"seed": "give seeds with --seeds", "run.threads": "give threads per run with --threads"}
        hint = hints.get(key, f"expected [CONFIG:]KEY=VALUE, e.g. {flag} {example}")
        raise DistillscopeError(f"{flag} '{target}': {hint}")
    return scope or None, key


def _parse_sets(sets) -> list[tuple[str | None, str, str]]:
    if not isinstance(sets, dict) and any("=" not in item for item in sets):
        bad = next(item for item in sets if "=" not in item)
        raise DistillscopeError(f"--set '{bad}': expected [CONFIG:]KEY=VALUE, e.g. --set optim.lr=0.1")
    items = sets.items() if isinstance(sets, dict) else [item.partition("=")[::2] for item in sets]
    parsed = []
    for target, value in items:
        parsed.append((*_split_target(target, "--set", "optim.lr=0.1"), _as_text(value)))
    return parsed


def _parse_grid(grid) -> list[tuple[str | None, str, list[str]]]:
    if isinstance(grid, dict):
        items = [(target, [_as_text(v) for v in values]) for target, values in grid.items()]
    else:
        bad = [item for item in grid if "=" not in item]
        if bad:
            raise DistillscopeError(f"--grid '{bad[0]}': expected [CONFIG:]KEY=V1,V2,…, e.g. --grid method.T=2,4,8")
        items = [(item.partition("=")[0], split_values(item.partition("=")[2])) for item in grid]
    parsed = []
    for target, values in items:
        scope, key = _split_target(target, "--grid", "method.T=2,4,8")
        if not values or "" in values or len(set(values)) != len(values):
            raise DistillscopeError(f"--grid '{target}': give distinct, non-empty values, e.g. --grid {key}=2,4,8")
        parsed.append((scope, key, values))
    return parsed


def _short_names(keys: list[str]) -> dict[str, str]:
    """Grid keys as they appear in folder names: the last part (``T`` for ``method.T``) unless ambiguous."""
    last = Counter(key.rsplit(".", 1)[-1] for key in keys)
    return {key: key.rsplit(".", 1)[-1] if last[key.rsplit(".", 1)[-1]] == 1 else key for key in keys}


def _folder_safe(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", value).strip("_") or "_"


def _fill(key: str, value: str, names: dict[str, str]) -> str:
    def replace(match):
        if match[1] not in names:
            known = ", ".join("{" + n + "}" for n in names)
            raise DistillscopeError(f"'{key}={value}': unknown template {{{match[1]}}}; known here: {known}")
        return names[match[1]]

    return TEMPLATE.sub(replace, value)


def plan_sweep(configs: list[str | Path], seeds="0", grid=(), sets=(), out: str | Path = "runs/sweep") -> list[SweepRun]:
    """Every run of the sweep, checked: configs validate, checkpoints exist or are runs of the sweep,
    existing run folders hold the same config. ``grid``/``sets``: ``["[CONFIG:]KEY=V1,V2", …]`` or dicts."""
    out = Path(out)
    if (out / "config.yaml").is_file():
        raise DistillscopeError(f"--out '{out}' is a run folder; give a folder for the sweep's run folders, e.g. runs/my-sweep")
    paths: dict[str, Path] = {}
    for config in map(Path, configs):
        if not config.is_file():
            raise DistillscopeError(f"config file '{config}' does not exist")
        if config.stem in paths:
            raise DistillscopeError(
                f"configs '{paths[config.stem]}' and '{config}' are both named '{config.stem}'; run folders are named after the file, so rename one"
            )
        paths[config.stem] = config
    if not paths:
        raise DistillscopeError("sweep: give at least one config file")
    seeds, set_items, grid_items = parse_seeds(seeds), _parse_sets(sets), _parse_grid(grid)
    for scope, key, _ in set_items + grid_items:
        if scope is not None and scope not in paths:
            raise DistillscopeError(f"'{scope}:{key}' names no config of this sweep; configs: {', '.join(paths)}")

    runs = []
    for stem, path in paths.items():
        axes = [(key, values) for scope, key, values in grid_items if scope in (None, stem)]
        keys = [key for key, _ in axes]
        if len(set(keys)) != len(keys):
            raise DistillscopeError(f"config '{stem}': a --grid key is given twice ({', '.join(keys)})")
        short = _short_names(keys)
        assigned_by_set = [(key, value) for scope, key, value in set_items if scope in (None, stem)]
        for point in itertools.product(*(values for _, values in axes)):
            grid_point = dict(zip(keys, point))
            label = "".join(f"-{short[k]}={_folder_safe(v)}" for k, v in grid_point.items())
            assigned = assigned_by_set + list(grid_point.items())
            for seed in seeds:
                names = {"seed": str(seed), **grid_point, **{short[k]: v for k, v in grid_point.items()}}
                runs.append(SweepRun(
                    name=f"{stem}{label}-s{seed}", config=path, seed=seed, grid=grid_point,
                    sets=[f"{k}={v}" for k, v in assigned_by_set], templates={k: v for k, v in assigned if TEMPLATE.search(v)},
                    overrides=[f"{k}={_fill(k, v, names)}" for k, v in assigned] + [f"seed={seed}"], folder=out / f"{stem}{label}-s{seed}",
                ))
    clashes = [name for name, n in Counter(r.name for r in runs).items() if n > 1]
    if clashes:
        raise DistillscopeError(f"two grid points give the same run folder '{clashes[0]}'; use grid values differing in letters or digits")
    _check_runs(runs)
    return runs


def _comparable_config(config: dict) -> dict:
    flat = flatten(config)
    return {k: v for k, v in flat.items() if k not in {f"run.{key}" for key in RUN_ONLY_KEYS}}


def _check_runs(runs: list[SweepRun]) -> None:
    by_folder = {run.folder.resolve(): run for run in runs}
    for run in runs:
        try:
            config = load_config(run.config, run.overrides)
        except DistillscopeError as err:
            raise DistillscopeError(f"run {run.name}: {err}") from None
        if config.teacher and config.teacher.checkpoint and not METHODS.get(config.method["name"]).needs_teacher:
            raise DistillscopeError(
                f"run {run.name}: method '{config.method['name']}' uses no teacher, yet teacher.checkpoint is set; "
                "give it to the distilling configs only: --set STEM:teacher.checkpoint=… (STEM: the recipe's file name without .yaml)"
            )
        for role in ("teacher", "student"):
            model = getattr(config, role)
            if model is None or not model.checkpoint:
                continue
            path = Path(model.checkpoint)
            target = by_folder.get((path.parent if path.suffix == ".safetensors" else path).resolve())
            if target is run:
                raise DistillscopeError(f"run {run.name}: {role}.checkpoint '{path}' is the run's own folder")
            if target is not None:
                run.depends_on.append(target.name)
            elif not path.exists():
                raise DistillscopeError(f"run {run.name}: {role}.checkpoint '{path}' does not exist and is not a run of this sweep")
        _check_existing_folder(run, config)
    _check_no_cycle(runs)


def _check_existing_folder(run: SweepRun, config: Config) -> None:
    """A folder that already holds a run must hold this very run (else resuming would mix two setups)."""
    saved = run.folder / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = from_dict(Config, yaml.safe_load(saved.read_text()) or {}).to_dict()
    except (DistillscopeError, yaml.YAMLError) as err:
        raise DistillscopeError(f"run folder '{run.folder}': its config.yaml cannot be read ({err}); move that folder away") from None
    differ = differing_keys([_comparable_config(old), _comparable_config(config.to_dict())])
    if differ:
        raise DistillscopeError(
            f"run folder '{run.folder}' holds a run with a different config ({', '.join(differ)}); use another --out, or move that folder away"
        )


def _check_no_cycle(runs: list[SweepRun]) -> None:
    waiting = {run.name: set(run.depends_on) for run in runs}
    ready: set[str] = set()
    while waiting:
        now = {name for name, deps in waiting.items() if deps <= ready}
        if not now:
            raise DistillscopeError(f"runs wait for each other in a cycle: {', '.join(waiting)}")
        ready |= now
        waiting = {name: deps for name, deps in waiting.items() if name not in now}


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


# ----------------------------------------------------------------------------------------- running
def _print(text: str) -> None:
    print(text, flush=True)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _worker_env(threads: int) -> dict[str, str]:
    """The sweep's environment, with this very distillscope first on the path and threads capped."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    package_parent = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


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


class _Scheduler:
    """Starts runs (those others wait for first), reaps them, reports, forwards signals."""

    def __init__(self, runs: list[SweepRun], out: Path, workers: int, threads: int, pass_fds: tuple, echo, gpus: list[str] = ()):
        needed = {dep for run in runs for dep in run.depends_on}
        self.todo = sorted((r for r in runs if r.state != "finished"), key=lambda r: r.name not in needed)
        self.total = len(self.todo)
        self.done = {r.name for r in runs if r.state == "finished"}
        self.failed: dict[str, str] = {}  # name -> why
        self.stopped: list[str] = []
        self.running: dict[str, tuple[SweepRun, subprocess.Popen, float]] = {}
        self.durations: dict[str, list[float]] = {}  # group -> seconds, runs finished in this sweep
        self.out, self.logs, self.workers, self.threads, self.pass_fds, self.echo = out, out / "logs", workers, threads, pass_fds, echo
        self.env = _worker_env(threads)
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
        env, on = self.env, ""
        if self.gpus:  # the GPU running the fewest runs; the run sees it as its only device
            gpu = min(self.gpus, key=lambda g: sum(used == g for used in self.gpu_of.values()))
            env, on = dict(self.env, CUDA_VISIBLE_DEVICES=gpu), f" on GPU {gpu}"
            self.gpu_of[run.name] = gpu
        with open(self.logs / f"{run.name}.log", "a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} sweep {action}{on}: {shlex.join(command)}\n")
            log.flush()
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, pass_fds=self.pass_fds,
            )
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


@contextmanager
def _count_signals(scheduler: _Scheduler):
    """SIGINT/SIGTERM only count up ``scheduler.signals``; the scheduler forwards them to the workers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def count(signum, frame):
        scheduler.signals += 1

    for sig in previous:
        signal.signal(sig, count)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
        raise DistillscopeError(f"another sweep, or a run it started, is still working in '{out}'; wait for it or stop it, then re-run") from None
    try:
        yield (handle.fileno(),)
    finally:
        handle.close()


def run_sweep(configs: list[str | Path], seeds="0", grid=(), sets=(), out: str | Path = "runs/sweep", workers: int = 1,
              threads: int | None = None, dry_run: bool = False, echo=_print, imports: list[str] = (), gpus: str | None = None,
              baseline: str | None = None) -> list[dict]:
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
    """
    out = Path(out)
    gpu_ids = parse_gpus(gpus)
    runs = plan_sweep(configs, seeds, grid, sets, out)
    for run in runs:
        run.imports = list(imports)
    cores = available_cores()
    threads = split_threads(workers, cores, threads)
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
        scheduler = _Scheduler(runs, out, workers, threads, pass_fds, echo, gpu_ids)
        with _count_signals(scheduler):
            scheduler.run()
    if scheduler.signals and (scheduler.todo or scheduler.stopped):
        raise SweepInterrupted(
            f"sweep interrupted: {len(scheduler.stopped)} run(s) stopped, {len(scheduler.todo)} not started; re-run the same command to resume"
        )
    finished = [run for run in runs if run.state == "finished"]
    for run in finished:  # a run trained before, outside the sweep, with the very config it asks for
        if not (run.folder / "sweep.json").is_file():
            run.write_record()
    summaries = read_summaries([run.folder for run in finished])
    if summaries:
        try:
            rows = table_rows(summaries, baseline)
        except DistillscopeError as err:  # e.g. the baseline's runs failed: still write the table
            echo(f"warning: {err}; table written without comparisons")
            rows = table_rows(summaries)
        markdown = format_markdown(rows)
        (out / "table.md").write_text(markdown + "\n")
        (out / "table.csv").write_text(format_csv(rows))
        echo(f"\n{markdown}\n\n(also in {out / 'table.md'} and {out / 'table.csv'})")
    if scheduler.failed:
        why = "; ".join(f"{name} ({reason})" for name, reason in scheduler.failed.items())
        raise SweepFailed(f"{len(scheduler.failed)} of {len(runs)} runs did not finish: {why}; logs in {out / 'logs'}", summaries)
    return summaries
