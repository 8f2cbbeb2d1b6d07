"""Correlation congruence (Peng et al., ICCV 2019): match instance-correlation matrices of embeddings."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .adapters import Embed, float32
from .base import DistillMethod
from .registry import register_method


def correlation_matrix(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Gaussian-RBF correlation ``k(x_i, x_j) = exp(−γ‖x_i − x_j‖²)`` of L2-normalised rows, as its P-order
    Taylor series ``Σ_{p=0}^{P} e^{−2γ} (2γ)^p / p! · (x_iᵀx_j)^p`` (the paper's kernel; ‖x‖ = 1 gives ‖x_i − x_j‖² = 2 − 2x_iᵀx_j)."""
    x = F.normalize(x, dim=1)
    similarity = x @ x.T
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * similarity.pow(p) for p in range(order + 1))


@float32
def cc_loss(student: torch.Tensor, teacher: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """``‖ψ(F_t) − ψ(F_s)‖_F² / n²`` over the batch's correlation matrices (the paper's L_CC)."""
    return (correlation_matrix(teacher, gamma, order) - correlation_matrix(student, gamma, order)).pow(2).mean()


@register_method("cc", family="relation", paper="Peng et al., Correlation Congruence for Knowledge Distillation", year=2019)
class CC(DistillMethod):
    """Correlation congruence on embedded penultimate features: ``β · L_CC`` beside the label loss.

    Both models' ``embedding`` taps pass through an embedding adapter (linear to ``feat_dim`` = 128, then
    L2 normalisation, as RepDistiller's CC), so any pair works. Defaults: γ = 0.4, Taylor order P = 2 and
    β = ``cc_weight`` = 100, CE weight 1: the Gaussian-RBF setting of AberHu's Knowledge-Distillation-Zoo
    CIFAR script, which implements the paper's kernel. (RepDistiller's β = 0.02 belongs to its simplified,
    kernel-free correlation loss, not to this one; the paper gives no standalone CIFAR weight.)
    """

    def __init__(self, cc_weight: float = 100.0, gamma: float = 0.4, order: int = 2, feat_dim: int = 128, student_tap: str = "embedding",
                 teacher_tap: str = "embedding", ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.cc_weight, self.gamma, self.order, self.feat_dim = cc_weight, gamma, order, feat_dim
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    taps_description = "embedding (penultimate features)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"f": self.student_tap}, {"f": self.teacher_tap}

    def build(self, student_shapes, teacher_shapes, info):
        self.embed_student = Embed(math.prod(student_shapes["f"][1:]), self.feat_dim)
        self.embed_teacher = Embed(math.prod(teacher_shapes["f"][1:]), self.feat_dim)

    def distill_losses(self, student, teacher, batch, epoch):
        s = self.embed_student(student.features["f"])
        t = self.embed_teacher(teacher.features["f"].detach())
        return {"cc": self.cc_weight * cc_loss(s, t, self.gamma, self.order)}
