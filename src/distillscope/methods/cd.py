"""Confusion Distillation (Kang & Kim, 2026, arXiv:2606.03052): the model's own confusion rows as soft targets.

Q (Eq. 3) is the row-normalised hard-argmax confusion matrix of the model's eval-mode, un-augmented
predictions on ``confusion_source`` (rows = true class). Targets Q̃ start as the label-smoothing prior S
(Eq. 7: diagonal 1 − ε + ε/K, off-diagonal ε/K) and, after every epoch from the first phase switch on
(hard epochs too; so the first soft epoch trains on S, the next on one update), follow
Q̃ ← μ Q̃ + (1 − μ) Q (Eq. 6). Phases alternate hard/soft starting hard (``phases`` is a ratio,
scaled to the run's length). Hard epochs: CE. Soft epochs (Eqs. 8–9):
α · T² · KL(Q̃[y] ‖ softmax(z/T)) + β · CE, the target row not temperature-sharpened.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DistillscopeError
from .base import DistillMethod
from .registry import register_method

SOURCES, CONFUSIONS, STRUCTURES = ("train", "val", "test", "train_steps"), ("hard", "soft"), ("full", "diagonal", "shuffled")


def confusion_ratio(logits: torch.Tensor, targets: torch.Tensor, num_classes: int, soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Q (Eq. 3): row c = distribution of predictions over samples of true class c, and the per-class counts.

    ``soft`` averages softmax rows instead of counting argmax hits. Rows of absent classes are zero.
    """
    counts = torch.bincount(targets, minlength=num_classes).double()
    if soft:
        sums = torch.zeros(num_classes, num_classes, dtype=torch.float64).index_add_(0, targets, logits.double().softmax(1))
    else:
        hits = torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
        sums = hits.view(num_classes, num_classes).double()
    return sums / counts.clamp(min=1)[:, None], counts


def smoothing_prior(num_classes: int, epsilon: float) -> torch.Tensor:
    """S (Eq. 7): ``1 − ε + ε/K`` on the diagonal, ``ε/K`` elsewhere."""
    return torch.full((num_classes, num_classes), epsilon / num_classes) + (1 - epsilon) * torch.eye(num_classes)


def phase_ends(phases: list[int], epochs: int) -> list[int]:
    """The epoch at which each phase ends, the ratio ``phases`` scaled to ``epochs`` (last end = ``epochs``)."""
    total, ends, acc = sum(phases), [], 0
    for length in phases:
        acc += length
        ends.append(round(acc * epochs / total))
    return ends


def diagonal_only(table: torch.Tensor) -> torch.Tensor:
    """Keep each row's diagonal, spread its off-diagonal mass uniformly (dynamic label smoothing)."""
    k = table.shape[0]
    diag = table.diagonal()
    off = (table.sum(1) - diag) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=table.device)
    return torch.where(eye, diag[:, None], off[:, None])


