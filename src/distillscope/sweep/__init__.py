"""``distillscope sweep``: configs × grid points × seeds, trained as parallel subprocesses.

Each run is ``python -m distillscope.cli train`` in its own process and session, ``workers`` at a time
with ``run.threads`` chosen so that workers × threads ≤ cores. Run folders are
``OUT/<config file stem>[-<key>=<value>…]-s<seed>``; each holds a ``sweep.json`` recording what the sweep
asked (config, grid point, seed, the ``--set`` values as written). Re-running the same command skips
finished runs (``summary.json``) and resumes the others. A run whose ``teacher.checkpoint`` (or
``student.checkpoint``) is another run of the sweep starts once that run has finished; if it failed, the
run is skipped. SIGINT/SIGTERM are forwarded once to every worker, which checkpoints and stops.

Modules: ``plan`` (the runs, their folders and overrides), ``run`` (:func:`run_sweep`), ``scheduler`` (the worker
pool, signals, logs), ``processes`` (how a run is started: a local process), ``executors`` (or a submitit job: on
SLURM, or submitit's local executor), ``status`` (``sweep --status``), ``table`` (``table.md``/``table.csv``).
"""
from .plan import SweepRun, parse_seeds, plan_sweep, split_values
from .run import SweepFailed, SweepInterrupted, available_cores, parse_gpus, run_sweep, split_threads

__all__ = [
    "SweepFailed", "SweepInterrupted", "SweepRun", "available_cores", "parse_gpus", "parse_seeds", "plan_sweep", "run_sweep",
    "split_threads", "split_values",
]
