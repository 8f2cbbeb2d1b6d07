"""DKD: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .kd import standardise
from .registry import register_method


def dkd_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch-mean KL scaled by T².

    TCKD compares the binary split b = (p_target, 1 − p_target) of softmax(z/T); NCKD compares the
    distributions over the non-target classes alone, p̂_j = p_j / (1 − p_target). A teacher with no
    non-target mass left (every other class removed by an SFKD -inf mask) contributes no NCKD.
    """
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature
    is_target = F.one_hot(targets, s.shape[1]).bool()

    def binary_log_probs(z):
        log_p = F.log_softmax(z, dim=1)
        target = log_p.gather(1, targets[:, None])
        rest = log_p.masked_fill(is_target, float("-inf")).logsumexp(1, keepdim=True)
        return torch.cat([target, rest], dim=1)

    b_t = binary_log_probs(t).exp()
    tckd = F.kl_div(binary_log_probs(s), b_t, reduction="batchmean")
    # the student's target logit is pushed out of the softmax by a large finite offset (as the paper's
    # code does), so its log-probability stays finite where the teacher's probability is exactly 0
    log_q_s = F.log_softmax(s - 1000.0 * is_target, dim=1)
    q_t = F.softmax(t.masked_fill(is_target, float("-inf")), dim=1).nan_to_num(0.0)
    nckd = F.kl_div(log_q_s, q_t, reduction="batchmean")
    return tckd * temperature**2, nckd * temperature**2


@register_method("dkd", family="logit", paper="Zhao et al., Decoupled Knowledge Distillation", year=2022)
class DKD(DistillMethod):
    """Decoupled KD: α·TCKD + β·NCKD, ramped in linearly over the first ``warmup_epochs``.

    The distillation terms are scaled by min((epoch + 1) / warmup_epochs, 1), epochs counted from 1 as in
    the paper's code. Defaults: the paper's CIFAR-100 setting (α = 1, β = 8, T = 4, 20 warm-up epochs, CE
    weight 1; it uses β = 6 for wrn_40_2→wrn_16_2 and vgg13→vgg8).

    ``logit_standardization: true`` z-scores both logit vectors first (Sun et al., 2024). Their released
    code runs DKD+LS with α = 9, β = 81 and T = 4 (its base-temperature option does not reach DKD).
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        T: float = 4.0,
        warmup_epochs: float = 20.0,
        ce_weight: float = 1.0,
        label_smoothing: float = 0.0,
        logit_standardization: bool = False,
    ):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.alpha, self.beta, self.T, self.warmup_epochs = alpha, beta, T, warmup_epochs
        self.logit_standardization = logit_standardization

    def distill_losses(self, student, teacher, batch, epoch):
        s, t = student.logits, teacher.logits
        if self.logit_standardization:
            s, t = standardise(s), standardise(t)
        tckd, nckd = dkd_losses(s, t, batch.targets, self.T)
        ramp = min((epoch + 1) / self.warmup_epochs, 1.0) if self.warmup_epochs > 0 else 1.0
        return {"tckd": ramp * self.alpha * tckd, "nckd": ramp * self.beta * nckd}
