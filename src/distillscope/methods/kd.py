"""Vanilla KD (Hinton et al., 2015): T² · KL(softmax(t/T) ‖ softmax(s/T)) beside the label loss.

Also the logit helpers shared by the logit-based methods: the KL term and logit standardisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .registry import register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Batch-mean KL divergence of softened distributions, scaled by T² to keep gradients comparable.

    Teacher logits of -inf (classes removed by an SFKD mask) get probability 0 and add nothing (0·log 0 = 0).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    p_t = F.softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


def standardise(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): (z − mean(z)) / (std(z) + eps) per sample.

    std is the unbiased (n − 1) standard deviation, as in the paper's code. Entries of -inf (removed by an
    SFKD mask) stay -inf and are left out of the mean and std.
    """
    z = logits.float()
    finite = torch.isfinite(z)
    count = finite.sum(1, keepdim=True)
    kept = z.masked_fill(~finite, 0.0)
    mean = kept.sum(1, keepdim=True) / count
    var = (kept - mean).masked_fill(~finite, 0.0).pow(2).sum(1, keepdim=True) / (count - 1).clamp_min(1)
    return torch.where(finite, (kept - mean) / (var.sqrt() + eps), z)


@register_method("kd", family="logit", paper="Hinton et al., Distilling the Knowledge in a Neural Network", year=2015)
class KD(DistillMethod):
    """Hinton KD. Defaults: T = 4, KD weight 0.9, CE weight 0.1 (the CRD/mdistiller CIFAR-100 setting).

    ``logit_standardization: true`` z-scores both logit vectors per sample before the softmax (Sun et al.,
    2024); T is then their "base temperature": their CIFAR-100 setting is T = 2, KD weight 9, CE weight 1.
    """

    def __init__(self, T: float = 4.0, kd_weight: float = 0.9, ce_weight: float = 0.1, label_smoothing: float = 0.0,
                 logit_standardization: bool = False):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.T, self.kd_weight, self.logit_standardization = T, kd_weight, logit_standardization

    def distill_losses(self, student, teacher, batch, epoch):
        s, t = student.logits, teacher.logits
        if self.logit_standardization:
            s, t = standardise(s), standardise(t)
        return {"kd": self.kd_weight * kd_loss(s, t, self.T)}
