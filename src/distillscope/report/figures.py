"""Matplotlib figures of the report, each returned as PNG bytes (set-up, DPI and colours: :mod:`distillscope.plotting`)."""
from __future__ import annotations

import numpy as np

from .. import plotting
from ..plotting import colour


def training_curves(histories: dict[str, list[tuple[str, list[dict]]]]) -> bytes:
    """Train loss, val top-1 and test top-1 per epoch, one line per run coloured by group;
    ``histories`` maps group -> [(run label, metric rows)]."""
    panels = (("train/loss", "train loss (weighted sum of the method's terms)"), ("val/top1", "val top-1 (%)"),
              ("test/top1", "test top-1 (%)"))
    fig, axes = plotting.new_figure(1, 3, figsize=(12, 3.5))
    for ax, (key, title) in zip(axes, panels):
        for g, (group, runs) in enumerate(histories.items()):
            for r, (label, rows) in enumerate(runs):
                values = [row.get(key, np.nan) for row in rows]
                if rows and not all(np.isnan(v) for v in values):
                    ax.plot([row["epoch"] for row in rows], values, color=colour(g), alpha=0.85, linewidth=1.4,
                            label=group if r == 0 else None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        plotting.integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888")
    axes[0].legend(fontsize=8)
    return plotting.png_bytes(fig)


def reliability_diagram(tables: dict[str, dict]) -> bytes:
    """Accuracy vs confidence per bin, one panel per model group; ``tables`` maps name -> reliability table."""
    count = len(tables)
    fig, axes = plotting.new_figure(1, count, figsize=(3.2 * count + 0.4, 3.4), squeeze=False)
    for i, (ax, (name, table)) in enumerate(zip(axes[0], tables.items())):
        edges = np.asarray(table["edges"])
        accuracy = np.nan_to_num(np.asarray(table["accuracy"], dtype=float))
        ax.bar(edges[:-1], accuracy, width=np.diff(edges), align="edge", color=colour(i), alpha=0.75, edgecolor="white", label="accuracy")
        confidence = np.asarray(table["confidence"], dtype=float)
        filled = ~np.isnan(confidence)
        gap_bottom = np.where(filled, np.minimum(accuracy, confidence), 0)
        ax.bar(edges[:-1][filled], np.abs(confidence - accuracy)[filled], bottom=gap_bottom[filled], width=np.diff(edges)[filled],
               align="edge", color="none", edgecolor="#444", hatch="//", linewidth=0.5, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "--", color="#555", linewidth=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}\nECE {table['ece']:.3f}", aspect="equal")
        if i == 0:
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=7, loc="upper left")
    return plotting.png_bytes(fig)


def heatmaps(matrices: list[np.ndarray], titles: list[str], row_labels: list[list[str]] | None = None,
             col_labels: list[list[str]] | None = None, xlabel: str = "", ylabel: str = "", vmin: float | None = None,
             vmax: float | None = None, cmap: str = plotting.SEQUENTIAL, annotate: bool = False, mask_diagonal: bool = False) -> bytes:
    """Side-by-side heatmaps with a colour bar each; small matrices can carry their values; a masked diagonal is grey."""
    count = len(matrices)
    side = 3.6 if max(m.shape[0] for m in matrices) <= 12 else 4.6
    fig, axes = plotting.new_figure(1, count, figsize=(side * count + 0.6, side), squeeze=False)
    for i, (ax, matrix, title) in enumerate(zip(axes[0], matrices, titles)):
        shown = np.ma.masked_where(np.eye(*matrix.shape, dtype=bool), matrix) if mask_diagonal else matrix
        palette = plotting.colour_map(cmap, bad="#d9d9d9")
        image = ax.imshow(shown, cmap=palette, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set(xlabel=xlabel, ylabel=ylabel if i == 0 else "")
        for labels, setter in ((row_labels, ax.set_yticks), (col_labels, ax.set_xticks)):
            if labels is not None and len(labels[i]) <= 30:
                setter(range(len(labels[i])), labels[i], fontsize=7, **({"rotation": 90} if setter == ax.set_xticks else {}))
        if annotate and matrix.size <= 64:
            for (r, c), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if value < np.nanmean(matrix) else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
    return plotting.png_bytes(fig)


def tsne_panels(points: dict[str, np.ndarray], labels: np.ndarray, classes: list[str]) -> bytes:
    """One scatter per model of its 2-D t-SNE embedding, coloured by true class."""
    count = len(points)
    fig, axes = plotting.new_figure(1, count, figsize=(3.6 * count, 3.9), squeeze=False)
    shown = sorted(set(labels.tolist()))
    size = float(np.clip(4000 / max(len(labels), 1), 4, 30))
    for ax, (name, xy) in zip(axes[0], points.items()):
        for i, cls in enumerate(shown):
            rows = labels == cls
            ax.scatter(xy[rows, 0], xy[rows, 1], s=size, color=colour(i), label=classes[cls], alpha=0.8, linewidths=0)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(shown), 10), fontsize=7, markerscale=2, frameon=False)
    return plotting.png_bytes(fig)


