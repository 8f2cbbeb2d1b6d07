"""docs/results.md's "Verdicts on the seeds' claims": each claim's paired difference over seeds, from kept records.

    python bench/verdicts_table.py [RECORDS ...]     # default: bench/records/c10k-v bench/records/c10k-vt

A claim holds where the 95% confidence interval of (method − baseline) test top-1 at the last epoch lies on the
paper's side of 0, does not hold where it lies on the other side, and is "not detectable at n seeds" (with the
minimum detectable effect at 80% power) where it holds 0. The best-validation epoch's difference is shown
beside it; test accuracy selects nothing. SFKD rows are the grid point chosen on validation over the grid seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

from distillscope.report.tables import compare_to_baseline, find_runs, read_summaries, table_rows

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ["bench/records/c10k-v", "bench/records/c10k-vt"]
SWEEP = "bench/cifar10_5k_verdicts.sh"
# (claim, method row, baseline row, paper's setting vs ours, command part)
CLAIMS = [
    ("KD beats training from labels alone (paper 000 §4, Hinton et al.)", "c10k-resnet8-kd", "c10k-resnet8-ce",
     "CIFAR-100, ResNet-152 → ResNet-18, 200 epochs vs cifar10-5k, wrn_40_2 (teacher B) → resnet8, 30 epochs, T = 4", "kd"),
    ("Confusion Distillation beats CE without a teacher (paper 000, Table 2)", "c10k-resnet8-cd", "c10k-resnet8-ce",
     "CIFAR-100, ResNet-18, Q from the test set vs cifar10-5k, resnet8, Q from the training set (no test labels)", "self"),
    ("Confusion Distillation beats CS-KD (paper 000, Table 2)", "c10k-resnet8-cd", "c10k-resnet8-cskd",
     "as above; CS-KD T = 4, λ = 1 as its paper", "self"),
    ("SFKD's top-K logit mask improves KD (paper 003, Table 1)", "c10k-resnet8-sfkd-kd", "c10k-resnet8-kd",
     "CIFAR-100, K and fill as the paper (zero fill, Eq. 5) vs cifar10-5k; fill {0, −inf} × K {0.5, 0.7, 0.9} chosen on validation "
     "over seeds 0, 1 (fill 0 raises the teacher's entropy, against Prop. 1: bench/records/sfkd_entropy.md)", "sfkd"),
    ("SFKD's top-K logit mask improves DKD (paper 003, Table 1)", "c10k-resnet8-sfkd-dkd", "c10k-resnet8-dkd",
     "as above, on DKD (α 1, β 8, T 4)", "sfkd"),
]


def verdict(difference, claimed_sign: int = 1) -> str:
    """holds / does not hold / not detectable at n seeds (MDE), from the last epoch's difference."""
    if difference.diff is None:
        return f"n/a ({difference.reason})"
    if not difference.detected:
        return f"not detectable at {difference.n} seeds (MDE {difference.mde:.1f})"
    return "holds" if difference.diff * claimed_sign > 0 else "does not hold"


def cell(difference) -> str:
    if difference.diff is None:
        return "n/a"
    return f"{difference.diff:+.2f} [{difference.ci_low:+.2f}, {difference.ci_high:+.2f}], {difference.label}"


def chosen(rows: list[dict], name: str) -> dict | None:
    """The row of config ``name``: its grid point chosen on validation where it has several, else the only one."""
    matches = [row for row in rows if row["run"] == name]
    if len(matches) > 1:
        matches = [row for row in matches if row["chosen on val"]]
    return matches[0] if matches else None


def claim_line(rows: list[dict], claim, method, baseline, setting, part, records) -> str:
    command = f"PARTS={part} {SWEEP}; python bench/verdicts_table.py"
    row, base = chosen(rows, method), chosen(rows, baseline)
    if row is None or base is None:
        return f"| {claim} | {setting} | not run yet | not measured | `{command}` |"
    label = lambda r: " ".join(filter(None, [r["run"], r["grid point"]]))  # noqa: E731
    compared = [r for r in rows if r is row or r is base]
    compare_to_baseline(compared, label(base))
    vs = row["vs baseline"]
    last, best = vs["last"], vs["best val"]
    point = f" ({row['grid point']})" if row["grid point"] else ""
    why = f"; unpaired: {vs['unpaired because']}" if vs.get("unpaired because") else ""
    return (f"| {claim} | {setting}{point} | last epoch {cell(last)}; best val {cell(best)}{why} | {verdict(last)} | "
            f"`distillscope table {' '.join(records)} --baseline {label(base)}` |")


def main(argv: list[str]) -> None:
    records = argv or RECORDS
    present = [r for r in records if (ROOT / r).is_dir()]
    summaries = read_summaries(find_runs([ROOT / r for r in present])[0]) if present else []
    for s in summaries:
        s["folder"] = str(Path(s["folder"]).relative_to(ROOT))
    rows = table_rows(summaries)
    print("| claim | paper's setting vs ours | difference in test top-1 (points), 95% CI, n | verdict (last epoch) | command |")
    print("|---|---|---|---|---|")
    for claim in CLAIMS:
        print(claim_line(rows, *claim, records))


if __name__ == "__main__":
    main(sys.argv[1:])
