"""Mean ± std over seeds of the real-test scores that `bench/cifar10_5k_teachers.sh` appends to a JSONL file.

Each line of the file is ``{"run": FOLDER, "best": EVAL, "last": EVAL}``, EVAL being `distillscope eval --json`
of the run's best-val and last checkpoint. Each row is NAME=GLOB: the runs whose folder matches GLOB (one per
seed, ``…-s{seed}``). Minutes per run come from each run's summary.json where it is there (for ``runs/X``, else
its record ``bench/records/X``). --figure PNG plots each row's seeds and mean at the last epoch and at best val.
Example:

    python bench/real_test_table.py runs/c10k-df/real_test.jsonl 'N(0,1) noise=runs/c10k-df/kd-noise/*' \
        'DeepInversion=runs/c10k-df/kd-deepinversion/*' --figure docs/figures/c10k_data_free.png
"""
import argparse
import fnmatch
import json
import re
import statistics
from pathlib import Path

from distillscope.report import mean_std


def read_scores(path: str) -> dict[str, dict]:
    """``{run folder: {"best": top-1, "last": top-1}}``; a run scored twice keeps its last line."""
    scores = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                scores[row["run"]] = {"best": float(row["best"]["top1"]), "last": float(row["last"]["top1"])}
            except (ValueError, KeyError, TypeError) as err:
                raise SystemExit(f"{path}:{number}: not a real-test line ({err}); expected {{\"run\", \"best\", \"last\"}}") from None
    return scores


def select(scores: dict[str, dict], spec: str) -> tuple[str, list[dict]]:
    """``(name, one {"seed", "best", "last", "minutes"} per run matching the row's glob, by seed)``."""
    name, pattern = spec.split("=", 1)
    runs = []
    for run in sorted(r for r in scores if fnmatch.fnmatch(r, pattern)):
        seed = re.search(r"-s(\d+)$", run)
        summary = Path(run) / "summary.json"
        if not summary.is_file() and Path(run).parts[:1] == ("runs",):  # kept by bench/keep_records.py
            summary = Path(__file__).resolve().parent / "records" / Path(*Path(run).parts[1:]) / "summary.json"
        seconds = json.loads(summary.read_text()).get("seconds") if summary.is_file() else None
        runs.append({"seed": int(seed.group(1)) if seed else None, **scores[run], "minutes": seconds / 60 if seconds else None})
    if not runs:
        raise SystemExit(f"no scored run matches {pattern!r} (row {name!r})")
    return name, sorted(runs, key=lambda r: (r["seed"] is None, r["seed"]))


def markdown(rows: list[tuple[str, list[dict]]]) -> str:
    lines = ["| training images | seeds | real test top-1 @ best synthetic val (%) | real test top-1 @ last (%) | minutes per run |",
             "|---|---|---|---|---|"]
    for name, runs in rows:
        minutes = [r["minutes"] for r in runs if r["minutes"] is not None]
        spent = (f"{statistics.mean(minutes):.1f}" + (f" ({min(minutes):.1f}–{max(minutes):.1f})" if len(minutes) > 1 else "")
                 if minutes else "n/a")
        seeds = ", ".join("?" if r["seed"] is None else str(r["seed"]) for r in runs)
        lines.append(f"| {name} | {seeds} | {mean_std([r['best'] for r in runs])} | {mean_std([r['last'] for r in runs])} | {spent} |")
    return "\n".join(lines)


def plot(path: str, rows: list[tuple[str, list[dict]]], chance: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2.5, 3.8))
    for i, (_, runs) in enumerate(rows):
        for offset, key, colour, label in ((-0.12, "last", "tab:blue", "last epoch"), (0.12, "best", "tab:orange", "best synthetic val")):
            values = [r[key] for r in runs]
            ax.scatter([i + offset] * len(values), values, color=colour, alpha=0.5, s=18, label=label if i == 0 else None)
            ax.hlines(statistics.mean(values), i + offset - 0.09, i + offset + 0.09, color=colour, lw=2)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(rows)), [name for name, _ in rows], fontsize=8)
    ax.set_ylabel("real test top-1 (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    if Path(path).exists():
        raise SystemExit(f"{path} exists; choose another --figure path (figures are never overwritten)")
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", help="the JSONL file of real-test scores")
    parser.add_argument("rows", nargs="+", metavar="NAME=GLOB", help="a table row: its name and the run folders it pools")
    parser.add_argument("--figure", help="PNG path for the per-seed figure")
    parser.add_argument("--chance", type=float, help="draw chance accuracy (%%) on the figure, e.g. 10")
    args = parser.parse_args(argv)
    for spec in args.rows:
        if "=" not in spec:
            raise SystemExit(f"row {spec!r}: write it as NAME=GLOB, e.g. 'DeepInversion=runs/c10k-df/kd-deepinversion/*'")
    scores = read_scores(args.scores)
    rows = [select(scores, spec) for spec in args.rows]
    print(markdown(rows))
    if args.figure:
        plot(args.figure, rows, args.chance)


if __name__ == "__main__":
    main()
