"""Pieces the feature methods share: pairing student/teacher taps, matching grids, embeddings, fp32 losses."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillscopeError

TAP_ATTRIBUTES = {"stage": "stage_taps", "preact": "preact_taps"}


def check_tap_lists(method: str, student_taps, teacher_taps) -> None:
    """Both lists of tap specs given (same length, non-empty) or both left out."""
    for name, value in (("student_taps", student_taps), ("teacher_taps", teacher_taps)):
        if value is not None and (not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value)):
            raise DistillscopeError(f"method {method}: {name} should be a non-empty list of tap specs, e.g. [stage:1, stage:2], got "
                                    f"{value!r}")
    if (student_taps is None) != (teacher_taps is None) or (student_taps and len(student_taps) != len(teacher_taps)):
        raise DistillscopeError(f"method {method}: give student_taps and teacher_taps together, one teacher tap per student tap")


def declared_stages(method: str, model: nn.Module, kind: str) -> int:
    """How many ``kind`` ('stage' or 'preact') taps a zoo model declares; a clear error when it declares none."""
    declared = getattr(model, TAP_ATTRIBUTES[kind], None)
    if not declared:
        raise DistillscopeError(
            f"method {method}: {type(model).__name__} declares no {kind} taps ({TAP_ATTRIBUTES[kind]}); "
            f"give method.student_taps and method.teacher_taps as module paths"
        )
    return len(declared)


def paired_taps(method: str, student: nn.Module, teacher: nn.Module, student_kind: str = "stage", teacher_kind: str = "stage",
                student_taps: list[str] | None = None, teacher_taps: list[str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Tap specs ``{'f0': ..., 'f1': ...}`` (shallow to deep) for the student and the teacher.

    Given lists are used as they are. Otherwise the deepest ``k`` declared stages of each model are paired,
    deepest with deepest, ``k`` being the smaller stage count of the two (as mdistiller aligns its lists).
    """
    if student_taps is None:
        k = min(declared_stages(method, student, student_kind), declared_stages(method, teacher, teacher_kind))
        student_taps = [f"{student_kind}:{i}" for i in range(-k, 0)]
        teacher_taps = [f"{teacher_kind}:{i}" for i in range(-k, 0)]
    return {f"f{i}": s for i, s in enumerate(student_taps)}, {f"f{i}": t for i, t in enumerate(teacher_taps)}


def smaller_grid(student_shape, teacher_shape) -> tuple[int, ...]:
    """The spatial size both feature maps can be pooled to: the smaller of the two, per dimension."""
    return tuple(min(a, b) for a, b in zip(student_shape[2:], teacher_shape[2:]))


def pool_to(feature: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Average-pool a feature map to ``grid`` unless it already has that size."""
    return feature if tuple(feature.shape[2:]) == tuple(grid) else F.adaptive_avg_pool2d(feature, grid)


def match_grid(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever feature map has the larger grid down to the other's (RepDistiller's rule)."""
    grid = smaller_grid(student.shape, teacher.shape)
    return pool_to(student, grid), pool_to(teacher, grid)


def hint_regressor(method: str, student_shape, teacher_shape, match: str = "upsample") -> nn.Sequential:
    """FitNets' hint regressor from a student feature map (N, C, H, W) to a teacher's: a conv to the teacher's channels, then BN.

    ``match="upsample"`` (``fitnet``): a 1×1 conv without bias, after a bilinear resize to the teacher's grid when the
    grids differ. ``match="conv"`` (RepDistiller's ``ConvReg``, which the AEKD authors use; ``aekd_f``): the conv
    matches the grid -- 3×3 stride 2 when the student's grid is twice the teacher's, 4×4 stride-2 transposed when
    it is half, otherwise a valid conv of kernel 1 + (student − teacher size) -- and a ReLU follows the BN.
    """
    if len(student_shape) != 4 or len(teacher_shape) != 4:
        raise DistillscopeError(f"method {method}: the hint taps must be 4-D maps (N, C, H, W), got student {list(student_shape)} and "
                                f"teacher {list(teacher_shape)}; tap a stage")
    (_, s_c, s_h, s_w), (_, t_c, t_h, t_w) = student_shape, teacher_shape
    if match == "upsample":
        layers = [nn.Conv2d(s_c, t_c, 1, bias=False), nn.BatchNorm2d(t_c)]
        if (s_h, s_w) != (t_h, t_w):
            layers.insert(0, nn.Upsample(size=(t_h, t_w), mode="bilinear", align_corners=False))
        return nn.Sequential(*layers)
    if (s_h, s_w) == (2 * t_h, 2 * t_w):
        conv = nn.Conv2d(s_c, t_c, 3, stride=2, padding=1)
    elif (2 * s_h, 2 * s_w) == (t_h, t_w):
        conv = nn.ConvTranspose2d(s_c, t_c, 4, stride=2, padding=1)
    elif s_h >= t_h and s_w >= t_w:
        conv = nn.Conv2d(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise DistillscopeError(f"method {method}: the student map is {s_h}×{s_w} but a teacher's is {t_h}×{t_w}; tap a student stage at "
                                "least as large (or half as large)")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c), nn.ReLU())


class Embed(nn.Module):
    """Linear projection of the flattened feature to ``dim`` followed by L2 normalisation (CRD's ``Embed``)."""

    def __init__(self, dim_in: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)).float(), dim=1)


def float32(loss_fn):
    """Run a loss in float32 with autocast off, whatever precision the step runs in."""

    @functools.wraps(loss_fn)
    def wrapper(*args, **kwargs):
        device = next(a.device for a in args if torch.is_tensor(a))
        args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        with torch.autocast(device.type, enabled=False):
            return loss_fn(*args, **kwargs)

    return wrapper
