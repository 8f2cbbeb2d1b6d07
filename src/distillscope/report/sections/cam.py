"""Grad-CAM and UniCAM grids, FSS/RS scores and localisation: ``distillscope explain``'s files, beside the page."""
from __future__ import annotations

import html
from pathlib import Path

from ..context import ReportContext, Section, img, note, section, table


@section("cam", "Grad-CAM, UniCAM, FSS/RS", order=100)
def section_cam(ctx: ReportContext) -> Section:
    from ...explain import ExplainSettings, run_explain
    out = Path(ctx.settings.out)  # explain's own files (grids, scores.csv, summary.md) sit beside report.html
    settings = ExplainSettings(student=str(ctx.student), teacher=str(ctx.teacher), base=str(ctx.base) if ctx.base else None,
                               data=ctx.data.spec, out=str(out), device=str(ctx.device), progress=ctx.settings.progress,
                               **{"limit": ctx.settings.limit, **ctx.settings.explain})
    result = run_explain(settings, data=ctx.dataset(), load=lambda path: ctx.model(Path(path)))  # loaded once, by the context
    body = "".join(img(path.read_bytes(), path.stem) for path in sorted(out.glob("grid*.png")))
    scores: dict = {}
    for row in result["scores"]:
        scores.setdefault((row["reference"], row["layer"], row["condition"]), {})[row["statistic"]] = row["pooled"]
    stat_names = list(dict.fromkeys(row["statistic"] for row in result["scores"]))
    body += table(["reference", "layer", "condition", *stat_names],
                  [[*key, *(v.get(k, float("nan")) for k in stat_names)] for key, v in scores.items()],
                  "FSS and RS pooled over batches (per-batch mean ± std in scores.csv)")
    if result["localisation"]:
        body += table(list(result["localisation"][0]), [list(r.values()) for r in result["localisation"]],
                      "localisation on the object masks")
    notes = result["settings"].get("notes", [])
    body += note(" ".join(notes) + f" UniCAM batches of {settings.batch_size} and the grids' {len(result['settings']['grid_rows'])} images "
                 f"(one per class in turn) drawn with seed {settings.seed}; files in {out}.")
    return Section(body, {"scores": result["scores"], "localisation": result["localisation"], "settings": result["settings"]},
                   f"test split of <code>{html.escape(ctx.data.spec)}</code>, N = {result['settings']['images']:,} images; student, teacher"
                   + (", base" if ctx.base else ""))
