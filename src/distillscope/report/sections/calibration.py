"""ECE, NLL and reliability diagrams per group."""
from __future__ import annotations

import statistics

import torch

from ..context import ReportContext, Section, img, mean_std, note, section, table


@section("calibration", "Calibration", order=30)
def section_calibration(ctx: ReportContext) -> Section:
    from ...analysis.calibration import calibration_stats, reliability
    from .. import figures

    bins = ctx.settings.bins
    logits = ctx.all_logits(ctx.runs)
    per_run = {ctx.label(r): calibration_stats(logits[r], ctx.targets, bins) for r in ctx.runs}
    rows, groups, tables = [], {}, {}
    for group, runs in ctx.groups.items():
        stats = [per_run[ctx.label(r)] for r in runs]
        summary = {key: [s[key] for s in stats] for key in ("top1", "ece", "nll", "mean_confidence")}
        groups[group] = summary
        rows.append([group, ctx.seeds(group), mean_std(summary["top1"]), mean_std(summary["ece"], 4), mean_std(summary["nll"], 4),
                     mean_std(summary["mean_confidence"], 4)])
        pooled = torch.cat([logits[r] for r in runs])
        diagram = reliability(pooled, ctx.targets.repeat(len(runs)), bins)
        tables[group] = {**diagram, "ece": statistics.fmean(summary["ece"])}
    body = table(["group", "seeds", "top-1 (%)", f"ECE ({bins} bins)", "NLL (nats)", "mean confidence"], rows)
    body += img(figures.reliability_diagram(tables), "reliability diagrams")
    body += note(f"ECE: Σ_b |B_b|/N · |acc(B_b) − conf(B_b)| over {bins} equal-width confidence bins (Guo et al., 2017); "
                 "diagrams pool the images of all seeds of a group; panel titles give the mean ECE over seeds.")
    return Section(body, {"per_run": per_run, "per_group": groups, "bins": bins}, ctx.basis(runs="every run, float32, eval mode"))
