"""Print the grid point a sweep chose on validation for one recipe (never test; ties: the smallest values).

    python bench/chosen_on_val.py OUT RECIPE [--seeds 0,1] [--point]

Only the recipe's runs on ``--seeds`` count (default 0); grid points are compared on their mean best validation
top-1 over the seeds they share (``distillscope table``'s "chosen on val"). Prints the chosen value of a one-axis
grid (e.g. ``0.7``), or with ``--point`` every axis as ``KEY=VALUE`` separated by spaces, ready for ``--grid``.
"""
import argparse

from distillscope.report.tables import find_runs, read_summaries, table_rows
from distillscope.sweep import parse_seeds


def chosen_point(out: str, recipe: str, seeds: list[int]) -> dict[str, str]:
    """The chosen grid point of ``recipe``'s runs in ``out`` on ``seeds``, as {full key: value}."""
    suffixes = tuple(f"-s{seed}" for seed in seeds)
    runs = [r for r in find_runs([out])[0] if r.name.startswith(recipe + "-") and r.name.endswith(suffixes)]
    if not runs:
        raise SystemExit(f"no finished runs of '{recipe}' on seeds {seeds} in '{out}'")
    summaries = read_summaries(runs)
    chosen = {row["grid point"] for row in table_rows(summaries) if row["chosen on val"]}
    points = [s["sweep"]["grid"] for s in summaries if " ".join(f"{k}={v}" for k, v in s["sweep"]["grid"].items()) in chosen]
    return min(points, key=lambda point: [float(v) for v in point.values()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("recipe")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--point", action="store_true", help="print every axis as KEY=VALUE")
    args = parser.parse_args()
    point = chosen_point(args.out, args.recipe, parse_seeds(args.seeds))
    print(" ".join(f"{k}={v}" for k, v in point.items()) if args.point else next(iter(point.values())))


if __name__ == "__main__":
    main()
