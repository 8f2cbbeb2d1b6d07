"""The Interaction Tensor over the report's groups (analysis/interaction.py)."""
from __future__ import annotations

import html
from pathlib import Path

from ..context import ReportContext, Section, SectionSkipped, cell, figure_row, note, section, table


@section("interaction", "Interaction Tensor", order=110)
def section_interaction(ctx: ReportContext) -> Section:
    from ...analysis.interaction import DEFAULT_LAYER, MIN_GROUP, interaction_figures, interaction_from_runs
    from ... import plotting

    if ctx.settings.split == "val":
        raise SectionSkipped("the Interaction Tensor is computed on the train or test split; use --split test")
    options = {"layer": DEFAULT_LAYER, **ctx.settings.interaction}
    result = interaction_from_runs(ctx.groups, ctx.data.spec, n=ctx.settings.limit, split=ctx.settings.split, device=str(ctx.device),
                                   progress=ctx.settings.progress, data=ctx.data, load=ctx.model, **options)
    stats = result.stats
    body = note(f"The Interaction Tensor compares groups of models (paper 000: 20 models per group): a group's features are the union "
                f"over its models, so its numbers are statistics of the group; groups of fewer than {MIN_GROUP} models are flagged ⚠.")
    body += "".join('<p class="warning" style="color:#7a4100;background:#fff4e0;border-left:3px solid #e0a030;padding:4px 8px">'
                    f"⚠ {html.escape(w['message'])}</p>" for w in stats["warnings"])
    rows = [[("⚠ " if len(e["models"]) < MIN_GROUP else "") + g, ctx.seeds(g), e["features"], f"{e['mean_frequency']:.1f}",
             f"{e['features_per_point_mean']:.1f}", e["features_never_present"],
             f"{e.get('top1', float('nan')):.2f}", cell((e.get("confidence_vs_features") or {}).get("pearson") or float("nan"))]
            for g, e in stats["groups"].items()]
    body += table(["group", "seeds", "features", "mean frequency (points)", "features per point", "never present", "top-1 (%)",
                   "r(features, confidence)"], rows)
    dims = sorted(set(result.layer_dims or []))
    span = f"{dims[0]:,}" + (f"–{dims[-1]:,}" if len(dims) > 1 else "") if dims else ""
    width = f" ({span} dims per image, maps flattened C·H·W)" if dims else ""
    pairs = ", ".join(f"{k}: {v}" for k, v in stats["shared"]["pairwise"].items())
    body += note(f"{stats['features']} features from {stats['models']} models × {stats['components']} PCA components of the "
                 f"{options['layer']} feature{width} on {stats['points']:,} points; γ = {stats['gamma']:.4f}. Shared by all groups: "
                 f"{stats['shared']['all_groups']}" + (f"; pairwise: {pairs}." if pairs else ".")
                 + " Paper 000 (CIFAR-100, the last convolutional stage, 20 models per group; baseline / KD student / teacher): "
                 "531 / 281 / 264 features, mean frequency 1329 / 2121 / 2243, ≈ 71 / 60 / 59 features per point.")
    body += figure_row({Path(name).stem: plotting.png_bytes(fig) for name, fig in interaction_figures(result).items()})
    numbers = {k: v for k, v in result.to_dict().items() if k not in ("assignment", "best_correlation")}
    return Section(body, numbers,
                   ctx.basis(stats["points"], runs="every run, grouped: " + "; ".join(f"{g} seeds {ctx.seeds(g)}" for g in ctx.groups)))
