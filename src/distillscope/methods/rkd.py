"""Relational KD (Park et al., CVPR 2019): match pairwise distances and triplet angles of embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .adapters import float32
from .base import DistillMethod
from .registry import register_method


def _pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between rows, zero on the diagonal."""
    squared = x.pow(2).sum(dim=1)
    d = (squared[:, None] + squared[None, :] - 2 * x @ x.T).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _normalised_distances(x: torch.Tensor) -> torch.Tensor:
    """Distances divided by their mean over distinct pairs (the paper's ψ_D)."""
    d = _pairwise_distances(x)
    return d / d[d > 0].mean()


@float32
def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber (smooth-L1) loss between normalised distance matrices."""
    with torch.no_grad():
        target = _normalised_distances(teacher.flatten(1))
    return F.smooth_l1_loss(_normalised_distances(student.flatten(1)), target)


def _angles(x: torch.Tensor) -> torch.Tensor:
    """cos ∠(x_i, x_j, x_k) = ⟨e_ij, e_kj⟩ with e_ij = (x_i − x_j)/‖x_i − x_j‖, over all ordered triplets (the paper's ψ_A)."""
    diff = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@float32
def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Huber (smooth-L1) loss between the angle potentials of every triplet."""
    with torch.no_grad():
        target = _angles(teacher.flatten(1))
    return F.smooth_l1_loss(_angles(student.flatten(1)), target)


@register_method("rkd", family="relation", paper="Park et al., Relational Knowledge Distillation", year=2019)
class RKD(DistillMethod):
    """RKD-DA on the penultimate embedding: ``w_d · L_dist + w_a · L_angle`` beside the label loss.

    Defaults are the paper's (w_d = 25, w_a = 50) as the CRD benchmark runs them on CIFAR-100 (RepDistiller
    ``--distill rkd -a 0 -b 1``: CE weight 1) on the ``embedding`` tap of both models. Distances and
    angles are computed within each model's own space, so any pair works without adapters.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0, student_tap: str = "embedding",
                 teacher_tap: str = "embedding", ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    taps_description = "embedding (penultimate features)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"f": self.student_tap}, {"f": self.teacher_tap}

    def distill_losses(self, student, teacher, batch, epoch):
        s, t = student.features["f"], teacher.features["f"].detach()
        return {"rkd_distance": self.distance_weight * rkd_distance_loss(s, t), "rkd_angle": self.angle_weight * rkd_angle_loss(s, t)}
