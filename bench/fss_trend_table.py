"""FSS by depth under each scoring setting (issue 26 item 6), from `explain` records: one row per setting and reference.

    python bench/fss_trend_table.py bench/records/c10k-fss

Each record folder is one `explain` (bench/cifar10_5k_fss_settings.sh) with its settings.json and scores.csv. FSS is
shown as paper 002's Eq. 8 writes it, the mean of the per-batch scores, and pooled over all images (in brackets), on
clean images, at every layer; "trend" compares the first and last layer of the mean.
"""
import csv
import json
import sys
from pathlib import Path


def clean_fss(folder: Path) -> tuple[dict, list[dict]]:
    """One `explain` record's settings and its FSS rows on clean images (every reference, layers in order)."""
    settings = json.loads((folder / "settings.json").read_text())
    scores = [r for r in csv.DictReader((folder / "scores.csv").open()) if r["statistic"] == "fss" and r["condition"] == "clean"]
    return settings, scores


def trend(first: float, last: float) -> str:
    """rises / falls / flat, from the first to the last layer's mean FSS (0.01 apart or less is flat)."""
    return "rises" if last > first + 0.01 else "falls" if last < first - 0.01 else "flat"


def rows(folder: Path) -> list[str]:
    settings, scores = clean_fss(folder)
    lines = []
    for reference in dict.fromkeys(r["reference"] for r in scores):
        ours = [r for r in scores if r["reference"] == reference]
        cells = " | ".join(f"{float(r['mean']):.3f} ({float(r['pooled']):.3f})" for r in ours)
        lines.append(f"| {settings['batch_size']} | {settings['estimator']} | {reference} | {cells} | "
                     f"{trend(float(ours[0]['mean']), float(ours[-1]['mean']))} |")
    return lines


def main(root: str) -> None:
    folders = sorted((p for p in Path(root).iterdir() if (p / "scores.csv").is_file()),
                     key=lambda p: (json.loads((p / "settings.json").read_text())["estimator"] != "unbiased",
                                    json.loads((p / "settings.json").read_text())["batch_size"]))
    layers = json.loads((folders[0] / "settings.json").read_text())["layers"]
    print(f"| images per batch | estimator | FSS of the KD student to | {' | '.join(layers)} | trend with depth |")
    print("|---|---|---|" + "---|" * len(layers) + "---|")
    for folder in folders:
        print("\n".join(rows(folder)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/records/c10k-fss")
