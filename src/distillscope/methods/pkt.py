"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): match cosine-similarity distributions."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import float32
from .base import DistillMethod
from .registry import register_method

EPS = 1e-7


def _conditional_probabilities(x: torch.Tensor) -> torch.Tensor:
    """``p_{j|i} = K(x_i, x_j) / Σ_k K(x_i, x_k)`` with the cosine kernel ``K = (cos + 1) / 2``."""
    x = F.normalize(x.flatten(1), dim=1, eps=EPS)
    kernel = (x @ x.T + 1.0) / 2.0
    return kernel / kernel.sum(dim=1, keepdim=True)


@float32
def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over all pairs of ``p_t · log(p_t / p_s)`` (the paper's KL divergence, averaged as the authors' code does)."""
    p_s, p_t = _conditional_probabilities(student), _conditional_probabilities(teacher)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@register_method("pkt", family="relation", paper="Passalis & Tefas, Learning Deep Representations with Probabilistic Knowledge Transfer",
                 year=2018)
class PKT(DistillMethod):
    """PKT on the penultimate embedding: ``β · KL(P_t ‖ P_s)`` beside the label loss.

    Defaults are the CIFAR-100 setting of the CRD benchmark (RepDistiller ``--distill pkt -a 0 -b 30000``):
    β = ``pkt_weight`` = 30000, CE weight 1, on the ``embedding`` tap of both models. The b×b kernels do
    not depend on the feature width, so any pair works without adapters.
    """

    def __init__(self, pkt_weight: float = 30000.0, student_tap: str = "embedding", teacher_tap: str = "embedding",
                 ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.pkt_weight, self.student_tap, self.teacher_tap = pkt_weight, student_tap, teacher_tap

    taps_description = "embedding (penultimate features)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"f": self.student_tap}, {"f": self.teacher_tap}

    def distill_losses(self, student, teacher, batch, epoch):
        return {"pkt": self.pkt_weight * pkt_loss(student.features["f"], teacher.features["f"].detach())}
