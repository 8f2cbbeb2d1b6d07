"""Runs as local processes (``sweep --executor processes``, the default): :meth:`LocalProcesses.start` launches a
run's command and returns its handle (``subprocess.Popen``), whose ``poll()`` gives the exit code once it ended and
whose ``send_signal``/``wait`` stop it. ``executors.SubmititLocal`` has the same ``start`` for submitit jobs."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path


class LocalProcesses:
    """Each run in its own process and session on this machine, ``threads`` torch threads each; ``pass_fds``
    stay open in every run (the sweep's lock)."""

    def __init__(self, threads: int, pass_fds: tuple = ()):
        self.env = _worker_env(threads)
        self.pass_fds = pass_fds

    def start(self, command: list[str], log: Path, gpu: str | None = None, run=None) -> subprocess.Popen:
        """Start ``command``, its output appended to ``log``; ``gpu``: the only device the run sees. With ``run``
        (a ``SweepRun``), its process id is written to ``job.json`` in the run folder (``sweep --status`` reads it)."""
        env = self.env if gpu is None else dict(self.env, CUDA_VISIBLE_DEVICES=gpu)
        with open(log, "a") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                pass_fds=self.pass_fds,
            )
        if run is not None and getattr(proc, "pid", None):
            record = {"executor": "processes", "pid": proc.pid, "host": socket.gethostname(), "match": str(run.folder), "command": command}
            (run.folder / "job.json").write_text(json.dumps(record, indent=2) + "\n")
        return proc


def _worker_env(threads: int) -> dict[str, str]:
    """The sweep's environment, with this very distillscope first on the path and threads capped."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env
