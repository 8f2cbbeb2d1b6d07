"""DIST: Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .registry import register_method


def pearson_distance(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over rows of 1 − Pearson correlation between the rows of ``a`` and ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    corr = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - corr.mean()


def dist_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter-class, intra-class) relation losses on Y = softmax(z/T) (B × C), each scaled by T².

    Inter-class: 1 − Pearson(Y_s[i, :], Y_t[i, :]) averaged over samples i;
    intra-class: 1 − Pearson(Y_s[:, j], Y_t[:, j]) averaged over classes j.
    """
    y_s = F.softmax(student_logits.float() / temperature, dim=1)
    y_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    scale = temperature**2
    return scale * pearson_distance(y_s, y_t), scale * pearson_distance(y_s.t(), y_t.t())


@register_method("dist", family="logit", paper="Huang et al., Knowledge Distillation from A Stronger Teacher", year=2022)
class DIST(DistillMethod):
    """β·inter-class + γ·intra-class Pearson relation loss beside the label loss.

    Defaults: the paper's CIFAR-100 setting, β = γ = 2, T = 4, CE weight 1 (ImageNet uses β = γ = 1, T = 1).
    """

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, T: float = 4.0, ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.beta, self.gamma, self.T = beta, gamma, T

    def distill_losses(self, student, teacher, batch, epoch):
        inter, intra = dist_losses(student.logits, teacher.logits, self.T)
        return {"inter": self.beta * inter, "intra": self.gamma * intra}
