"""FitNet (Romero et al., 2015): regress a student feature onto a teacher hint through a 1×1 conv."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .adapters import hint_regressor
from .base import DistillMethod
from .registry import register_method


@register_method("fitnet", family="feature", paper="Romero et al., FitNets: Hints for Thin Deep Nets", year=2015)
class FitNet(DistillMethod):
    def __init__(
        self,
        student_tap: str = "stage:mid",
        teacher_tap: str = "stage:mid",
        hint_weight: float = 100.0,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.student_tap, self.teacher_tap, self.hint_weight = student_tap, teacher_tap, hint_weight
        self.regressor: nn.Module | None = None

    taps_description = "stage:mid feature map (hint)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"hint": self.student_tap}, {"hint": self.teacher_tap}

    def build(self, student_shapes, teacher_shapes, info):
        self.regressor = hint_regressor("fitnet", student_shapes["hint"], teacher_shapes["hint"])

    def distill_losses(self, student, teacher, batch, epoch):
        guided = self.regressor(student.features["hint"])
        return {"hint": self.hint_weight * F.mse_loss(guided.float(), teacher.features["hint"].float())}
