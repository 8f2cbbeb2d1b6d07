"""Top-1 agreement and KL divergence to the reference teacher."""
from __future__ import annotations

import html

from ..context import ReportContext, Section, mean_std, section, table


@section("agreement", "Agreement with the teacher", order=40)
def section_agreement(ctx: ReportContext) -> Section:
    from ...analysis.similarity import agreement, kl_to_teacher

    teacher = ctx.logits(ctx.teacher)
    logits = ctx.all_logits(ctx.compared_runs)
    per_run = {ctx.label(r): {"agreement": 100 * agreement(teacher, z), "kl": kl_to_teacher(teacher, z)} for r, z in logits.items()}
    rows, groups = [], {}
    for group in ctx.groups:
        stats = [per_run[ctx.label(r)] for r in ctx.compared(group)]
        if not stats:
            continue
        groups[group] = {key: [s[key] for s in stats] for key in ("agreement", "kl")}
        rows.append([group, ctx.seeds(group, compared=True), mean_std(groups[group]["agreement"]), mean_std(groups[group]["kl"], 4)])
    body = table(["group", "seeds", "top-1 agreement with the teacher (%)", "KL(teacher ‖ model), T = 1 (nats)"], rows)
    return Section(body, {"per_run": per_run, "per_group": groups, "teacher": str(ctx.teacher)},
                   ctx.basis(runs=f"reference teacher: {html.escape(ctx.label(ctx.teacher))}"))
