"""Online label smoothing, OLS (Zhang et al., IEEE TIP 2021, "Delving deep into label smoothing").

Soft targets are per-class distributions S[y]: during an epoch, the softmax of every correctly
classified training sample is summed into its class; at the epoch's end the class means replace S
(uniform for a class with no correct sample). S starts as label smoothing (``smoothing`` on the
off-diagonal, as the official code). Loss: ``ce_weight`` · CE + ``ols_weight`` · soft CE(S[y], z).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .registry import register_method


@register_method("ols", family="self", paper="Zhang et al., Delving Deep into Label Smoothing", year=2021)
class OnlineLabelSmoothing(DistillMethod):
    """OLS. Defaults: the paper's CIFAR-100 setting (0.5 · CE + 0.5 · soft CE, initial smoothing 0.1)."""

    needs_teacher = False

    def __init__(self, ols_weight: float = 0.5, ce_weight: float = 0.5, smoothing: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.ols_weight, self.smoothing = ols_weight, smoothing

    def build(self, student_shapes, teacher_shapes, info):
        k = info.num_classes
        start = torch.full((k, k), self.smoothing / max(k - 1, 1)).fill_diagonal_(1 - self.smoothing)
        self.register_buffer("soft_targets", start)  # S: row c = target distribution of class c
        self.register_buffer("sums", torch.zeros(k, k, dtype=torch.float64))  # this epoch's correct softmax rows
        self.register_buffer("counts", torch.zeros(k, dtype=torch.float64))

    def distill_losses(self, student, teacher, batch, epoch):
        log_p = F.log_softmax(student.logits.float(), dim=1)
        if self.training:
            with torch.no_grad():
                correct = log_p.argmax(1) == batch.targets
                y = batch.targets[correct]
                self.sums.index_add_(0, y, log_p[correct].exp().double())
                self.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
        return {"ols": self.ols_weight * -(self.soft_targets[batch.targets] * log_p).sum(1).mean()}

    def on_epoch_end(self, epoch):
        k = self.counts.shape[0]
        means = self.sums / self.counts.clamp(min=1)[:, None]
        uniform = torch.full_like(means, 1.0 / k)
        self.soft_targets.copy_(torch.where(self.counts[:, None] > 0, means, uniform).float())
        self.sums.zero_()
        self.counts.zero_()
