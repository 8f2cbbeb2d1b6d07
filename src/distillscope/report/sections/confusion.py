"""The teacher's class-mean softmax M against each model's confusion Q (analysis/confusion.py)."""
from __future__ import annotations

import html

from ...errors import DistillscopeError
from ..context import ReportContext, Section, SectionSkipped, img, mean_std, note, section, table


@section("confusion", "Confusion vs the teacher", order=60)
def section_confusion(ctx: ReportContext) -> Section:
    from ... import plotting
    from ...analysis.confusion import class_mean_softmax, compare_confusion, confusion_heatmaps, hard_confusion

    k = ctx.data.num_classes
    teacher_m = class_mean_softmax(ctx.logits(ctx.teacher), ctx.targets, k)
    per_run, notes = {}, []
    for run, z in ctx.all_logits(ctx.compared_runs).items():
        try:
            per_run[ctx.label(run)] = compare_confusion(teacher_m, hard_confusion(z, ctx.targets, k))
        except DistillscopeError as err:
            notes.append(f"{ctx.label(run)}: {err}")
    if not per_run:
        raise SectionSkipped("; ".join(notes) or "no model besides the teacher")
    rows = []
    for group in ctx.groups:
        stats = [per_run[ctx.label(r)] for r in ctx.compared(group) if ctx.label(r) in per_run]
        if stats:
            rows.append([group, ctx.seeds(group, compared=True)]
                        + [mean_std([s[key] for s in stats], 3) for key in ("cosine", "pearson", "jaccard")])
    body = table(["group", "seeds", "per-class cosine", "Pearson", "soft Jaccard"], rows)
    if ctx.label(ctx.student) in per_run:
        student_q = hard_confusion(ctx.logits(ctx.student), ctx.targets, k)
        heatmaps = confusion_heatmaps(teacher_m, student_q, per_run[ctx.label(ctx.student)], ctx.data.classes)
        body += img(plotting.png_bytes(heatmaps), "teacher class-mean softmax vs student confusion")
    body += note("Teacher's class-mean softmax M vs each model's confusion Q, diagonal excluded and rows renormalised "
                 "(analysis/confusion.py). " + " ".join(notes))
    numbers = {label: {k2: v for k2, v in s.items() if not k2.startswith("spectrum")} for label, s in per_run.items()}
    return Section(body, {"per_run": numbers}, ctx.basis(runs=f"reference teacher: {html.escape(ctx.label(ctx.teacher))}"))
