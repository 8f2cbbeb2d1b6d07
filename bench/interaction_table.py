"""The Interaction Tensor (paper 000 §3.2) per layer and group, from kept `interaction.json` records.

    python bench/interaction_table.py bench/records/c10k-v-interaction

Each folder below the root is one `distillscope interaction` (bench/cifar10_5k_verdicts.sh, PARTS=itensor): the
layer, then one row per group with its models, features, mean frequency (as a share of the N points, so datasets of
other sizes compare), features per point and the group's test top-1; the warnings `interaction` raised follow.
"""
import json
import sys
from pathlib import Path

HEADER = ("| layer | groups compared | group | models | dims per image | test top-1 (%) | features | mean frequency / N | "
          "features per point | features shared with the other groups |")


def rows(record: dict) -> list[str]:
    settings, groups = record["settings"], record["groups"]
    compared = " vs ".join(groups)
    lines = []
    for name, entry in groups.items():
        shared = ", ".join(f"{pair.replace('&', ' & ')} {count}" for pair, count in record["shared"]["pairwise"].items()
                           if name in pair.split("&"))
        dims = "/".join(sorted({str(record["layer_dims"][m]) for m in entry["models"]}, key=int)) if record.get("layer_dims") else "?"
        top1 = entry.get("top1", float("nan"))
        lines.append(f"| {settings['layer']} | {compared} | {name} | {len(entry['models'])} | {dims} | {top1:.1f} | "
                     f"{entry['features']} | {entry['mean_frequency'] / record['points']:.3f} | "
                     f"{entry['features_per_point_mean']:.1f} | {shared} |")
    return lines


def main(root: str) -> None:
    folders = sorted(p.parent for p in Path(root).glob("*/interaction.json"))
    print(HEADER)
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    warnings = []
    for folder in folders:
        record = json.loads((folder / "interaction.json").read_text())
        print("\n".join(rows(record)))
        warnings += [f"- {folder.name}: {w['message']}" for w in record.get("warnings", [])]
    if warnings:
        print("\nWarnings raised by `distillscope interaction`:\n" + "\n".join(warnings))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/records/c10k-v-interaction")
