"""Confusion as dark knowledge (Kang & Kim, 2026, §4.1): a teacher's class-mean softmax vs a model's confusion.

M (Eq. 2): row c = mean softmax of the teacher over samples of class c. Q (Eq. 3): row c = fraction of
class-c samples the model predicts as each class. Both are compared with the diagonal excluded: each
row's off-diagonal part is renormalised to sum 1 (Eq. 4), so accuracy does not enter; rows where either
matrix has no off-diagonal mass (a class never confused) are left out. Statistics: mean per-class cosine,
Pearson correlation over the flattened off-diagonal entries, soft Jaccard Σ min(M̂, Q̂) / Σ max(M̂, Q̂)
(Eq. 5), and the eigen-spectra of the symmetrised off-diagonal matrices (M̂ + M̂ᵀ) / 2.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import DistillscopeError
from ..methods.cd import confusion_ratio

FIGURES = ("confusion_heatmaps.png", "confusion_spectra.png")


def class_mean_softmax(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """M (Eq. 2), float64; rows of classes without samples are zero."""
    return confusion_ratio(logits, targets, num_classes, soft=True)[0].numpy()


def hard_confusion(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> np.ndarray:
    """Q (Eq. 3), float64; rows of classes without samples are zero."""
    return confusion_ratio(logits, targets, num_classes)[0].numpy()


def off_diagonal(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 4: the matrix with its diagonal zeroed and each row rescaled to sum 1; and which rows had mass."""
    off = np.array(matrix, dtype=np.float64)
    np.fill_diagonal(off, 0.0)
    mass = off.sum(1)
    has_mass = mass > 0
    off[has_mass] /= mass[has_mass, None]
    return off, has_mass


def spectrum(normalised: np.ndarray) -> np.ndarray:
    """Eigenvalues of the symmetrised matrix, largest first."""
    return np.sort(np.linalg.eigvalsh((normalised + normalised.T) / 2))[::-1]


def compare_confusion(teacher_m: np.ndarray, model_q: np.ndarray) -> dict:
    """Cosine (mean and per class), Pearson, soft Jaccard and spectra of M and Q, diagonal excluded."""
    m_hat, m_rows = off_diagonal(teacher_m)
    q_hat, q_rows = off_diagonal(model_q)
    rows = m_rows & q_rows
    if not rows.any():
        raise DistillscopeError("no class has off-diagonal mass in both matrices (a perfect model has no confusion to compare)")
    a, b = m_hat[rows], q_hat[rows]
    mask = ~np.eye(len(teacher_m), dtype=bool)[rows]  # off-diagonal entries of the rows used
    cosine = np.full(len(teacher_m), np.nan)
    cosine[rows] = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    x, y = a[mask], b[mask]
    pearson = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return {
        "cosine": float(np.nanmean(cosine)),
        "pearson": pearson,
        "jaccard": float(np.minimum(x, y).sum() / np.maximum(x, y).sum()),
        "classes_compared": int(rows.sum()),
        "classes": len(teacher_m),
        "cosine_per_class": [None if np.isnan(c) else float(c) for c in cosine],
        "spectrum_teacher": spectrum(m_hat).tolist(),
        "spectrum_model": spectrum(q_hat).tolist(),
    }


def confusion_heatmaps(teacher_m: np.ndarray, model_q: np.ndarray, stats: dict, class_names: list[str] | None = None):
    """The figure of M̂ and Q̂ side by side (diagonal masked), the statistics in its title."""
    from .. import plotting

    k = len(teacher_m)
    fig, axes = plotting.new_figure(1, 2, figsize=(11, 5))
    for ax, matrix, title in zip(axes, (teacher_m, model_q), ("teacher class-mean softmax M (off-diagonal, rows renormalised)",
                                                              "model confusion Q (off-diagonal, rows renormalised)")):
        shown = np.ma.masked_where(np.eye(k, dtype=bool), off_diagonal(matrix)[0])
        image = ax.imshow(shown, cmap=plotting.SEQUENTIAL)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if class_names and k <= 20:
            ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), class_names, fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"cosine {stats['cosine']:.3f}  Pearson {stats['pearson']:.3f}  soft Jaccard {stats['jaccard']:.3f}")
    return fig


def confusion_spectra(stats: dict):
    """The figure of both eigen-spectra of :func:`compare_confusion`."""
    from .. import plotting

    fig, ax = plotting.new_figure(figsize=(6, 4))
    ax.plot(stats["spectrum_teacher"], marker="o", label="teacher M")
    ax.plot(stats["spectrum_model"], marker="s", label="model Q")
    ax.set_xlabel("rank")
    ax.set_ylabel("eigenvalue of (A + Aᵀ)/2, off-diagonal")
    ax.legend()
    return fig


def confusion_analysis(teacher: str | Path, model: str | Path, data_spec: str, split: str = "test", out_dir: str | Path | None = None,
                       device: str = "cpu", batch_size: int = 512) -> dict:
    """Evaluate both checkpoints on ``split`` of ``data_spec``, compare M and Q; write JSON and figures to ``out_dir``."""
    from ..data import Loader, load_data
    from ..engine import collect_logits, load_model

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        existing = [out / name for name in ("confusion.json", *FIGURES) if (out / name).exists()]
        if existing:
            raise DistillscopeError(f"'{existing[0]}' already exists; choose another --out folder")
    if split not in ("train", "test"):
        raise DistillscopeError(f"split '{split}' is not one of train, test")
    data = load_data(data_spec)
    dataset = data.train if split == "train" else data.test
    logits = {}
    for role, path in (("teacher", teacher), ("model", model)):
        net, state = load_model(path, device)
        if state["num_classes"] != data.num_classes:
            raise DistillscopeError(f"{role} checkpoint '{path}' has {state['num_classes']} classes but '{data_spec}' has "
                                    f"{data.num_classes}")
        loader = Loader(dataset, batch_size, tuple(state["mean"]), tuple(state["std"]), device=device)
        logits[role], targets, _ = collect_logits(net, loader)
    teacher_m = class_mean_softmax(logits["teacher"], targets, data.num_classes)
    model_q = hard_confusion(logits["model"], targets, data.num_classes)
    stats = {"teacher": str(teacher), "model": str(model), "data": data_spec, "split": split, **compare_confusion(teacher_m, model_q)}
    stats["teacher_top1"] = float((logits["teacher"].argmax(1) == targets).double().mean() * 100)
    stats["model_top1"] = float((logits["model"].argmax(1) == targets).double().mean() * 100)
    if out is not None:
        from .. import plotting

        drawn = {FIGURES[0]: confusion_heatmaps(teacher_m, model_q, stats, data.classes), FIGURES[1]: confusion_spectra(stats)}
        figures = plotting.save_all(drawn, out)
        (out / "confusion.json").write_text(json.dumps({**stats, "M": teacher_m.tolist(), "Q": model_q.tolist()}, indent=2))
        stats["files"] = [str(out / "confusion.json"), *map(str, figures)]
    return stats
