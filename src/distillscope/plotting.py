"""Every figure's matplotlib set-up, in one place: the Agg backend (no display needed), one DPI, the colours and
colour maps; figures are made with :func:`new_figure` and leave as PNG files (:func:`save`, :func:`save_all`; an
existing file is never replaced unless the caller says so) or as PNG bytes (:func:`png_bytes`). Drawing code
imports this module, never matplotlib itself; compute code does not import it at all.
"""
from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .errors import DistillscopeError  # noqa: E402

DPI = 100
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
SEQUENTIAL = "viridis"  # magnitudes: confusion, differences, epochs
SIMILARITY = "magma"  # similarities in [0, 1] (CKA)
DIVERGING = "coolwarm"  # signed values in [-1, 1] (correlations)
HEAT = "jet"  # CAM overlays on images


def colour(i: int) -> str:
    """The ``i``-th categorical colour (cycling)."""
    return COLOURS[i % len(COLOURS)]


def colour_map(name: str, bad: str | None = None):
    """A named colour map; ``bad``: the colour of masked entries."""
    cmap = plt.get_cmap(name)
    return cmap if bad is None else cmap.with_extremes(bad=bad)


def new_figure(rows: int = 1, cols: int = 1, **options):
    """``(figure, axes)`` as ``plt.subplots``, with constrained layout unless ``constrained_layout=False``."""
    return plt.subplots(rows, cols, **{"constrained_layout": True, **options})


def integer_ticks(axis) -> None:
    """Only whole numbers on ``axis`` (e.g. epochs)."""
    axis.set_major_locator(MaxNLocator(integer=True))


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def save(fig, path: str | Path, overwrite: bool = False) -> Path:
    """Write the figure as a PNG at ``path`` and close it; an existing file is an error unless ``overwrite``."""
    return save_all({Path(path).name: fig}, Path(path).parent, overwrite)[0]


def save_all(figures: dict, folder: str | Path, overwrite: bool = False) -> list[Path]:
    """Write each ``{file name: figure}`` into ``folder`` (created if missing) and close them. When a file
    exists and not ``overwrite``, nothing is written and the error names it."""
    paths = [Path(folder) / name for name in figures]
    existing = [path for path in paths if path.exists()]
    if existing and not overwrite:
        for fig in figures.values():
            plt.close(fig)
        raise DistillscopeError(f"'{existing[0]}' already exists; choose another output folder")
    Path(folder).mkdir(parents=True, exist_ok=True)
    for fig, path in zip(figures.values(), paths):
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
    return paths
