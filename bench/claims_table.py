"""docs/results.md's table of the claims that are not a difference of accuracies, from kept records.

    python bench/claims_table.py

Sources (all below bench/records): sfkd_entropy.md (`bench/sfkd_entropy.py`), c10k-v-interaction (the Interaction
Tensor part of `bench/cifar10_5k_verdicts.sh`), c10k-fss (`bench/cifar10_5k_fss_settings.sh`) and shapes-rs
(`bench/shapes_rs_labels.sh`); FSS rows are read as bench/fss_trend_table.py reads them. A claim whose records
are missing is printed as pending with its command.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from fss_trend_table import clean_fss, trend  # bench/, this script's folder

RECORDS = Path(__file__).resolve().parents[1] / "bench" / "records"
HEADER = "| claim | paper's setting vs ours | measured | verdict | command |\n|---|---|---|---|---|"


def entropy_row() -> str:
    rows = {}
    for line in (RECORDS / "sfkd_entropy.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("1 (unmasked)", "0.7", "0.5"):
            rows[cells[0]] = cells[3:5]  # T = 4: fill 0, fill -inf
    (plain, _), (k7_zero, k7_inf), (k5_zero, k5_inf) = rows["1 (unmasked)"], rows["0.7"], rows["0.5"]
    concentrates = float(k7_inf) < float(plain) and float(k5_inf) < float(plain)
    reversed_by_zero = float(k7_zero) > float(plain) and float(k5_zero) > float(plain)
    verdict = ("holds with −inf" if concentrates else "does not hold with −inf") + (
        ", reversed with fill 0 (the paper's own Eq. 5 for negative logits)" if reversed_by_zero else "")
    return (f"| Masking concentrates the teacher's distribution (paper 003, Prop. 1) | masked logits set to 0 (Eq. 5) vs both 0 "
            f"and −inf | softened teacher entropy at T = 4 on 2,000 training images: {plain} nats unmasked; K = 0.7: {k7_zero} "
            f"with fill 0, {k7_inf} with −inf; K = 0.5: {k5_zero} vs {k5_inf} | {verdict} | `python bench/sfkd_entropy.py` "
            f"(`bench/records/sfkd_entropy.md`) |")


def _groups(folder: Path) -> dict | None:
    path = folder / "interaction.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _fewer_more_frequent(record: dict, group: str, base: str) -> tuple[str, bool]:
    g, b, n = record["groups"][group], record["groups"][base], record["points"]
    change = lambda key: f"{(g[key] / b[key] - 1) * 100:+.0f}%"  # noqa: E731
    text = (f"{group} {g['features']} vs {base} {b['features']} features ({change('features')}), mean frequency / N "
            f"{g['mean_frequency'] / n:.3f} vs {b['mean_frequency'] / n:.3f} ({change('mean_frequency')}), per point "
            f"{g['features_per_point_mean']:.1f} vs {b['features_per_point_mean']:.1f}")
    return text, g["features"] < b["features"] and g["mean_frequency"] > b["mean_frequency"]


def interaction_rows() -> list[str]:
    root = RECORDS / "c10k-v-interaction"
    command = "`PARTS=itensor bench/cifar10_5k_verdicts.sh`; `python bench/interaction_table.py bench/records/c10k-v-interaction`"
    claims = [("KD students have fewer, more frequent features than CE students (paper 000, Interaction Tensor)",
               "ResNet-18's last stage flattened (8,192-d), 20 models per group vs resnet8's last stage (4,096-d) and the one "
               "before (stage:-2), 5 CE / 5 KD students / 3 teachers; the 64-d embedding as a saturated control", "", "kd"),
              ("Confusion Distillation's features behave like a KD student's (paper 000, Fig. 3)",
               "as above, 5 CD against 5 CE students", "-cd", "cd")]
    lines = []
    for claim, setting, suffix, group in claims:
        found = {layer: _groups(root / f"{layer}{suffix}") for layer in ("stage-1", "stage-2", "embedding")}
        if found["stage-1"] is None or found["stage-2"] is None:
            lines.append(f"| {claim} | {setting} | not measured yet | pending | {command} |")
            continue
        parts, holds = [], []
        for layer, record in found.items():
            if record is None:
                continue
            text, ok = _fewer_more_frequent(record, group, "ce")
            saturated = " (saturated: K > 0.75 · D)" if any(w["kind"] == "saturated" for w in record.get("warnings", [])) else ""
            parts.append(f"{record['settings']['layer']}{saturated}: {text}")
            if layer != "embedding":
                holds.append(ok)
        verdict = ("the paper's direction at both stages" if all(holds) else "not the paper's direction at either stage"
                   if not any(holds) else "mixed")
        lines.append(f"| {claim} | {setting} | {'; '.join(parts)} | {verdict} (one tensor per layer over all seeds: no interval, "
                     f"so the size is descriptive) | {command} |")
    return lines


def fss_row() -> str:
    trends = []
    for folder in sorted((RECORDS / "c10k-fss").iterdir()):
        settings, scores = clean_fss(folder)
        fss = [r for r in scores if r["reference"] == "teacher"]
        first, last = float(fss[0]["mean"]), float(fss[-1]["mean"])
        trends.append((settings["estimator"], settings["batch_size"], first, last, trend(first, last)))
    unbiased = [t for t in trends if t[0] == "unbiased"]
    ordered = sorted(trends, key=lambda t: (t[0] != "unbiased", t[1]))
    measured = "; ".join(f"{e}, batch {b}: {f:.3f} → {la:.3f} ({t})" for e, b, f, la, t in ordered)
    verdict = ("does not hold: batch size and estimator ruled out as the cause (one seed, one pair)"
               if all(t[4] == "falls" for t in unbiased) else "holds in some settings (see the table below)")
    return (f"| FSS rises with depth (paper 002, Fig. 4) | the text states no batch size (the authors' code: 4 images), and the "
            f"U-centred estimator (§3.1) vs ours: batches of 4 and 64, both estimators, 512 test images, seed-0 KD student of "
            f"teacher B | FSS to the teacher, first → last stage: {measured} | {verdict} | `bench/cifar10_5k_fss_settings.sh`; "
            f"`python bench/fss_trend_table.py bench/records/c10k-fss` |")


def rs_row() -> str:
    parts, above = [], []
    for kind in ("onehot", "text"):
        rows = [r for r in csv.DictReader((RECORDS / "shapes-rs" / kind / "scores.csv").open())
                if r["reference"] == "base" and r["condition"] == "clean"]
        student = [float(r["mean"]) for r in rows if r["statistic"] == "rs_student"]
        base = [float(r["mean"]) for r in rows if r["statistic"] == "rs_reference"]
        parts.append(f"{kind} {' / '.join(f'{s:.3f}' for s in student)} vs base {' / '.join(f'{b:.3f}' for b in base)}")
        above.append([s > b for s, b in zip(student, base)])
    if all(all(a) for a in above):
        verdict = "holds at every stage with either label kind (one seed: no verdict on its size)"
    elif all(a == above[0] for a in above) and above[0][-1] and not any(above[0][:-1]):
        verdict = "mixed: above the base at the last stage only, with either label kind (one seed: no verdict on its size)"
    else:
        verdict = "mixed (one seed: no verdict on its size)"
    return (f"| RS of the KD student above its base (paper 002) | BERT embeddings of the label names (§3.2.2) vs ours: one-hot "
            f"and the offline MiniLM sentence embeddings (`--labels text`, the paper's kind of label embedding), `shapes` demo "
            f"models of seed 0 | RS of the KD student against the CE base, clean images, stages 0 / 1 / 2: {'; '.join(parts)} | "
            f"{verdict} | `bench/shapes_rs_labels.sh` (records in `bench/records/shapes-rs`) |")


def main() -> None:
    print(HEADER)
    print("\n".join([entropy_row(), *interaction_rows(), fss_row(), rs_row()]))


if __name__ == "__main__":
    main()
