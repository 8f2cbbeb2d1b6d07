"""Per-class top-1 gains of each group over the base group."""
from __future__ import annotations

import html

import numpy as np

from ..context import ReportContext, Section, SectionSkipped, img, section, table


@section("per_class", "Per-class accuracy gains", order=50)
def section_per_class(ctx: ReportContext) -> Section:
    from ...analysis.calibration import per_class_accuracy
    from .. import figures

    if ctx.base_group is None:
        raise SectionSkipped("no base run (--base RUN or a group named 'base'): per-class gains need one")
    classes, k = ctx.data.classes, ctx.data.num_classes

    def group_accuracy(group: str) -> np.ndarray:
        return np.mean([per_class_accuracy(ctx.logits(r), ctx.targets, k) for r in ctx.groups[group]], axis=0)

    base = group_accuracy(ctx.base_group)
    gains = {group: group_accuracy(group) - base for group in ctx.groups if group != ctx.base_group}
    body = img(figures.class_bars(gains, classes, f"top-1 gain over {ctx.base_group} (points)"), "per-class gains")
    rows = [[group, f"{np.nanmean(g):+.2f}", f"{classes[int(np.nanargmax(g))]} ({np.nanmax(g):+.2f})",
             f"{classes[int(np.nanargmin(g))]} ({np.nanmin(g):+.2f})", int(np.sum(g > 0)), int(np.sum(g < 0))]
            for group, g in gains.items()]
    body += table(["group", "mean gain (points)", "largest gain", "largest loss", "classes up", "classes down"], rows)
    return Section(body, {"base_group": ctx.base_group, "base_per_class": base, "gains": gains, "classes": classes},
                   ctx.basis(runs=f"per-class top-1 averaged over seeds, minus the {html.escape(ctx.base_group)} group's"))
