"""Vanilla KD (Hinton et al., 2015): T² · KL(softmax(t/T) ‖ softmax(s/T)) beside the label loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .registry import register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch-mean KL divergence of softened distributions, scaled by T² to keep gradients comparable."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@register_method("kd")
class KD(DistillMethod):
    def __init__(self, T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.T, self.kd_weight = T, kd_weight

    def distill_losses(self, student, teacher, batch, epoch):
        return {"kd": self.kd_weight * kd_loss(student.logits, teacher.logits, self.T)}