def class_bars(values: dict[str, np.ndarray], classes: list[str], ylabel: str) -> bytes:
    """Grouped bars per class (e.g. per-class accuracy gain of each model group over the base)."""
    count = len(values)
    width = 0.8 / max(count, 1)
    fig, ax = plotting.new_figure(figsize=(max(6.0, 0.45 * len(classes) * max(count, 1) + 1.5), 3.4))
    x = np.arange(len(classes))
    for i, (name, v) in enumerate(values.items()):
        ax.bar(x + (i - (count - 1) / 2) * width, v, width=width, color=colour(i), label=name)
    ax.axhline(0, color="#333", linewidth=0.8)
    if len(classes) <= 30:
        ax.set_xticks(x, classes, rotation=45 if len(classes) > 10 else 0, ha="right" if len(classes) > 10 else "center", fontsize=8)
    ax.set(ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return plotting.png_bytes(fig)


def results_chart(rows: list[dict], title: str = "") -> bytes:
    """One line per results row (``report.table_rows``), top to bottom in table order: each seed's last-epoch
    test top-1 (dots), their mean ± std (bar and whiskers) and the mean test top-1 at the best-validation epoch (◇).
    Rows compared to a baseline (``table_rows(..., baseline=…)``) get a second panel: each row's difference to it
    with its 95% CI, at the last epoch (■) and at the best-validation epoch (◇)."""
    compared = any("vs baseline" in row for row in rows)
    fig, axes = plotting.new_figure(1, 1 + compared, figsize=(8.5 + 4.5 * compared, 0.42 * len(rows) + 1.6), sharey=True, squeeze=False,
                                     gridspec_kw={"width_ratios": [3, 2][: 1 + compared]})
    ax = axes[0, 0]
    labels = []
    for y, row in enumerate(rows):
        last = np.asarray(row["test@last"], dtype=float)
        ax.errorbar(last.mean(), y, xerr=last.std(ddof=1) if len(last) > 1 else None, fmt="s", color=colour(0), markersize=6, capsize=3,
                    label="last epoch: mean ± std" if y == 0 else None)
        ax.scatter(last, np.full(len(last), y), s=14, color=colour(0), alpha=0.35, linewidths=0,
                   label="last epoch: each seed" if y == 0 else None)
        if row["test@best"]:
            ax.scatter(np.mean(row["test@best"]), y, marker="D", s=30, facecolors="none", edgecolors=colour(1),
                       label="at best val: mean" if y == 0 else None)
        labels.append(" ".join(filter(None, [row["run"], row["grid point"], "(✓ val)" if row["chosen on val"] else "", f"n={len(last)}"])))
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set(xlabel="test top-1 (%)", title=title)
    ax.grid(axis="x", alpha=0.3)
    if compared:
        _differences_panel(axes[0, 1], rows)
    fig.legend(loc="outside lower center", fontsize=8, ncol=3 + 2 * compared, frameon=False)
    return plotting.png_bytes(fig)


def _differences_panel(ax, rows: list[dict]) -> None:
    """Each row's test top-1 minus the baseline's, 95% CI as error bars; a line at 0."""
    ax.axvline(0, color="#333", linewidth=0.8)
    marks = (("last", -0.12, "s", colour(0), "Δ last epoch (95% CI)"), ("best val", 0.12, "D", colour(1), "Δ at best val (95% CI)"))
    labelled = set()
    for y, row in enumerate(rows):
        vs = row["vs baseline"]
        if vs is None:
            ax.text(0, y, " baseline", va="center", fontsize=8, color="#555")
            continue
        for point, offset, marker, tint, label in marks:
            d = vs[point]
            if d.diff is None:
                continue
            ax.errorbar(d.diff, y + offset, xerr=[[d.diff - d.ci_low], [d.ci_high - d.diff]], fmt=marker, color=tint, markersize=5,
                        capsize=3, mfc="none" if marker == "D" else tint, label=None if label in labelled else label)
            labelled.add(label)
    ax.set(xlabel=f"test top-1 minus {rows[0]['baseline']} (points)")
    ax.grid(axis="x", alpha=0.3)
