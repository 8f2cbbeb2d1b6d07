"""Keep the small records of finished runs in the repository, so tables outlive the machine that ran them.

    python bench/keep_records.py runs/c10k-df/kd-deepdream/resnet8_kd-s? runs/c10k-df/real_test.jsonl

A run folder under ``runs/`` keeps its summary.json, config.yaml, metrics.csv and, where present, sweep.json and
chain.json (no weights) in ``bench/records/<its path below runs/>``; a file is kept as it is. `distillscope table
bench/records/...` then rebuilds a results table on any machine. A record that exists with other contents is
never overwritten: the script stops and names it.
"""
import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("summary.json", "config.yaml", "metrics.csv", "sweep.json", "chain.json")


def records_of(path: Path) -> list[Path]:
    """The files of ``path`` worth keeping: a run folder's small records, or the file itself."""
    if path.is_file():
        return [path]
    if not (path / "summary.json").is_file():
        raise SystemExit(f"'{path}' has no summary.json; give finished run folders (or files) to keep")
    return [path / name for name in RUN_FILES if (path / name).is_file()]


def keep(paths: list[Path], runs: Path, records: Path) -> list[Path]:
    """Copy the records of ``paths`` (below ``runs``) to the same place below ``records``; returns what was written."""
    plan = []
    for path in paths:
        try:
            relative = path.resolve().relative_to(runs.resolve())
        except ValueError:
            raise SystemExit(f"'{path}' is not below '{runs}'; records keep their place below the runs folder") from None
        for source in records_of(path):
            target = records / relative / source.relative_to(path) if path.is_dir() else records / relative
            if target.exists() and target.read_bytes() != source.read_bytes():
                raise SystemExit(f"'{target}' exists with other contents; move it away first (records are never overwritten)")
            plan.append((source, target))
    written = []
    for source, target in plan:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            written.append(target)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="finished run folders or files below --runs")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the runs folder (default runs)")
    parser.add_argument("--records", type=Path, default=ROOT / "bench" / "records", help="where records go (default bench/records)")
    args = parser.parse_args(argv)
    written = keep(args.paths, args.runs, args.records)
    print(f"kept {len(written)} new file(s) in {args.records}", file=sys.stderr)


if __name__ == "__main__":
    main()
