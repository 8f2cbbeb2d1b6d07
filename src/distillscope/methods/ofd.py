"""Overhaul of feature distillation (Heo et al., ICCV 2019): pre-ReLU features, margin ReLU, partial L2."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import DistillscopeError
from ..models import resolve_tap
from .adapters import check_tap_lists, float32, match_grid, paired_taps
from .base import DistillMethod
from .registry import register_method


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """Per-channel margin m = E[x | x < 0] for x ~ N(β, γ²) read from a BN's affine parameters:
    ``m = β − |γ|·φ(β/|γ|) / Φ(−β/|γ|)``, or −3|γ| where Φ(−β/|γ|) ≤ 0.001 (the paper's margin, as the authors' code computes it)."""
    std, mean = bn.weight.detach().double().abs(), bn.bias.detach().double()
    z = mean / std
    below = torch.special.ndtr(-z)
    expected = mean - std * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi) / below.clamp(min=1e-300)
    return torch.where(below > 0.001, expected, -3 * std).float()


@float32
def partial_l2(student: torch.Tensor, teacher: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Σ over elements of (s − σ_m(t))², skipped where s ≤ σ_m(t) ≤ 0, σ_m(t) = max(t, m) (the paper's margin ReLU and partial L2)."""
    target = torch.maximum(teacher, margin.view(1, -1, *([1] * (teacher.dim() - 2))))
    keep = (student > target) | (target > 0)
    return ((student - target).pow(2) * keep).sum()


def connector(cin: int, cout: int) -> nn.Sequential:
    """1×1 conv + BN (student → teacher channels), conv ~ N(0, 2/(k²·cout)), BN 1/0, as the authors initialise it."""
    conv, bn = nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / cout))
    return nn.Sequential(conv, bn)


def bn_before(model: nn.Module, spec: str, channels: int) -> nn.BatchNorm2d:
    """The BatchNorm whose output a pre-ReLU tap reads: the tapped module itself, else the last BN with
    ``channels`` outputs inside the tapped block (``path@input``: the block holding ``path``), shortcuts excluded
    (for a residual sum the shortcut is ignored, as the authors do)."""
    path, where = resolve_tap(model, spec)
    module = model.get_submodule(path)
    if where == "output" and isinstance(module, nn.BatchNorm2d):
        found = [module]
    else:
        scope = model.get_submodule(path.rpartition(".")[0]) if where == "input" else module
        found = [m for name, m in scope.named_modules()
                 if isinstance(m, nn.BatchNorm2d) and "shortcut" not in name.split(".") and m.num_features == channels]
    if not found or found[-1].num_features != channels:
        raise DistillscopeError(
            f"method ofd: no BatchNorm with {channels} channels feeds teacher tap '{spec}' of {type(model).__name__}; "
            f"OFD takes its margin from that BN: give method.teacher_taps that read BatchNorm outputs before a ReLU"
        )
    return found[-1]


@register_method("ofd", family="feature", paper="Heo et al., A Comprehensive Overhaul of Feature Distillation", year=2019)
class OFD(DistillMethod):
    """OFD: ``w · Σ_j d_p(C_j(s_j), σ_m(t_j)) / 2^(k−1−j) / b`` on pre-ReLU features, beside the label loss.

    Student and teacher features are the pre-activation taps (``preact:i``) of every stage the pair shares;
    C_j is a 1×1 conv + BN connector to the teacher's channels (larger grids are average-pooled to the
    smaller); σ_m clamps the teacher from below at the per-channel margin computed from the teacher BN
    feeding that tap; d_p is the partial L2 distance, summed over elements. Defaults are the authors'
    CIFAR-100 code (``loss_distill.sum() / batch_size / 1000``, mdistiller FEAT_WEIGHT 1e-3):
    ``ofd_weight`` = 1e-3, CE weight 1. A model without pre-activation taps fails with one line.
    """

    def __init__(self, ofd_weight: float = 1e-3, student_taps: list[str] | None = None, teacher_taps: list[str] | None = None,
                 ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        check_tap_lists("ofd", student_taps, teacher_taps)
        self.ofd_weight, self.student_taps, self.teacher_taps = ofd_weight, student_taps, teacher_taps
        self._teacher = None

    taps_description = "pre-ReLU features of every shared stage (preact:i)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        student_taps, teacher_taps = paired_taps("ofd", student, teacher, "preact", "preact", self.student_taps, self.teacher_taps)
        self._teacher = (teacher, teacher_taps)  # a plain tuple: the teacher is read in build(), never registered
        return student_taps, teacher_taps

    def build(self, student_shapes, teacher_shapes, info):
        teacher, teacher_taps = self._teacher
        self.connectors = nn.ModuleDict({k: connector(student_shapes[k][1], teacher_shapes[k][1]) for k in student_shapes})
        for k, spec in teacher_taps.items():
            self.register_buffer(f"margin_{k}", bn_margin(bn_before(teacher, spec, teacher_shapes[k][1])))
        self._teacher = None

    def distill_losses(self, student, teacher, batch, epoch):
        count, loss = len(student.features), 0.0
        for j, (k, s) in enumerate(student.features.items()):
            s, t = match_grid(s, teacher.features[k].detach())
            loss = loss + partial_l2(self.connectors[k](s), t, getattr(self, f"margin_{k}")) / 2 ** (count - 1 - j)
        return {"ofd": self.ofd_weight * loss / len(batch)}
