"""``distillscope sweep --status OUT``: each run of a sweep folder, finished / running / queued / failed / not started.

The runs are those the last sweep into OUT planned (``OUT/plan.json``) and any other run folder in OUT. A run is
finished when its folder has ``summary.json``; otherwise its ``job.json`` says where it runs: a local process or
submitit-local job (alive if its process still runs on this machine) or a SLURM job (``squeue``, then ``sacct``).
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

from ..errors import DistillscopeError
from .executors import QUEUED, _running, local_alive, read_job, slurm_states

PLAN = "plan.json"


def write_plan(out: Path, runs, executor: str) -> None:
    """``OUT/plan.json``: the sweep's runs, its executor and, for local runs, the sweep's process (while it works,
    runs without a process are queued)."""
    import os

    record = {"executor": executor, "runs": [{"name": r.name, "folder": str(r.folder), "after": r.depends_on} for r in runs]}
    if executor != "slurm":  # a SLURM sweep's command ends once its jobs are submitted
        record.update(host=socket.gethostname(), pid=os.getpid())
    (out / PLAN).write_text(json.dumps(record, indent=2) + "\n")


def sweep_status(out: str | Path) -> list[tuple[str, str, str]]:
    """``[(run name, state, detail)]``; state is ``finished``, ``running``, ``queued``, ``failed`` or ``not started``."""
    out = Path(out)
    if not out.is_dir():
        raise DistillscopeError(f"--status '{out}': no such folder")
    try:
        plan = json.loads((out / PLAN).read_text())
    except (OSError, ValueError):
        plan = {"runs": []}
    runs = {r["name"]: (Path(r["folder"]), r.get("after", [])) for r in plan["runs"]}
    for folder in sorted(out.iterdir()):
        if folder.name not in runs and ((folder / "config.yaml").is_file() or (folder / "job.json").is_file()):
            runs[folder.name] = (folder, [])
    if not runs:
        raise DistillscopeError(f"--status '{out}': no runs here (no {PLAN}, no run folders)")
    records = {name: read_job(folder) for name, (folder, _) in runs.items() if not (folder / "summary.json").is_file()}
    slurm = slurm_states([r["job_id"] for r in records.values() if r and r.get("executor") == "slurm"])
    sweep_alive = plan.get("pid") is not None and local_alive(plan)
    rows = []
    for name, (folder, after) in runs.items():
        log = out / "logs" / f"{name}.log"
        if (folder / "summary.json").is_file():
            rows.append((name, "finished", _result(folder)))
            continue
        record = records[name]
        if record is None:
            waiting = f" (after {', '.join(after)})" if after else ""
            if sweep_alive:
                rows.append((name, "queued", "waiting for a worker" + waiting))
            elif log.is_file():
                rows.append((name, "failed", f"log {log}"))
            else:
                rows.append((name, "not started", waiting.strip(" ()")))
        elif record.get("executor") == "slurm":
            state = slurm[record["job_id"]]
            job = f"job {record['job_id']}"
            if state in QUEUED:
                rows.append((name, "queued", job + (f" (after job(s) {', '.join(record['after'])})" if record.get("after") else "")))
            elif _running(state):
                rows.append((name, "running", job))
            else:
                rows.append((name, "failed", f"{job} {state}; log {log}"))
        elif local_alive(record):
            rows.append((name, "running", f"job {record['job_id']}" if "job_id" in record else f"pid {record['pid']}"))
        elif sweep_alive:
            rows.append((name, "queued", "waiting for a worker (it resumes)"))
        else:
            rows.append((name, "failed", f"log {log}" + _checkpoint(folder)))
    return rows


def _result(folder: Path) -> str:
    try:
        last = json.loads((folder / "summary.json").read_text())["last"]
        return f"test top-1 {last['test/top1']:.2f}% (last epoch)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _checkpoint(folder: Path) -> str:
    if not (folder / "last.safetensors").is_file():
        return ""
    try:
        epochs = len((folder / "metrics.jsonl").read_text().splitlines())
    except OSError:
        epochs = 0
    return f"; checkpoint after epoch {epochs}: a re-run resumes it"


def format_status(out: str | Path, rows: list[tuple[str, str, str]]) -> str:
    counts = {state: sum(row[1] == state for row in rows) for state in ("finished", "running", "queued", "failed", "not started")}
    head = f"sweep {out}: {len(rows)} runs, " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    width = max(len(name) for name, _, _ in rows)
    return "\n".join([head] + [f"{state:<12} {name:<{width}}  {detail}".rstrip() for name, state, detail in rows])
