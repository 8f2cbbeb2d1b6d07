"""Review KD (Chen et al., CVPR 2021): attention-based fusion across stages and a hierarchical context loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import check_tap_lists, float32, paired_taps
from .base import DistillMethod
from .registry import register_method

PYRAMID = (4, 2, 1)


@float32
def hcl_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Hierarchical context loss of one level: MSE on the full map plus MSEs of 4×4, 2×2, 1×1 average
    pools smaller than the map, weighted 1, ½, ¼, ... and divided by the sum of the weights used."""
    loss, weight, total = F.mse_loss(student, teacher), 1.0, 1.0
    for size in PYRAMID:
        if size >= student.shape[2]:
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total += weight
    return loss / total


class AttentionFusion(nn.Module):
    """ABF: 1×1 conv + BN to ``mid`` channels; if there is a deeper level, its fused map (resized to this grid)
    is mixed in through two sigmoid attention maps; then resize to the teacher's grid and 3×3 conv + BN to
    the teacher's channels. Returns (output for the loss, fused map passed to the next shallower level)."""

    def __init__(self, cin: int, mid: int, cout: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        self.out = nn.Sequential(nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[2:], mode="nearest")
            w = self.attention(torch.cat([x, deeper], dim=1))
            x = x * w[:, :1] + deeper * w[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


def _as_map(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if x.dim() == 2 else x


@register_method("reviewkd", family="feature", paper="Chen et al., Distilling Knowledge via Knowledge Review", year=2021)
class ReviewKD(DistillMethod):
    """ReviewKD: ``w · min(1, (epoch + 1) / warm-up) · Σ_j HCL(ABF_j, t_j)`` beside the label loss (epoch 0-based).

    Student levels: every stage the pair shares (post-activation, ``stage:i``) plus the pooled ``embedding``
    as a 1×1 map; teacher levels: the same stages pre-activation (``preact:i``) plus its embedding, as the
    authors' CIFAR code taps them. From the deepest level up, each ABF fuses its student feature with the
    deeper fused map and maps it to the teacher's channels and grid, so any pair works. Defaults are the
    authors' resnet32x4 → resnet8x4 CIFAR-100 script: ``reviewkd_weight`` 5, ``warmup_epochs`` 20, CE
    weight 1, ``mid_channels`` = min(512, student embedding width) when left out.
    """

    def __init__(self, reviewkd_weight: float = 5.0, warmup_epochs: float = 20.0, mid_channels: int | None = None,
                 student_taps: list[str] | None = None, teacher_taps: list[str] | None = None, ce_weight: float = 1.0,
                 label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        check_tap_lists("reviewkd", student_taps, teacher_taps)
        self.reviewkd_weight, self.warmup_epochs, self.mid_channels = reviewkd_weight, warmup_epochs, mid_channels
        self.student_taps, self.teacher_taps = student_taps, teacher_taps

    # the methods table's taps column (default taps)
    taps_description = "every shared stage (student stage:i, teacher preact:i) + embedding"

    def taps(self, student, teacher):
        student_taps, teacher_taps = paired_taps("reviewkd", student, teacher, "stage", "preact", self.student_taps, self.teacher_taps)
        if self.student_taps is None:
            student_taps[f"f{len(student_taps)}"], teacher_taps[f"f{len(teacher_taps)}"] = "embedding", "embedding"
        return student_taps, teacher_taps

    def build(self, student_shapes, teacher_shapes, info):
        keys = list(student_shapes)
        mid = self.mid_channels or min(512, student_shapes[keys[-1]][1])
        self.fusions = nn.ModuleDict({k: AttentionFusion(student_shapes[k][1], mid, teacher_shapes[k][1], fuse=k != keys[-1])
                                      for k in keys})
        self.out_sizes = {k: tuple(teacher_shapes[k][2:]) or (1, 1) for k in keys}

    def distill_losses(self, student, teacher, batch, epoch):
        deeper, loss = None, 0.0
        for k in reversed(list(self.fusions)):
            out, deeper = self.fusions[k](_as_map(student.features[k]), deeper, self.out_sizes[k])
            loss = loss + hcl_loss(out, _as_map(teacher.features[k].detach()))
        ramp = min(1.0, (epoch + 1) / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0  # 1-based epochs, as the authors
        return {"reviewkd": self.reviewkd_weight * ramp * loss}
