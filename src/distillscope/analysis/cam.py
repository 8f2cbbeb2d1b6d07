"""Gradient class-activation maps on any tapped layer, for any scalar objective.

For an activation ``A`` (B×K×h×w) at a tapped layer and the gradient ``G = ∂y/∂A`` of a scalar
objective ``y``:

* Grad-CAM (Selvaraju et al. 2017, Eq. 1-2): ``ReLU(Σ_k α_k A_k)`` with ``α_k = mean_ij G_kij``;
* HiResCAM (Draelos & Carin 2020, Eq. 4): ``ReLU(Σ_k G_k ⊙ A_k)`` (element-wise, no averaging).

The objective is a class logit (``class_logit``), a softmax probability (``softmax_target``) or any
callable ``objective(logits, features) -> tensor``; a per-image (B,) result is summed over the batch,
which in eval mode gives each image the gradient of its own objective. Each layer's map is upsampled
bilinearly to the image size, then min–max normalised per image to [0, 1] (a constant map becomes 0);
several layers are averaged.

Token layers (a transformer block's (B, T, C) output) are read as (B, C, H, W) maps: ``tokens="auto"`` (the
default) appends ``@tokens`` to every layer spec, which drops the class token (1 prefix token when T − 1 is a
square, none when T is) and lays the patch tokens out row-major on an H = W = sqrt(T − prefix) grid; ``tokens=N``
drops N prefix tokens; a spec may name its own (``blocks.5@tokens:1``); ``tokens=None`` leaves tokens as they are
(see ``models/taps.py``). Convolutional layers are unaffected.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DistillscopeError, warn
from ..models.taps import FeatureTaps, Tokens, with_tokens

ObjectiveFn = Callable[[torch.Tensor, dict], torch.Tensor]
Objective = Union[None, int, torch.Tensor, ObjectiveFn]


def class_logit(targets: int | torch.Tensor) -> ObjectiveFn:
    """Objective: the logit of class ``targets`` (one int for all images, or one per image)."""
    return lambda logits, features: _pick(logits, targets)


def softmax_target(targets: int | torch.Tensor) -> ObjectiveFn:
    """Objective: the softmax probability of class ``targets``."""
    return lambda logits, features: _pick(logits.float().softmax(dim=1), targets)


def _pick(scores: torch.Tensor, targets: int | torch.Tensor) -> torch.Tensor:
    targets = torch.as_tensor(targets, device=scores.device).long().expand(scores.shape[0])
    return scores.gather(1, targets[:, None]).squeeze(1)


def resolve_objective(objective: Objective) -> ObjectiveFn:
    """``None`` → the predicted class's logit; an int or index tensor → that class's logit; a callable as is."""
    if objective is None:
        return lambda logits, features: _pick(logits, logits.argmax(dim=1))
    if callable(objective):
        return objective
    if isinstance(objective, (int, torch.Tensor)):
        return class_logit(objective)
    raise DistillscopeError(f"CAM objective must be None, a class index, an index tensor or a callable, got {type(objective).__name__}")


def upsample(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` (half-pixel centres, ``align_corners=False``)."""
    return F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def minmax_normalise(maps: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image ``(m - min) / (max - min)``; images whose map is constant become all zeros."""
    flat = maps.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low)[:, None, None]
    return torch.where(span > eps, (maps - low[:, None, None]) / span.clamp_min(eps), torch.zeros_like(maps))


@dataclass
class CAMResult:
    """``maps``: (B, H, W) mean over layers; ``layers``: each layer's normalised (B, H, W) map;
    ``raw``: each layer's map at feature resolution before upsampling and normalisation;
    ``logits``; ``objective``: the summed objective's value."""

    maps: torch.Tensor
    layers: dict[str, torch.Tensor]
    raw: dict[str, torch.Tensor]
    logits: torch.Tensor
    objective: float


class CAM:
    """Base class: differentiates an objective w.r.t. tapped activations; subclasses define :meth:`combine`.

    ``layers`` are tap specs (``{name: spec}`` or a list of specs, see ``FeatureTaps``) whose activations
    must be (B, K, h, w), or (B, tokens, K) read as maps (``tokens``, see the module docstring).
    ``objective_taps`` are further taps handed to a callable objective only (e.g. the features whose distance
    correlation UniCAM differentiates).
    """

    def __init__(self, model: nn.Module, layers: Mapping[str, str] | Sequence[str], objective_taps: Mapping[str, str] | None = None,
                 tokens: Tokens = "auto"):
        self.model = model
        self.layers = dict(layers) if isinstance(layers, Mapping) else {spec: spec for spec in layers}
        self.layers = {name: with_tokens(spec, tokens) for name, spec in self.layers.items()}
        if not self.layers:
            raise DistillscopeError("CAM needs at least one layer (a tap spec such as 'stage:-1' or a module path)")
        clash = set(self.layers) & set(objective_taps or {})
        if clash:
            raise DistillscopeError(f"CAM: names {sorted(clash)} are used both as layers and as objective taps; rename one")
        self.taps = {**self.layers, **(objective_taps or {})}

    @staticmethod
    def combine(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) activation and gradient -> (B, h, w) map before ReLU."""
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, objective: Objective = None) -> CAMResult:
        objective_fn = resolve_objective(objective)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad(), FeatureTaps(self.model, self.taps) as taps:
                logits, features = taps(images.detach().requires_grad_(True))
                value = objective_fn(logits, features)
                if value.ndim > 1 or not value.is_floating_point():
                    raise DistillscopeError("CAM objective must return a float scalar or one value per image, "
                                            f"got {value.dtype} {tuple(value.shape)}")
                value = value.sum()
                activations = [features[name] for name in self.layers]
                for name, act in zip(self.layers, activations):
                    if act.ndim != 4:
                        raise DistillscopeError(f"CAM layer '{name}' gives a {tuple(act.shape)} feature; CAM needs (B, C, H, W) or "
                                                f"(B, tokens, C) read as a map (tokens='auto'): tap a convolutional stage or a token layer")
                grads = torch.autograd.grad(value, activations, allow_unused=True)
        finally:
            self.model.train(was_training)
        raw, layers = {}, {}
        for name, act, grad in zip(self.layers, activations, grads):
            if grad is None:
                raise DistillscopeError(f"CAM objective does not depend on layer '{name}' (no gradient reaches it)")
            if not grad.any():
                warn(f"CAM layer '{name}': the objective's gradient is zero there for every image, so its map is empty "
                     f"(in a ViT only the last block's class token reaches the head: tap an earlier block, e.g. stage:-1)")
            raw[name] = F.relu(self.combine(act.detach().float(), grad.float()))
            layers[name] = minmax_normalise(upsample(raw[name], images.shape[-2:]))
        maps = torch.stack(list(layers.values())).mean(dim=0)
        return CAMResult(maps, layers, raw, logits.detach(), float(value.detach()))


class GradCAM(CAM):
    """Grad-CAM: channel weights are the spatially averaged gradients."""

    @staticmethod
    def combine(activation, gradient):
        return (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)


class HiResCAM(CAM):
    """HiResCAM: element-wise gradient × activation, summed over channels (faithful to the score)."""

    @staticmethod
    def combine(activation, gradient):
        return (gradient * activation).sum(dim=1)


CAM_METHODS = {"gradcam": GradCAM, "hirescam": HiResCAM}
