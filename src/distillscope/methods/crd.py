"""Contrastive representation distillation (Tian et al., ICLR 2020) with memory banks and NCE."""
from __future__ import annotations

import math

import torch

from ..errors import DistillscopeError
from .adapters import Embed, float32
from .base import DistillMethod
from .registry import register_method

EPS = 1e-7


@float32
def nce_loss(scores: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE objective (paper Eq. 18) for normalised scores ``P`` of shape (b, 1 + K), the positive first.

    With noise ``P_n = 1/N``: ``−[Σ_i log(P_i0 / (P_i0 + K·P_n)) + Σ_ik log(K·P_n / (P_ik + K·P_n))] / b``.
    """
    noise = (scores.shape[1] - 1) / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


@register_method("crd", family="feature", paper="Tian et al., Contrastive Representation Distillation", year=2020)
class CRD(DistillMethod):
    """CRD on the penultimate embeddings: ``β · (L_NCE(student anchors) + L_NCE(teacher anchors))`` + label loss.

    Each side is embedded (linear to ``feat_dim`` + L2 norm). Two memory banks of ``info.index_space`` rows
    (registered buffers, so checkpointed and resumed) hold momentum-averaged embeddings addressed by
    ``batch.index``. A student embedding is scored against the teacher bank at its own row (positive) and
    at ``nce_k`` rows of samples of *other* classes (negatives, CRD's "exact" mode, drawn uniformly with
    replacement from ``info.targets`` with torch's global RNG, which checkpoints restore), and vice versa:
    ``P = exp(vᵀm / T) / Z``, Z fixed at the first batch as mean(exp) · N. After the step each bank row of the
    batch becomes ``normalise(μ·m + (1 − μ)·v)``. Defaults are the paper's CIFAR-100 setting (RepDistiller
    ``--distill crd -a 0 -b 0.8``): β = ``crd_weight`` = 0.8, CE weight 1, ``feat_dim`` 128, K = 16384,
    T = 0.07, μ = 0.5. CRD draws each sample's K negatives without replacement; here they are drawn with
    replacement so that the draw batches on the device.
    """

    def __init__(self, crd_weight: float = 0.8, feat_dim: int = 128, nce_k: int = 16384, nce_t: float = 0.07, nce_momentum: float = 0.5,
                 student_tap: str = "embedding", teacher_tap: str = "embedding", ce_weight: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        if nce_k < 1 or not 0 <= nce_momentum < 1 or nce_t <= 0:
            raise DistillscopeError(f"method crd: need nce_k >= 1, 0 <= nce_momentum < 1 and nce_t > 0 (got {nce_k}, {nce_momentum}, "
                                    f"{nce_t})")
        self.crd_weight, self.feat_dim, self.nce_k, self.nce_t, self.nce_momentum = crd_weight, feat_dim, nce_k, nce_t, nce_momentum
        self.student_tap, self.teacher_tap = student_tap, teacher_tap

    taps_description = "embedding (penultimate features)"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        return {"f": self.student_tap}, {"f": self.teacher_tap}

    def build(self, student_shapes, teacher_shapes, info):
        self.embed_student = Embed(math.prod(student_shapes["f"][1:]), self.feat_dim)
        self.embed_teacher = Embed(math.prod(teacher_shapes["f"][1:]), self.feat_dim)
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        for side in ("student", "teacher"):
            self.register_buffer(f"memory_{side}", torch.rand(info.index_space, self.feat_dim) * 2 * bound - bound)
        self.register_buffer("normalizers", torch.zeros(2))  # Z for student and teacher anchors; 0 = not yet set
        # negatives of class c: sample positions outside c's block of the class-sorted index
        targets = info.targets.long()
        counts = torch.bincount(targets, minlength=info.num_classes)
        if int((len(targets) - counts[targets]).min()) < 1:
            raise DistillscopeError("method crd: every training sample needs samples of other classes as negatives; "
                                    "the training set has one class")
        self.register_buffer("by_class", info.index[torch.argsort(targets, stable=True)].long(), persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.n_data = len(targets)

    def draw_negatives(self, targets: torch.Tensor) -> torch.Tensor:
        """``nce_k`` dataset indices per sample, uniform over training samples of other classes."""
        start, count = self.class_start[targets][:, None], self.class_count[targets][:, None]
        r = torch.randint(0, 1 << 62, (len(targets), self.nce_k), device=targets.device) % (self.n_data - count)
        return self.by_class[r + count * (r >= start)]

    def distill_losses(self, student, teacher, batch, epoch):
        v_s = self.embed_student(student.features["f"])
        v_t = self.embed_teacher(teacher.features["f"].detach())
        rows = torch.cat([batch.index[:, None], self.draw_negatives(batch.targets)], dim=1)
        with torch.autocast(v_s.device.type, enabled=False):  # scoring all rows and picking is lighter than gathering b·(K+1) rows
            scores_s = torch.exp((v_s @ self.memory_teacher.T).gather(1, rows) / self.nce_t)
            scores_t = torch.exp((v_t @ self.memory_student.T).gather(1, rows) / self.nce_t)
            if self.training:
                first = torch.stack([scores_s.mean(), scores_t.mean()]).detach() * self.n_data
                self.normalizers.copy_(torch.where(self.normalizers > 0, self.normalizers, first))
                self._update_memory(batch.index, v_s.detach(), v_t.detach())
        loss = nce_loss(scores_s / self.normalizers[0], self.n_data) + nce_loss(scores_t / self.normalizers[1], self.n_data)
        return {"crd": self.crd_weight * loss}

    @torch.no_grad()
    def _update_memory(self, index: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Out of place: this step's backward still needs the banks it scored against."""
        for name, v in (("memory_student", v_s), ("memory_teacher", v_t)):
            memory = getattr(self, name)
            mixed = memory[index] * self.nce_momentum + v * (1 - self.nce_momentum)
            setattr(self, name, memory.index_copy(0, index, mixed / mixed.norm(dim=1, keepdim=True)))
