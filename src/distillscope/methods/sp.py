"""Similarity-preserving KD (Tung & Mori, ICCV 2019): match the batch's pairwise activation similarities."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import check_tap_lists, float32
from .base import DistillMethod
from .registry import register_method


@float32
def similarity_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``‖G̃_t − G̃_s‖_F² / b²`` with ``G = A·Aᵀ`` over flattened activations, rows L2-normalised (the paper's L_SP)."""
    b = student.shape[0]
    g_s = F.normalize(student.flatten(1) @ student.flatten(1).T, dim=1)
    g_t = F.normalize(teacher.flatten(1) @ teacher.flatten(1).T, dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


@register_method("sp", family="relation", paper="Tung & Mori, Similarity-Preserving Knowledge Distillation", year=2019)
class SP(DistillMethod):
    """Similarity preservation: ``γ · Σ_j ‖G̃_t^j − G̃_s^j‖_F² / b²`` beside the label loss.

    Defaults are the CIFAR-100 setting of the CRD benchmark (RepDistiller ``--distill similarity -a 0 -b
    3000``): γ = ``sp_weight`` = 3000, CE weight 1, on the last stage of each model. Batch similarity
    matrices are b×b whatever the feature shapes, so any pair works without adapters.
    """

    def __init__(self, sp_weight: float = 3000.0, student_taps: list[str] | None = None, teacher_taps: list[str] | None = None,
                 ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        check_tap_lists("sp", student_taps, teacher_taps)
        self.sp_weight = sp_weight
        self.student_taps, self.teacher_taps = student_taps or ["stage:-1"], teacher_taps or ["stage:-1"]

    taps_description = "last stage (stage:-1)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return ({f"f{i}": s for i, s in enumerate(self.student_taps)}, {f"f{i}": t for i, t in enumerate(self.teacher_taps)})

    def distill_losses(self, student, teacher, batch, epoch):
        loss = sum(similarity_loss(student.features[k], teacher.features[k].detach()) for k in student.features)
        return {"sp": self.sp_weight * loss}
