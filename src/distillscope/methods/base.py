"""The method contract every KD / self-KD method follows.

A method is an ``nn.Module``. The trainer asks it which features to tap (:meth:`taps`), shows it the
shapes of those features and the training set's indices and labels once (:meth:`build`, where adapters
and per-sample buffers are created; adapter parameters join the optimiser), then calls it every step
with the student's and teacher's outputs, the batch (targets, sample indices, augmentation record) and
the epoch. It returns ``{term: loss}``; the trainer sums and logs the terms. Per-sample state lives in
the method's buffers (keyed by ``batch.index``) and is saved in checkpoints with the rest of its state.
Teacher-free methods set ``needs_teacher = False``; methods that update the teacher too (online/mutual
distillation) set ``freeze_teacher = False``.

Every method also accepts ``mask`` (SFKD salient masking, :mod:`.sfkd`): :meth:`forward` masks the
teacher's outputs once per step, before :meth:`distill_losses` sees them, so no method handles it.
Multi-teacher methods (``multi_teacher = True``, :mod:`.multi_teacher`) get a list of ``Outputs``, one per
teacher, and the mask is applied to each before the method combines them.

A method that wants a second view of every batch (e.g. MLKD's strongly augmented one) sets
``needs_extra_view`` and defines :meth:`extra_view`; the trainer runs the student (with gradient) and the
teacher(s) on that view too and hands their outputs over as ``student.view`` and ``teacher.view``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import Batch
from ..errors import DistillscopeError
from .sfkd import SalientMask, parse_mask


@dataclass
class TrainingInfo:
    """What a method may need to know about the run when it builds its state."""

    num_classes: int
    index: torch.Tensor  # dataset index of every training sample (keys of per-sample state)
    targets: torch.Tensor  # their labels, aligned with ``index``
    epochs: int
    steps_per_epoch: int

    @property
    def index_space(self) -> int:
        """Size of a table addressed by ``batch.index`` (indices survive validation splits)."""
        return int(self.index.max()) + 1


@dataclass
class Outputs:
    """A model's logits and its tapped features by tap name."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    view: Outputs | None = None  # the same model on the method's extra view (``needs_extra_view``)
    predictions: torch.Tensor | None = None  # set by a method whose deployable model predicts otherwise (SimKD); train top-1 reads it


class DistillMethod(nn.Module):
    """Base class: cross-entropy on the labels (weight ``ce_weight``) plus :meth:`distill_losses`."""

    needs_teacher: bool = True
    freeze_teacher: bool = True
    multi_teacher: bool = False  # takes ``teachers: [...]``; ``teacher`` is then a list of Outputs, one per teacher
    needs_pairs: bool = False  # the loader attaches ``batch.pair`` (rows from :meth:`pair_rows`); see forward
    needs_extra_view: bool = False  # the trainer runs the models on :meth:`extra_view` too (``Outputs.view``)
    prediction_split: str | None = None  # "train" | "val" | "test": see :meth:`on_predictions`
    run_warnings: tuple[str, ...] = ()  # printed by the trainer and recorded in the run's summary

    def __init__(self, ce_weight: float = 1.0, label_smoothing: float = 0.0, mask: dict | None = None):
        super().__init__()
        self.ce_weight = ce_weight
        self.label_smoothing = label_smoothing
        self.mask: SalientMask | None = None
        self.set_mask(mask)

    def set_mask(self, config: dict | None) -> None:
        """Set (or with ``None`` remove) the SFKD mask on the teacher's outputs from its YAML mapping."""
        if config is not None and not self.needs_teacher:
            raise DistillscopeError(f"method.mask: {type(self).__name__} uses no teacher, so there is nothing to mask; remove method.mask")
        self.mask = parse_mask(config)

    def taps(self, student: nn.Module, teacher: nn.Module | None) -> tuple[dict[str, str], dict[str, str]]:
        """Feature taps wanted on the student and on the teacher, as ``{name: tap spec}``."""
        return {}, {}

    def build(self, student_shapes: dict[str, torch.Size], teacher_shapes: dict[str, torch.Size], info: TrainingInfo) -> None:
        """Create modules and per-sample buffers from feature shapes (batch dim included) and the run's data."""

    def forward(self, student: Outputs, teacher: Outputs | None, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        if self.mask is not None and isinstance(teacher, list):  # several teachers: each is masked before they are combined
            teacher = [self.mask(t) for t in teacher]
        elif self.mask is not None and teacher is not None:
            teacher = self.mask(teacher)
        losses = {}
        if self.ce_weight:
            ce = F.cross_entropy(student.logits, batch.targets, label_smoothing=self.label_smoothing)
            losses["ce"] = self.ce_weight * ce
        losses.update(self.distill_losses(student, teacher, batch, epoch))
        return losses

    def distill_losses(self, student: Outputs, teacher: Outputs | None, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {}

    def deployable(self, student: nn.Module) -> nn.Module:
        """The model the trainer evaluates and saves as the run's result: the student itself, unless the method
        changes how the student predicts (SimKD: student → projector → teacher classifier). Such a method
        must build that model from ``build``'s shapes alone: ``engine.load_model`` rebuilds it from the run's
        method config and the feature shapes saved with the checkpoint."""
        return student

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (e.g. to freeze per-epoch targets)."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each training epoch (e.g. to finalise statistics gathered during it)."""

    def pair_rows(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """With ``needs_pairs``: a partner training row for each row of the epoch order ``rows``.

        Drawn from the loader's epoch generator after the anchors' order and augmentation, so plans
        replay exactly. The partners are augmented too; the trainer runs the student on them without
        gradient (train mode) and passes those outputs as ``teacher`` to :meth:`forward`.
        """
        raise NotImplementedError(f"{type(self).__name__} sets needs_pairs but does not define pair_rows")

    def extra_view(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """With ``needs_extra_view``: a second uint8 view (N, C, H, W) of the step's batch, made from ``pixels``,
        the batch's uint8 images as the loader augmented them. ``generator`` (CPU) is seeded by the run's seed,
        the epoch, the step in the epoch and the process rank, so replays and resumes are exact. The trainer
        normalises the view, runs the student on it with gradient and the teacher(s) as on the batch (a frozen
        teacher without; never from the teacher cache), and sets ``student.view`` / ``teacher.view``.
        """
        raise NotImplementedError(f"{type(self).__name__} sets needs_extra_view but does not define extra_view")

    def wants_predictions(self, epoch: int) -> bool:
        """Whether :meth:`on_predictions` is needed after ``epoch`` (skips a pass when it is not)."""
        return self.prediction_split is not None

    def on_predictions(self, epoch: int, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> None:
        """After an epoch: the eval-mode, un-augmented float32 CPU logits of ``prediction_split``."""
