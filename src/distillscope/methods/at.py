"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial attention maps."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import check_tap_lists, float32, match_grid, paired_taps
from .base import DistillMethod
from .registry import register_method


def attention_map(feature: torch.Tensor, p: float) -> torch.Tensor:
    """Q = vec(Σ_c |F_c|^p) / ‖vec(Σ_c |F_c|^p)‖₂, one row per sample (the paper's F^p_sum mapping)."""
    return F.normalize(feature.abs().pow(p).sum(dim=1).flatten(1), dim=1)


@float32
def at_loss(student: torch.Tensor, teacher: torch.Tensor, p: float) -> torch.Tensor:
    """Mean squared difference of the two attention maps, after pooling the larger grid to the smaller."""
    student, teacher = match_grid(student, teacher)
    return (attention_map(student, p) - attention_map(teacher, p)).pow(2).mean()


@register_method("at", family="feature", paper="Zagoruyko & Komodakis, Paying More Attention to Attention", year=2017)
class AT(DistillMethod):
    """Attention transfer on several stages: ``β · Σ_j mean((Q_s^j − Q_t^j)²)`` beside the label loss.

    Defaults are the CIFAR-100 setting of the CRD benchmark (Tian et al. 2020, RepDistiller: ``--distill
    attention -a 0 -b 1000``): p = 2, β = ``at_weight`` = 1000, CE weight 1, on every stage the pair shares
    (the deepest ``k`` of each model, ``k`` the smaller stage count), features pooled to the smaller grid.
    Attention maps are channel-free, so any pair whose taps resolve works without adapters.
    """

    def __init__(self, p: float = 2.0, at_weight: float = 1000.0, student_taps: list[str] | None = None,
                 teacher_taps: list[str] | None = None, ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        check_tap_lists("at", student_taps, teacher_taps)
        self.p, self.at_weight, self.student_taps, self.teacher_taps = p, at_weight, student_taps, teacher_taps

    taps_description = "attention maps of every shared stage (stage:i)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return paired_taps("at", student, teacher, "stage", "stage", self.student_taps, self.teacher_taps)

    def distill_losses(self, student, teacher, batch, epoch):
        loss = sum(at_loss(student.features[k], teacher.features[k].detach(), self.p) for k in student.features)
        return {"at": self.at_weight * loss}
