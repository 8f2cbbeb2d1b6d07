"""Multi-teacher KD: several frozen teachers (config ``teachers: [{name, checkpoint}, ...]``) combined per step.

These methods set ``multi_teacher = True``; the trainer then passes ``teacher`` as a list of ``Outputs``,
one per teacher, each already SFKD-masked when ``mask`` is set (paper 003, Table 7: SFKD + AEKD).

- ``mtkd``: the plain ensemble average of softened teacher distributions,
  p̄ = (1/M) Σ_m softmax(t_m / T), and loss T² · KL(p̄ ‖ softmax(s/T)) (Hinton et al., 2015, §2 ensembles).
  With M identical teachers this is exactly single-teacher KD.
- ``aekd``: AEKD (Du et al., NeurIPS 2020, "Agree to Disagree: Adaptive Ensemble Knowledge Distillation in
  Gradient Space", §3 on logits). Per sample, teacher m's KD loss L_m = T² KL(softmax(t_m/T) ‖ softmax(s/T))
  has the gradient g_m = ∂L_m/∂s = T (softmax(s/T) − softmax(t_m/T)) with respect to the student's logits.
  The weights solve the tolerance-bounded min-norm problem

      α* = argmin_α ‖Σ_m α_m g_m‖²   s.t.  Σ_m α_m = 1,  0 ≤ α_m ≤ C,

  (C ∈ [1/M, 1]: C = 1/M is the plain average of losses, C = 1 the unbounded MGDA direction), and the loss
  is Σ_m α*_m L_m with α* held constant (no gradient through the weights). ``weights: sample`` solves it for
  each sample's g_m; ``weights: batch`` once per step for the batch-mean gradients, as the authors' released
  code does (there the problem is the dual of a one-class SVM on the Gram matrix G Gᵀ, ν = 1/(C·M)). We solve
  the small quadratic programme by projected gradient descent onto the capped simplex (step 1/(2 λ_max(G Gᵀ))).
- ``aekd_f``: AEKD-F, AEKD with its feature term ("hint" distillation with AEKD weights), as the authors' code
  (github.com/AnTuo1998/AE-KD, ``helper/loops.py``, ``--distill hint --ensemble_method AEKD``) defines it and
  as CA-MKD reports it ("AEKD-feature"); SFKD paper 003 Table 7 uses it as "SFKD + AEKD-F". On one student map
  f (default ``stage:mid``, the authors' ``hint_layer=2``: the second stage's output) each teacher m has its own
  regressor r_m (FitNets' conv regressor as RepDistiller builds it: conv to the teacher's channels and grid,
  BN, ReLU) and the hint loss H_m = mean((r_m(f) − f_t,m)²) (MSE over all entries). The feature weights come
  from the gradients g_m = ∂H_m/∂f in the student's feature space (through r_m), once per step: their batch
  mean ḡ_m (a C·H·W vector) is scaled to unit length (the authors' solver normalises here, not for logits),
  β = argmin ‖Σ_m β_m ḡ_m/‖ḡ_m‖‖² on the same capped simplex (Σ β = 1, 0 ≤ β ≤ C), and mapped back,
  α_m = (β_m/‖ḡ_m‖) / Σ_k β_k/‖ḡ_k‖ (so Σ α_m ḡ_m points along the min-norm direction; α may exceed C).
  The logit and feature weights are solved separately; the loss is
  ``ce_weight``·CE + ``kd_weight``·Σ_m a_m T² KL_m (the ``aekd`` term) + ``hint_weight``·Σ_m α_m H_m,
  both weight vectors held constant. Differences from the authors' script: their loop leaves the feature term
  out in the first epoch; here it is on from the start. With ``method.mask.features`` each teacher's map is
  SFKD-masked before its H_m (the base class masks every teacher's outputs).

Multi-teacher methods get one feature-shape mapping per teacher in :meth:`build` (a list, in ``teachers`` order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillscopeError
from .adapters import hint_regressor
from .base import DistillMethod
from .registry import register_method


def ensemble_probabilities(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """(1/M) Σ_m softmax(t_m / T): the teachers' average softened distribution (masked -inf logits give 0)."""
    return torch.stack([F.softmax(t.float() / temperature, dim=1) for t in teacher_logits]).mean(0)


