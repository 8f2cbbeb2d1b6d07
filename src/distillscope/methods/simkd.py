"""SimKD (Chen et al., CVPR 2022): a projector into the teacher's feature space and its reused classifier."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillscopeError
from ..models import FeatureTaps
from .adapters import float32, pool_to, smaller_grid
from .base import DistillMethod
from .registry import register_method


def projector(cin: int, cout: int, factor: int) -> nn.Sequential:
    """Bottleneck 1×1 → 3×3 → 1×1 convs (each + BN + ReLU), width cout/factor, as the authors' SimKD module."""
    mid = max(1, cout // factor)
    return nn.Sequential(
        nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
        nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    )


@float32
def simkd_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(projected, teacher)


def classify(fc: nn.Linear, projected: torch.Tensor) -> torch.Tensor:
    """The teacher's classifier on the globally average-pooled projected map: SimKD's prediction."""
    return fc(torch.flatten(F.adaptive_avg_pool2d(projected, 1), 1))


class ProjectedStudent(nn.Module):
    """The deployable SimKD model: student backbone up to ``tap``, average-pooled to ``grid`` where larger,
    the projector, global average pooling and the teacher's frozen classifier ``fc``.

    It follows the zoo contract, so evaluation and the analysis use it as a whole model: ``forward`` returns
    logits, ``fc`` classifies the pooled last feature map (the projector's output), ``stage_taps`` are the
    backbone's then ``projector``, ``preact_taps`` likewise (the projector's last BN), ``embedding_tap`` is
    ``fc@input``.
    """

    def __init__(self, backbone: nn.Module, tap: str, grid: tuple[int, ...], projector: nn.Module, fc: nn.Linear):
        super().__init__()
        self.backbone, self.projector, self.fc = backbone, projector, fc
        self.tap, self.grid = tap, grid
        self.name = getattr(backbone, "name", type(backbone).__name__)
        prefixed = lambda taps: tuple(f"backbone.{t}" for t in getattr(backbone, taps, ()))  # noqa: E731
        self.stage_taps = prefixed("stage_taps") + ("projector",)
        self.preact_taps = prefixed("preact_taps") + (f"projector.{len(projector) - 2}",)
        self.embedding_tap = "fc@input"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with FeatureTaps(self.backbone, {"feature": self.tap}) as taps:
            feature = taps(x)[1]["feature"]
        projected = self.projector(pool_to(feature, self.grid))
        return classify(self.fc, projected)


@register_method("simkd", family="feature", paper="Chen et al., Knowledge Distillation with the Reused Teacher Classifier", year=2022)
class SimKD(DistillMethod):
    """SimKD: ``w · ‖P(s) − t‖²`` (mean) between the projected student feature map and the teacher's.

    The larger grid is average-pooled to the smaller; P is the bottleneck projector (student → teacher
    channels, width reduced by ``factor``). The teacher's classifier (``teacher_classifier``, a Linear on
    the pooled ``teacher_tap`` map) is copied, frozen, into the method; :meth:`deployable` returns the student
    through P and that classifier, which the trainer evaluates and saves and ``load_model`` rebuilds.
    Defaults are the authors' CIFAR-100 runs (``--distill simkd -c 0 -d 0 -b 1 --factor 2``): no label loss
    (``ce_weight`` 0), ``simkd_weight`` 1, ``factor`` 2, on the last stage of each model. The student's own
    classifier is not trained; ``train/top1``, like val/test, reads the prediction through the projector and
    the teacher's classifier.
    """

    def __init__(self, simkd_weight: float = 1.0, factor: int = 2, student_tap: str = "stage:-1", teacher_tap: str = "stage:-1",
                 teacher_classifier: str = "fc", ce_weight: float = 0.0, label_smoothing: float = 0.0):
        super().__init__(ce_weight=ce_weight, label_smoothing=label_smoothing)
        if factor < 1:
            raise DistillscopeError(f"method simkd: factor must be at least 1, got {factor}")
        self.simkd_weight, self.factor = simkd_weight, factor
        self.student_tap, self.teacher_tap, self.teacher_classifier = student_tap, teacher_tap, teacher_classifier
        self._classifier_state: dict[str, torch.Tensor] | None = None

    taps_description = "last stage (stage:-1) + the teacher's classifier"  # the methods table's taps column (default taps)

    def taps(self, student, teacher):
        try:
            classifier = teacher.get_submodule(self.teacher_classifier)
        except AttributeError:
            classifier = None
        if not isinstance(classifier, nn.Linear):
            raise DistillscopeError(f"method simkd: the teacher has no Linear classifier at '{self.teacher_classifier}'; set "
                                    "method.teacher_classifier to its module path")
        self._classifier_state = {k: v.detach().clone() for k, v in classifier.state_dict().items()}
        return {"f": self.student_tap}, {"f": self.teacher_tap}

    def build(self, student_shapes, teacher_shapes, info):
        s, t = student_shapes["f"], teacher_shapes["f"]
        if len(s) != 4 or len(t) != 4:
            raise DistillscopeError(f"method simkd: taps '{self.student_tap}'/'{self.teacher_tap}' must be feature maps (N, C, H, W), got "
                                    f"{tuple(s)} and {tuple(t)}")
        self.grid = smaller_grid(s, t)
        self.projector = projector(s[1], t[1], self.factor)
        self.fc = nn.Linear(t[1], info.num_classes).requires_grad_(False)
        if self._classifier_state is not None:
            weight = self._classifier_state["weight"]
            if tuple(weight.shape) != (info.num_classes, t[1]):
                raise DistillscopeError(
                    f"method simkd: the teacher classifier maps {weight.shape[1]} features to {weight.shape[0]} classes, but tap "
                    f"'{self.teacher_tap}' has {t[1]} channels and the data {info.num_classes} classes; tap the map the classifier pools"
                )
            self.fc.load_state_dict(self._classifier_state)
            self._classifier_state = None

    def distill_losses(self, student, teacher, batch, epoch):
        projected = self.projector(pool_to(student.features["f"], self.grid))
        target = pool_to(teacher.features["f"].detach(), self.grid)
        student.predictions = classify(self.fc, projected.detach())  # what the deployable model predicts
        return {"simkd": self.simkd_weight * simkd_loss(projected, target)}

    def deployable(self, student: nn.Module) -> nn.Module:
        head = getattr(student, "fc", None)
        if isinstance(head, nn.Linear):  # the student's own classifier is never used: frozen, so nothing pretends to train it
            head.requires_grad_(False)
        return ProjectedStudent(student, self.student_tap, self.grid, self.projector, self.fc)
