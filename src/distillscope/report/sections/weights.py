"""Correlation of the classifier's class weight vectors, teacher against each model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..context import ReportContext, Section, img, mean_std, note, section, table


@section("weights", "Classifier-weight correlation", order=90)
def section_weights(ctx: ReportContext) -> Section:
    from ... import plotting
    from ...analysis.similarity import classifier_weights, correlation_difference, weight_correlation
    from .. import figures

    def correlation(run: Path) -> np.ndarray:
        return weight_correlation(classifier_weights(ctx.model(run)[0]))

    teacher = correlation(ctx.teacher)
    l1 = {ctx.label(r): correlation_difference(teacher, correlation(r))[1] for r in ctx.compared_runs}
    shown = {role: run for role, run in ctx.feature_runs.items() if role != "teacher"}
    matrices = [teacher] + [correlation(run) for run in shown.values()]
    diffs = [correlation_difference(teacher, m)[0] for m in matrices[1:]]
    classes = ctx.data.classes
    body = img(figures.heatmaps(matrices, ["teacher"] + list(shown), [classes] * len(matrices), [classes] * len(matrices), vmin=-1, vmax=1,
                                cmap=plotting.DIVERGING, mask_diagonal=True), "classifier weight correlation")
    largest = max(float(np.max(d)) for d in diffs)
    body += img(figures.heatmaps(diffs, [f"|C_teacher − C_{role}|  (mean {l1[ctx.label(run)]:.3f})" for role, run in shown.items()],
                                 [classes] * len(diffs), [classes] * len(diffs), vmin=0, vmax=largest, cmap=plotting.SEQUENTIAL,
                                 mask_diagonal=True),
                "difference heatmaps")
    rows = [[group, ctx.seeds(group, compared=True), mean_std([l1[ctx.label(r)] for r in ctx.compared(group)], 4)]
            for group in ctx.groups if ctx.compared(group)]
    body += table(["group", "seeds", "L1 error: mean |C_t − C_s| off the diagonal"], rows)
    body += note("C = Ŵ Ŵᵀ with each class row of the final linear layer L2-normalised: the cosine between class weight vectors "
                 "(paper 003, SFKD, Fig. 5, \"computed using normalized weights\").")
    return Section(body, {"l1_per_run": l1, "teacher_correlation": teacher}, "final linear layer weights of every run (no data)")