def project_capped_simplex(v: torch.Tensor, cap: float) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto {α : Σ α = 1, 0 ≤ α ≤ cap}: α = clip(v − λ, 0, cap).

    s(λ) = Σ clip(v − λ, 0, cap) is piecewise linear and non-increasing in λ with kinks at v_i and v_i − cap
    (s = M·cap ≥ 1 at the smallest kink, 0 at the largest): λ is interpolated on the segment where s crosses 1."""
    kinks = torch.cat([v, v - cap], dim=1).sort(dim=1).values
    mass = (v.unsqueeze(1) - kinks.unsqueeze(2)).clamp(0, cap).sum(2)  # s at each kink, non-increasing
    j = ((mass >= 1).sum(1, keepdim=True) - 1).clamp(0, kinks.shape[1] - 2)
    k0, k1, s0, s1 = kinks.gather(1, j), kinks.gather(1, j + 1), mass.gather(1, j), mass.gather(1, j + 1)
    shift = k0 + (s0 - 1) * (k1 - k0) / (s0 - s1).clamp_min(1e-30)
    return (v - shift).clamp(0, cap)


def min_norm_weights(gradients: torch.Tensor, cap: float, iterations: int = 300) -> torch.Tensor:
    """Per sample, α minimising ‖Σ_m α_m g_m‖² on the capped simplex; ``gradients`` is (B, M, C), result (B, M)."""
    b, m, _ = gradients.shape
    gram = gradients @ gradients.transpose(1, 2)  # (B, M, M)
    step = 1.0 / (2 * torch.linalg.eigvalsh(gram)[:, -1:].clamp_min(1e-12))
    alpha = torch.full((b, m), 1.0 / m, dtype=gradients.dtype, device=gradients.device)
    for _ in range(iterations):
        alpha = project_capped_simplex(alpha - step * 2 * (gram @ alpha.unsqueeze(2)).squeeze(2), cap)
    return alpha


@register_method("mtkd", family="multi-teacher", paper="Hinton et al., Distilling the Knowledge in a Neural Network (§2, ensembles)",
                 year=2015)
class MultiTeacherKD(DistillMethod):
    """Average of the teachers' softened logits, then KD. Defaults as ``kd``: T = 4, KD weight 0.9, CE 0.1."""

    multi_teacher = True

    def __init__(self, T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.T, self.kd_weight = T, kd_weight

    def distill_losses(self, student, teacher, batch, epoch):
        p_ensemble = ensemble_probabilities([t.logits for t in teacher], self.T)
        log_p_s = F.log_softmax(student.logits.float() / self.T, dim=1)
        return {"kd": self.kd_weight * F.kl_div(log_p_s, p_ensemble, reduction="batchmean") * self.T**2}


@register_method("aekd", family="multi-teacher",
                 paper="Du et al., Agree to Disagree: Adaptive Ensemble Knowledge Distillation in Gradient Space", year=2020)
class AdaptiveEnsembleKD(DistillMethod):
    """AEKD on logits: per-sample teacher weights from the student's logit gradients (module docstring).

    ``C`` is the tolerance (upper bound on any teacher's weight); the run must have at least 1/C teachers.
    ``weights``: ``sample`` (one weight vector per sample) or ``batch`` (one per step, as the authors' code).
    """

    multi_teacher = True

    def __init__(self, T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, label_smoothing: float = 0.0, C: float = 0.6,
                 weights: str = "sample"):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        if weights not in ("sample", "batch"):
            raise DistillscopeError(f"method aekd: weights={weights!r}; choose sample or batch")
        self.T, self.kd_weight, self.C, self.weights = T, kd_weight, C, weights
        self.last_weights: torch.Tensor | None = None  # (B, M) of the latest step, for inspection

    def teacher_weights(self, student_logits: torch.Tensor, teacher_logits: list[torch.Tensor]) -> torch.Tensor:
        """α* per sample (B, M), from g_m = T (softmax(s/T) − softmax(t_m/T)) (their batch mean with ``weights: batch``)."""
        p_s = F.softmax(student_logits.detach().float() / self.T, dim=1)
        gradients = torch.stack([self.T * (p_s - F.softmax(t.detach().float() / self.T, dim=1)) for t in teacher_logits], dim=1)
        if self.C * len(teacher_logits) < 1 - 1e-9:
            raise DistillscopeError(f"method aekd: C={self.C} with {len(teacher_logits)} teachers cannot make weights sum to 1; "
                                    f"set C >= {1 / len(teacher_logits):.3g}")
        if self.weights == "batch":
            return min_norm_weights(gradients.double().mean(0, keepdim=True), self.C).float().expand(len(gradients), -1)
        return min_norm_weights(gradients.double(), self.C).float()

    def distill_losses(self, student, teacher, batch, epoch):
        logits = [t.logits for t in teacher]
        alpha = self.teacher_weights(student.logits, logits)
        self.last_weights = alpha
        log_p_s = F.log_softmax(student.logits.float() / self.T, dim=1)
        per_teacher = torch.stack([F.kl_div(log_p_s, F.softmax(t.float() / self.T, dim=1), reduction="none").sum(1) for t in logits], dim=1)
        return {"kd": self.kd_weight * (alpha * per_teacher).sum(1).mean() * self.T**2}


@register_method("aekd_f", family="multi-teacher", paper="Du et al., Agree to Disagree (AEKD, the feature variant of the authors' code)",
                 year=2020)
class AdaptiveEnsembleFeatureKD(AdaptiveEnsembleKD):
    """AEKD-F: ``aekd`` on the logits plus a hint term with AEKD weights in the student's feature space (module docstring).

    Defaults: the ``aekd`` ones, the middle stage on both sides and ``hint_weight`` 100 (the authors' ``-b``,
    as FitNets in RepDistiller). ``weights`` applies to the logit term; feature weights are one per step.
    """

    def __init__(self, T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, label_smoothing: float = 0.0, C: float = 0.6,
                 weights: str = "sample", hint_weight: float = 100.0, student_tap: str = "stage:mid", teacher_tap: str = "stage:mid"):
        super().__init__(T=T, kd_weight=kd_weight, ce_weight=ce_weight, label_smoothing=label_smoothing, C=C, weights=weights)
        self.hint_weight, self.student_tap, self.teacher_tap = hint_weight, student_tap, teacher_tap
        self.regressors = nn.ModuleList()
        self.last_feature_weights: torch.Tensor | None = None  # (M,) of the latest step, for inspection

    taps_description = "each teacher's logits + stage:mid feature map"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"hint": self.student_tap}, {"hint": self.teacher_tap}

    def build(self, student_shapes, teacher_shapes, info):
        self.regressors = nn.ModuleList(hint_regressor("aekd_f", student_shapes["hint"], shapes["hint"], match="conv")
                                        for shapes in teacher_shapes)

    def feature_weights(self, gradients: torch.Tensor) -> torch.Tensor:
        """α (M,) from the per-teacher gradients ∂H_m/∂f, shape (M, B, ...): batch means, unit-normalised, min-norm β, α_m ∝ β_m/‖ḡ_m‖."""
        mean = gradients.detach().double().flatten(2).mean(1)
        norm = mean.norm(dim=1).clamp_min(1e-30)
        alpha = min_norm_weights((mean / norm[:, None]).unsqueeze(0), self.C)[0] / norm
        return (alpha / alpha.sum()).float()

    def distill_losses(self, student, teacher, batch, epoch):
        if len(teacher) != len(self.regressors):
            raise DistillscopeError(f"method aekd_f: built for {len(self.regressors)} teachers but got {len(teacher)}")
        losses = super().distill_losses(student, teacher, batch, epoch)
        feature = student.features["hint"]
        with torch.enable_grad():  # the weights need ∂H_m/∂f also when the losses are evaluated without gradients
            if not feature.requires_grad:
                feature = feature.detach().requires_grad_()
            hints = torch.stack([F.mse_loss(r(feature).float(), t.features["hint"].float()) for r, t in zip(self.regressors, teacher)])
            gradients = torch.stack([torch.autograd.grad(h, feature, retain_graph=True)[0] for h in hints])
        alpha = self.feature_weights(gradients)
        self.last_feature_weights = alpha
        losses["hint"] = self.hint_weight * (alpha * hints).sum()
        return losses
