"""``distillscope sweep`` and ``table``."""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import DistillscopeError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sweep",
                              help="train configs × grid points × seeds, N at a time; re-run: finished runs skipped, others resumed")
    p.add_argument("configs", nargs="*", help="YAML recipes; run folders are OUT/<file stem>[-KEY=VALUE…]-s<seed>")
    p.add_argument("--seeds", default="0", help="seeds, e.g. 0,1,2 or 0-4; {seed} in a --set/--grid value is filled per run")
    p.add_argument("--grid", action="append", default=[], metavar="[CONFIG:]KEY=V1,V2",
                   help="one axis of the grid, e.g. --grid method.T=2,4,8 (CONFIG: the recipe's file stem, to give it to one recipe only)")
    p.add_argument("--set", action="append", default=[], metavar="[CONFIG:]KEY=VALUE",
                   help="override for every run (or one recipe's), e.g. --set 'kd:teacher.checkpoint=runs/t-s{seed}'")
    p.add_argument("--workers", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores // workers)")
    p.add_argument("--gpus",
                   help="GPU indices, e.g. 0 or 0,1: each run gets the least busy one (--workers 4 --gpus 0: four runs share GPU 0)")
    p.add_argument("--out", help="folder for the run folders, logs/ and table.md/table.csv")
    p.add_argument("--executor", choices=["processes", "slurm", "submitit-local"], default="processes",
                   help="where runs train: local processes (default), SLURM jobs through submitit (students afterok their teacher's job; "
                        "the command returns once submitted), or submitit's local executor")
    p.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit SLURM parameter, e.g. --slurm partition=gpu --slurm gpus_per_node=1 --slurm timeout_min=120; "
                        "nodes=2 trains each run with torchrun over two nodes")
    p.add_argument("--status", metavar="OUT",
                   help="list each run of the sweep folder OUT: finished, running, queued, failed (log) or not started")
    p.add_argument("--dry-run", action="store_true", help="print the runs and their commands, run nothing")
    p.add_argument("--baseline", metavar="ROW", help="compare every row of the final table to this one (see table --baseline)")
    p.set_defaults(func=_cmd_sweep)

    p = subparsers.add_parser("table", help="mean ± std over seeds of finished runs, by config and grid point")
    p.add_argument("runs", nargs="+", help="run folders or sweep folders; runs sharing a config name and grid point are seeds of one row")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV (a new file)")
    p.add_argument("--figure", metavar="FILE",
                   help="also draw the rows as a PNG: each seed, mean ± std at the last epoch, mean at best val (a new file)")
    p.add_argument("--baseline", metavar="ROW",
                   help="a row's run name (with its grid point where needed, e.g. 'kd method.T=4'): each other row's test top-1 "
                        "difference to it, 95%% CI, p-value and minimum detectable effect; "
                        "paired t where seeds share data and teacher, else Welch")
    p.set_defaults(func=_cmd_table)


def _cmd_sweep(args) -> int:
    from ..sweep import SweepFailed, SweepInterrupted, run_sweep

    if args.status:
        from ..sweep.status import format_status, sweep_status

        print(format_status(args.status, sweep_status(args.status)))
        return 0
    if not args.configs or not args.out:
        raise DistillscopeError("sweep: give config files and --out FOLDER (or --status FOLDER to list a sweep's runs)")
    try:
        run_sweep(args.configs, args.seeds, args.grid, args.set, args.out, args.workers, args.threads, args.dry_run,
                  imports=args.imports + args.command_imports, gpus=args.gpus, baseline=args.baseline, executor=args.executor,
                  slurm=args.slurm)
    except SweepInterrupted as err:
        print(f"distillscope: {err}", file=sys.stderr)
        return 130
    except SweepFailed as err:
        print(f"distillscope: error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_table(args) -> None:
    from ..report import find_runs, format_csv, format_markdown, read_summaries, table_rows

    finished, unfinished = find_runs(args.runs)
    if not finished:
        raise DistillscopeError(f"no finished runs in {' '.join(args.runs)} (unfinished: {', '.join(p.name for p in unfinished)})")
    csv_path, figure_path = (Path(p) if p else None for p in (args.csv, args.figure))
    for option, path in (("--csv", csv_path), ("--figure", figure_path)):
        if path and path.exists():
            raise DistillscopeError(f"{option} '{path}' already exists; choose another file name or remove it")
    rows = table_rows(read_summaries(finished), baseline=args.baseline)
    print(format_markdown(rows))
    if unfinished:
        print(f"\nNot finished, left out: {', '.join(map(str, unfinished))}")
    if csv_path:
        csv_path.write_text(format_csv(rows))
        print(f"\nCSV: {csv_path}")
    if figure_path:
        from ..report.figures import results_chart

        figure_path.write_bytes(results_chart(rows, "test top-1 over seeds; precision "
                                              + ", ".join(sorted({row["precision"] for row in rows}))))
        print(f"\nFigure: {figure_path}")
