"""Progressive self-knowledge distillation, PS-KD (Kim et al., ICCV 2021).

Targets ``(1 − α_t) · onehot(y) + α_t · P[i]`` with ``α_t = α_T · (epoch + 1) / E``, where ``P[i]`` is
the softmax the model gave sample ``i`` the last time it was trained on (the previous epoch; one-hot
before its first visit), no temperature; loss = soft cross-entropy. As in the official code, ``P[i]``
is read, then overwritten with this step's prediction, in one buffer addressed by ``batch.index``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import DistillMethod
from .registry import register_method


@register_method("pskd", family="self", paper="Kim et al., Self-Knowledge Distillation with Progressive Refinement of Targets", year=2021)
class ProgressiveSelfKD(DistillMethod):
    """PS-KD. Default: the paper's CIFAR-100 setting α_T = 0.8 (the soft CE replaces the label CE)."""

    needs_teacher = False

    def __init__(self, alpha_T: float = 0.8, ce_weight: float = 0.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        self.alpha_T = alpha_T

    def build(self, student_shapes, teacher_shapes, info):
        self.epochs = info.epochs
        previous = torch.zeros(info.index_space, info.num_classes)
        previous[info.index, info.targets.long()] = 1.0
        self.register_buffer("previous", previous)  # P: last prediction per sample, one-hot at the start

    def alpha(self, epoch: int) -> float:
        return self.alpha_T * (epoch + 1) / self.epochs

    def distill_losses(self, student, teacher, batch, epoch):
        a = self.alpha(epoch)
        onehot = F.one_hot(batch.targets, student.logits.shape[1]).float()
        soft_targets = (1 - a) * onehot + a * self.previous[batch.index]
        log_p = F.log_softmax(student.logits.float(), dim=1)
        if self.training:
            self.previous[batch.index] = log_p.detach().exp()
        return {"pskd": -(soft_targets * log_p).sum(1).mean()}
