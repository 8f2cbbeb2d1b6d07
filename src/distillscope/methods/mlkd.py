"""MLKD: Multi-Level Logit Distillation (Jin et al., CVPR 2023)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import draw_strong, strong_augment
from ..errors import DistillscopeError
from .base import DistillMethod
from .kd import kd_loss, standardise
from .registry import register_method

DEFAULT_TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)
LEVELS = ("instance", "batch", "class")


def gram_distance(p_s: torch.Tensor, p_t: torch.Tensor, dim: int) -> torch.Tensor:
    """‖G_s − G_t‖²_F / n with G = P Pᵀ (B × B, dim 0: batch level) or Pᵀ P (C × C, dim 1: class level)."""
    gram = (lambda p: p @ p.t()) if dim == 0 else (lambda p: p.t() @ p)
    return (gram(p_s) - gram(p_t)).pow(2).sum() / p_s.shape[dim]


@register_method("mlkd", family="logit", paper="Jin et al., Multi-Level Logit Distillation", year=2023)
class MLKD(DistillMethod):
    """Instance-, batch- and class-level alignment of softened predictions, summed over temperatures.

    For each T in ``temperatures`` (the paper's prediction augmentation), with P = softmax(z/T) (B × C):
    instance T²·KL(P_t ‖ P_s) (batch mean), batch ‖P_s P_sᵀ − P_t P_tᵀ‖²_F / B, class
    ‖P_sᵀ P_s − P_tᵀ P_t‖²_F / C; each level's sum over T is weighted by ``kd_weight``.
    Defaults: the paper's code for CIFAR-100 (T ∈ {2, 3, 4, 5, 6}, KD weight 0.9 per term, CE weight 0.1,
    lr 0.025).

    ``level_weights`` (default 1 for each level) multiplies a level's sum on top of ``kd_weight``, e.g.
    ``{class: 0.01}``. The class term grows about as (B/C)² with C classes (each Gram entry sums about B/C
    samples' probabilities), so weights set for CIFAR-100 make it about (100/C)² times larger on C classes;
    ``(C/100)²`` restores their balance.

    ``logit_standardization: true`` z-scores the logits of the instance terms (as Sun et al.'s released
    code does; their CIFAR-100 setting: temperatures 2, 3, 5, 2, 6, KD weight 9, CE weight 1).

    Two parts of the authors' CIFAR-100 code (``KD_ours``, trainer ``ours``), both off by default:

    - ``strong_aug: true``: a second, strongly augmented view of every batch (:mod:`distillscope.data.randaugment`,
      ``strong_ops`` ops at ``strong_magnitude``; their code: 2 ops, full ranges, plus cutout), on which the
      student and the teacher run too. It adds ``ce_strong`` (CE weight × CE of the student on it) and, for each
      level in ``strong_levels``, ``<level>_strong`` (the same sum over T on that view). Their code returns CE
      and the instance level on the strong view (its batch and class sums there are computed and dropped), so
      the default is ``strong_levels: [instance]``. One slip is not copied: their strong instance sum takes
      T = 3, 4, 5 on the strong view but T = 2, 6 on the weak one; here all temperatures use the strong view.
    - ``median_mask: true``: the weak-view levels are scaled by the fraction of the batch whose weak-view
      teacher confidence (softmax at T = 1) is at most its median: instance and batch by the fraction of
      samples with max_c p_t ≤ median over the batch, class by the fraction of classes with Σ_i p_t,ic ≤ median
      over the classes (median interpolated, as numpy's percentile 50). Their code multiplies the already
      batch-averaged losses by these boolean masks and averages, so the "mask" acts as this factor (about
      one half), not as a per-sample selection; the strong-view terms are not scaled.

    The recipes ``resnet8_mlkd_strong.yaml`` and ``cifar100/resnet8x4_mlkd_strong.yaml`` turn both on.
    """

    def __init__(
        self,
        temperatures: list[float] | None = None,
        kd_weight: float = 0.9,
        ce_weight: float = 0.1,
        label_smoothing: float = 0.0,
        logit_standardization: bool = False,
        strong_aug: bool = False,
        strong_levels: list[str] | None = None,
        strong_ops: int = 2,
        strong_magnitude: float = 1.0,
        median_mask: bool = False,
        level_weights: dict[str, float] | None = None,
    ):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        temperatures = DEFAULT_TEMPERATURES if temperatures is None else temperatures
        if (not isinstance(temperatures, (list, tuple)) or not temperatures
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in temperatures)):
            raise DistillscopeError(f"method mlkd: temperatures={temperatures!r} should be a non-empty list of positive numbers, "
                                    "e.g. [2, 3, 4, 5, 6]")
        strong_levels = ["instance"] if strong_levels is None else strong_levels
        valid = isinstance(strong_levels, (list, tuple)) and all(level in LEVELS for level in strong_levels)
        if not valid or len(set(strong_levels)) != len(strong_levels):
            raise DistillscopeError(f"method mlkd: strong_levels={strong_levels!r} should list distinct levels among {', '.join(LEVELS)}")
        level_weights = {} if level_weights is None else level_weights
        if not isinstance(level_weights, dict) or not set(level_weights) <= set(LEVELS) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in level_weights.values()):
            raise DistillscopeError(f"method mlkd: level_weights={level_weights!r} should map levels among {', '.join(LEVELS)} to "
                                    "non-negative numbers, e.g. {class: 0.01}")
        draw_strong(0, torch.Generator(), strong_ops, strong_magnitude)  # checks both
        self.temperatures = tuple(float(t) for t in temperatures)
        self.kd_weight, self.logit_standardization = kd_weight, logit_standardization
        self.level_weights = {level: float(level_weights.get(level, 1.0)) for level in LEVELS}
        self.needs_extra_view, self.strong_levels = strong_aug, tuple(strong_levels)
        self.strong_ops, self.strong_magnitude, self.median_mask = strong_ops, strong_magnitude, median_mask

    def extra_view(self, pixels, generator):
        return strong_augment(pixels, draw_strong(len(pixels), generator, self.strong_ops, self.strong_magnitude))

    def levels(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, levels=LEVELS) -> dict[str, torch.Tensor]:
        """``{level: kd_weight · level weight · Σ_T term}`` for the requested levels."""
        s, t = student_logits.float(), teacher_logits.float()
        s_inst, t_inst = (standardise(s), standardise(t)) if self.logit_standardization else (s, t)
        sums = dict.fromkeys(levels, 0.0)
        for T in self.temperatures:
            if "instance" in sums:
                sums["instance"] = sums["instance"] + kd_loss(s_inst, t_inst, T)
            if "batch" in sums or "class" in sums:
                p_s, p_t = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
                if "batch" in sums:
                    sums["batch"] = sums["batch"] + gram_distance(p_s, p_t, 0)
                if "class" in sums:
                    sums["class"] = sums["class"] + gram_distance(p_s, p_t, 1)
        return {level: self.kd_weight * self.level_weights[level] * value for level, value in sums.items()}

    def distill_losses(self, student, teacher, batch, epoch):
        losses = self.levels(student.logits, teacher.logits)
        if self.median_mask:
            samples, classes = median_fractions(teacher.logits)
            losses = {level: value * (classes if level == "class" else samples) for level, value in losses.items()}
        if self.needs_extra_view:
            if student.view is None or teacher.view is None:
                raise DistillscopeError("method mlkd: strong_aug needs the outputs on the extra view (student.view, teacher.view); "
                                        "train it with the Trainer")
            if self.ce_weight:
                ce = F.cross_entropy(student.view.logits, batch.targets, label_smoothing=self.label_smoothing)
                losses["ce_strong"] = self.ce_weight * ce
            strong = self.levels(student.view.logits, teacher.view.logits, self.strong_levels)
            losses.update({f"{level}_strong": value for level, value in strong.items()})
        return losses


def median_fractions(teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractions of samples (max_c p) and of classes (Σ_i p) at or below their median, p = softmax(teacher logits)."""
    p = F.softmax(teacher_logits.detach().float(), dim=1)
    at_most_median = lambda x: (x <= torch.quantile(x, 0.5)).float().mean()  # noqa: E731
    return at_most_median(p.amax(1)), at_most_median(p.sum(0))
