"""Variational information distillation (Ahn et al., CVPR 2019): a Gaussian likelihood of teacher features."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import check_tap_lists, float32, match_grid, paired_taps
from .base import DistillMethod
from .registry import register_method


@float32
def vid_nll(mean: torch.Tensor, target: torch.Tensor, log_scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Mean of ``½((t − μ)²/σ² + log σ²)`` with per-channel σ² = softplus(α_c) + ε (the paper's variational bound, constants dropped)."""
    variance = (F.softplus(log_scale) + eps).view(1, -1, *([1] * (mean.dim() - 2)))
    return (0.5 * ((mean - target).pow(2) / variance + variance.log())).mean()


def regressor(cin: int, cout: int) -> nn.Sequential:
    """μ(s): three 1×1 convs with ReLUs, hidden width = teacher channels (as RepDistiller's VIDLoss)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.ReLU(), nn.Conv2d(cout, cout, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(cout, cout, 1, bias=False))


@register_method("vid", family="feature", paper="Ahn et al., Variational Information Distillation for Knowledge Transfer", year=2019)
class VID(DistillMethod):
    """VID on several stages: ``β · Σ_j −log q(t_j | s_j)`` beside the label loss.

    q is a Gaussian with mean μ(s) (a 1×1-conv regressor, student → teacher channels) and heteroscedastic
    per-channel variance softplus(α) + ε, α initialised so that σ² starts at 5. Defaults are the CIFAR-100
    setting of the CRD benchmark (RepDistiller ``--distill vid -a 0 -b 1``, its VIDLoss): β =
    ``vid_weight`` = 1, CE weight 1, ``init_variance`` 5, ε = 1e-5, on every stage the pair shares;
    the larger grid is average-pooled to the smaller.
    """

    def __init__(self, vid_weight: float = 1.0, init_variance: float = 5.0, eps: float = 1e-5, student_taps: list[str] | None = None,
                 teacher_taps: list[str] | None = None, ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        check_tap_lists("vid", student_taps, teacher_taps)
        self.vid_weight, self.init_variance, self.eps = vid_weight, init_variance, eps
        self.student_taps, self.teacher_taps = student_taps, teacher_taps

    taps_description = "every shared stage (stage:i)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return paired_taps("vid", student, teacher, "stage", "stage", self.student_taps, self.teacher_taps)

    def build(self, student_shapes, teacher_shapes, info):
        self.regressors = nn.ModuleDict({k: regressor(student_shapes[k][1], teacher_shapes[k][1]) for k in student_shapes})
        alpha = math.log(math.expm1(self.init_variance - self.eps))  # softplus(α) + ε = init_variance
        self.log_scales = nn.ParameterDict({k: nn.Parameter(torch.full((teacher_shapes[k][1],), alpha)) for k in teacher_shapes})

    def distill_losses(self, student, teacher, batch, epoch):
        loss = 0.0
        for k, s in student.features.items():
            s, t = match_grid(s, teacher.features[k].detach())
            loss = loss + vid_nll(self.regressors[k](s), t, self.log_scales[k], self.eps)
        return {"vid": self.vid_weight * loss}