def shuffle_off_diagonal(table: torch.Tensor, columns: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """Permute each row's off-diagonal entries (``columns``: the K−1 off-diagonal columns of each row)."""
    off = table.gather(1, columns)
    return table.scatter(1, columns, off.gather(1, permutation))


@register_method("cd", family="self", paper="Kang & Kim, Confusion Distillation (arXiv:2606.03052)", year=2026)
class ConfusionDistillation(DistillMethod):
    """Confusion Distillation. Defaults: the paper's CIFAR-100 setting (T = 2, α = ``cd_weight`` = 0.7,
    β = ``ce_weight`` = 0.3, ε = ``smoothing`` = 0.1, μ = ``momentum`` = 0.9, phases 30/30/60/30/150 of 300).

    ``confusion_source``: ``train`` (default), ``val`` (the predictions the epoch's evaluation makes
    anyway), ``test`` (the authors' code; leaks test labels into training: warned and recorded) or
    ``train_steps`` (not the paper's definition: the epoch's own training-step predictions, train mode and
    augmented, gathered for free, without the extra pass over the training set).
    ``confusion``: ``hard`` (Eq. 3) or ``soft`` (class-mean softmax). ``structure``: ``full``; ablations
    ``diagonal`` (same diagonal, uniform off-diagonal) and ``shuffled`` (each row's off-diagonal entries
    permuted once per run: same row marginals, structure destroyed). Q̃ is no longer updated once no
    soft epoch remains (it would never be used). Classes absent from the source keep their Q̃ row.
    """

    needs_teacher = False

    def __init__(
        self,
        T: float = 2.0,
        cd_weight: float = 0.7,
        ce_weight: float = 0.3,
        smoothing: float = 0.1,
        momentum: float = 0.9,
        phases: list | None = None,
        confusion_source: str = "train",
        confusion: str = "hard",
        structure: str = "full",
        label_smoothing: float = 0.0,
    ):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        phases = [30, 30, 60, 30, 150] if phases is None else phases
        for key, value, valid in (("confusion_source", confusion_source, SOURCES), ("confusion", confusion, CONFUSIONS),
                                  ("structure", structure, STRUCTURES)):
            if value not in valid:
                raise DistillscopeError(f"method cd: {key}={value!r} is not one of {', '.join(valid)}")
        if (not isinstance(phases, (list, tuple)) or not phases
                or not all(isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in phases)):
            raise DistillscopeError(f"method cd: phases={phases!r} should be a list of positive integers, e.g. [30, 30, 60, 30, 150]")
        if not (0 <= smoothing < 1 and 0 <= momentum < 1 and T > 0):
            raise DistillscopeError("method cd: needs 0 <= smoothing < 1, 0 <= momentum < 1 and T > 0")
        self.T, self.cd_weight, self.smoothing, self.momentum, self.phases = T, cd_weight, smoothing, momentum, list(phases)
        self.confusion, self.structure = confusion, structure
        self.source = confusion_source
        self.prediction_split = None if confusion_source == "train_steps" else confusion_source
        if confusion_source == "test":
            self.run_warnings = ("leaks test labels (confusion_source=test): Q is computed on the test set, so test labels shape training "
                                 "and test accuracy is optimistic; the authors' protocol, for comparison only",)

    def build(self, student_shapes, teacher_shapes, info):
        k = info.num_classes
        self.ends = phase_ends(self.phases, info.epochs)
        soft_epochs = [e for e in range(info.epochs) if self.is_soft(e)]
        self.last_soft_epoch = soft_epochs[-1] if soft_epochs else -1
        self.register_buffer("targets_table", smoothing_prior(k, self.smoothing))  # Q̃
        if self.structure == "shuffled":  # one permutation per row, drawn once from the seeded global RNG
            columns = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, k)]) for i in range(k)])
            self.register_buffer("off_columns", columns)
            self.register_buffer("off_permutation", torch.stack([torch.randperm(k - 1) for _ in range(k)]))
        if self.source == "train_steps":  # this epoch's per-class sums of predictions, and sample counts
            self.register_buffer("step_sums", torch.zeros(k, k, dtype=torch.float64))
            self.register_buffer("step_counts", torch.zeros(k, dtype=torch.float64))

    def is_soft(self, epoch: int) -> bool:
        """Phases alternate hard, soft, hard, ...; phase p covers epochs ``[ends[p-1], ends[p])``."""
        return sum(end <= epoch for end in self.ends) % 2 == 1

    def target_rows(self, targets: torch.Tensor) -> torch.Tensor:
        table = self.targets_table
        if self.structure == "diagonal":
            table = diagonal_only(table)
        elif self.structure == "shuffled":
            table = shuffle_off_diagonal(table, self.off_columns, self.off_permutation)
        return table[targets]

    def forward(self, student, teacher, batch, epoch):
        if self.source == "train_steps" and self.training and self.updates_after(epoch):
            self._gather(student.logits.detach(), batch.targets)
        ce = F.cross_entropy(student.logits, batch.targets, label_smoothing=self.label_smoothing)
        if not self.is_soft(epoch):
            return {"ce": ce}
        log_q = F.log_softmax(student.logits.float() / self.T, dim=1)
        kl = F.kl_div(log_q, self.target_rows(batch.targets), reduction="batchmean")
        return {"ce": self.ce_weight * ce, "cd": self.cd_weight * self.T**2 * kl}

    def updates_after(self, epoch: int) -> bool:
        """Q̃ is updated after ``epoch``: from the first phase switch on, while a soft epoch is still to come."""
        return self.ends[0] <= epoch < self.last_soft_epoch

    def wants_predictions(self, epoch: int) -> bool:
        return self.prediction_split is not None and self.updates_after(epoch)

    def on_predictions(self, epoch, logits, targets, index):
        q, counts = confusion_ratio(logits, targets, self.targets_table.shape[0], soft=self.confusion == "soft")
        self._update(q, counts)

    def on_epoch_end(self, epoch):
        if self.source == "train_steps" and self.updates_after(epoch):
            self._update(self.step_sums / self.step_counts.clamp(min=1)[:, None], self.step_counts)
            self.step_sums.zero_()
            self.step_counts.zero_()

    @torch.no_grad()
    def _gather(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        k = self.targets_table.shape[0]
        rows = logits.float().softmax(1) if self.confusion == "soft" else F.one_hot(logits.argmax(1), k)
        self.step_sums.index_add_(0, targets, rows.double())
        self.step_counts.index_add_(0, targets, torch.ones_like(targets, dtype=torch.float64))

    def _update(self, q: torch.Tensor, counts: torch.Tensor) -> None:
        """Eq. 6 on the rows of classes that had samples."""
        q, seen = q.to(self.targets_table), (counts > 0).to(self.targets_table.device)
        updated = self.momentum * self.targets_table + (1 - self.momentum) * q
        self.targets_table.copy_(torch.where(seen[:, None], updated, self.targets_table))
