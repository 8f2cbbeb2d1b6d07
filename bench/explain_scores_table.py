"""Mean ± std over seeds of FSS/RS scores from several `distillscope explain` folders, as a Markdown table.

Each column is NAME=GLOB:REFERENCE:STATISTIC[+GLOB:REFERENCE:STATISTIC…]: the pooled value of STATISTIC (a
`scores.csv` statistic: fss, rs_student, rs_reference, rs_student_given_reference, rs_reference_given_student)
against REFERENCE (teacher or base) in every folder matching GLOB, one folder per seed; parts joined by + add
more seeds to the column. Rows: layer × condition. --figure PNG also plots each column over the layers (mean ±
std), one panel per condition. Example:

    python bench/explain_scores_table.py 'FSS KD-T=runs/c10k-explain/scores-s?:teacher:fss' \
        'RS KD=runs/c10k-explain/scores-s?:teacher:rs_student' --condition clean
"""
import argparse
import csv
import glob
import statistics


def read_pooled(folder: str) -> dict[tuple[str, str, str, str], float]:
    """``{(reference, layer, condition, statistic): pooled value}`` of one explain folder."""
    with open(f"{folder}/scores.csv") as f:
        return {(r["reference"], r["layer"], r["condition"], r["statistic"]): float(r["pooled"]) for r in csv.DictReader(f)}


def parse_column(spec: str) -> tuple[str, list[dict[tuple[str, str], float]]]:
    """``(name, one {(layer, condition): value} per seed)``."""
    name, parts = spec.split("=", 1)
    seeds = []
    for part in parts.split("+"):
        pattern, reference, statistic = part.rsplit(":", 2)
        folders = sorted(glob.glob(pattern))
        if not folders:
            raise SystemExit(f"no explain folder matches {pattern!r} (column {name!r})")
        for folder in folders:
            scores = read_pooled(folder)
            seeds.append({(k[1], k[2]): v for k, v in scores.items() if k[0] == reference and k[3] == statistic})
            if not seeds[-1]:
                raise SystemExit(f"{folder}/scores.csv has no {statistic!r} against {reference!r} (column {name!r})")
    return f"{name} (n={len(seeds)})", seeds


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def plot(path: str, columns: list, layers: list[str], conditions: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(conditions), figsize=(5 * len(conditions), 3.8), sharey=True, squeeze=False)
    for ax, condition in zip(axes[0], conditions):
        for name, seeds in columns:
            values = [[s[(layer, condition)] for s in seeds] for layer in layers]
            errors = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.errorbar(layers, [statistics.mean(v) for v in values], yerr=errors, marker="o", capsize=3, label=name)
        ax.set_title(f"{condition} inputs")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("distance correlation (pooled)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=min(len(columns), 3), fontsize=8)
    fig.tight_layout(rect=(0, 0.06 * ((len(columns) + 2) // 3) + 0.02, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("columns", nargs="+", help="NAME=GLOB:REFERENCE:STATISTIC[+…]")
    parser.add_argument("--condition", action="append", help="clean and/or lerf (default both)")
    parser.add_argument("--figure", help="also write this PNG")
    args = parser.parse_args()
    columns = [parse_column(spec) for spec in args.columns]
    conditions = args.condition or ["clean", "lerf"]
    layers = sorted({layer for _, seeds in columns for s in seeds for layer, _ in s})
    print("| layer | input | " + " | ".join(name for name, _ in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for layer in layers:
        for condition in conditions:
            cells = [mean_std([s[(layer, condition)] for s in seeds]) for _, seeds in columns]
            print(f"| {layer} | {condition} | " + " | ".join(cells) + " |")
    if args.figure:
        plot(args.figure, columns, layers, conditions)


if __name__ == "__main__":
    main()
