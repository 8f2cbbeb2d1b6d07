"""Class-wise self-knowledge distillation, CS-KD (Yun et al., CVPR 2020).

Each sample is paired with a random training sample of the same class (possibly itself). The model's
own prediction on the partner (train mode, no gradient) is the target: λ · T² · KL(softmax(p/T) ‖
softmax(z/T)) beside the label CE. Pairs come from the loader's epoch generator (``pair_rows``), so
they replay exactly after ``--resume``; the trainer passes the partner outputs as ``teacher``.
"""
from __future__ import annotations

import torch

from .base import DistillMethod
from .kd import kd_loss
from .registry import register_method


@register_method("cskd", family="self", paper="Yun et al., Regularizing Class-wise Predictions via Self-knowledge Distillation", year=2020)
class ClassWiseSelfKD(DistillMethod):
    """CS-KD. Defaults: the paper's CIFAR-100 setting (T = 4, λ = ``cls_weight`` = 1, CE weight 1)."""

    needs_teacher = False
    needs_pairs = True

    def __init__(self, T: float = 4.0, cls_weight: float = 1.0, ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.T, self.cls_weight = T, cls_weight

    def build(self, student_shapes, teacher_shapes, info):
        targets = info.targets.long()
        counts = torch.bincount(targets, minlength=info.num_classes)
        self._targets = targets
        self._rows_by_class = torch.argsort(targets, stable=True)  # training rows grouped by class
        self._class_start, self._class_count = torch.cumsum(counts, 0) - counts, counts

    def pair_rows(self, rows, generator):
        """For each row, a uniformly drawn row of the same class."""
        y = self._targets[rows]
        draw = torch.rand(len(rows), generator=generator, dtype=torch.float64)
        pick = torch.minimum((draw * self._class_count[y]).long(), self._class_count[y] - 1)
        return self._rows_by_class[self._class_start[y] + pick]

    def distill_losses(self, student, teacher, batch, epoch):
        return {"cls": self.cls_weight * kd_loss(student.logits, teacher.logits.detach(), self.T)}
