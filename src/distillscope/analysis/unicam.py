"""UniCAM (Adhane et al., "On Explaining Knowledge Distillation", Sec. 3.1, Alg. 1).

For a batch of n images, model X's features x and model Y's features y at a layer, and label embeddings
g of the batch's classes, the objective is the semi-partial distance correlation R²(X|Y, G) =
R*(P_Y⊥ X̃, G̃) (``dcor.semipartial_r2``: X's U-centred distance matrix with Y's component projected out,
correlated with G's; UniCAM eq. 1-4). The UniCAM map is the Grad-CAM (eq. 5-6) of that objective at X's
layer. With X = the KD student and Y = its base (same architecture trained without KD, or the teacher)
it shows the *distilled* features; with X and Y swapped the *residual* ones.

The objective couples the images of a batch, so a map depends on the batch it was computed in: batches
are drawn from a seeded permutation, and ``batch_size`` and ``seed`` go into every result. Batches with
fewer than 2 classes (G's distance matrix is then zero) or fewer than 4 images (U-centring needs n ≥ 4)
are skipped with a note. Several layers give one map each (the per-layer variant) and their mean.
Token layers ((B, T, C) transformer outputs) are read as maps, class token dropped, in both models and in the
objective (``tokens``, as in ``cam.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DistillscopeError
from ..models.taps import Tokens, with_tokens
from .cam import CAM, GradCAM
from .dcor import semipartial_r2
from .embeddings import LabelEmbeddings
from .features import read_features

LayerSpecs = Mapping[str, "str | tuple[str, str]"] | Sequence[str]


def layer_pairs(layers: LayerSpecs) -> dict[str, tuple[str, str]]:
    """``{name: (spec in X, spec in Y)}``; a single spec is used in both models (e.g. ``stage:-1``)."""
    if not isinstance(layers, Mapping):
        layers = {spec: spec for spec in layers}
    if not layers:
        raise DistillscopeError("UniCAM needs at least one layer, e.g. stage:-1")
    return {name: (spec, spec) if isinstance(spec, str) else tuple(spec) for name, spec in layers.items()}


def skip_reason(targets: torch.Tensor) -> str | None:
    """Why a batch has no UniCAM objective, or None when it has one."""
    if len(targets) < 4:
        return f"batch of {len(targets)} images skipped: U-centred distance correlation needs at least 4"
    if len(targets.unique()) < 2:
        return f"batch of {len(targets)} images skipped: it holds one class only, so R²(X|Y, G) is undefined"
    return None


@dataclass
class UniCAMResult:
    """``maps`` (B, H, W): mean over layers; ``layers``: per-layer maps; ``r2``: R²(X|Y, G) per layer.
    A skipped batch has ``maps`` None and the reason in ``skipped``."""

    maps: torch.Tensor | None
    layers: dict[str, torch.Tensor] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None


class UniCAM:
    """UniCAM of ``model_x`` given ``model_y`` at ``layers`` (tap specs, or ``{name: (spec_x, spec_y)}``)."""

    def __init__(self, model_x: nn.Module, model_y: nn.Module, layers: LayerSpecs, embeddings: LabelEmbeddings, cam: type[CAM] = GradCAM,
                 tokens: Tokens = "auto"):
        self.model_x, self.model_y, self.embeddings, self.cam, self.tokens = model_x, model_y, embeddings, cam, tokens
        self.pairs = {name: (with_tokens(x, tokens), with_tokens(y, tokens)) for name, (x, y) in layer_pairs(layers).items()}

    @torch.no_grad()
    def _y_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = read_features(self.model_y, images, {name: spec_y for name, (_, spec_y) in self.pairs.items()}, dtype=torch.float64)
        return {name: f.flatten(1) for name, f in features.items()}

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> UniCAMResult:
        reason = skip_reason(targets)
        if reason:
            return UniCAMResult(None, skipped=reason)
        g = self.embeddings[targets].double()
        y_features = self._y_features(images)
        result = UniCAMResult(None)
        for name, (spec_x, _) in self.pairs.items():

            def objective(logits, features, name=name):
                return semipartial_r2(features[name].flatten(1).double(), y_features[name], g)

            cam = self.cam(self.model_x, {name: spec_x}, tokens=self.tokens)(images, objective)
            result.layers[name], result.r2[name] = cam.layers[name], cam.objective
        result.maps = torch.stack(list(result.layers.values())).mean(dim=0)
        return result


def batch_rows(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Rows 0..n-1 in a permutation drawn from ``seed``, cut into batches of ``batch_size``."""
    if batch_size < 4:
        raise DistillscopeError(f"UniCAM batch size must be at least 4 (U-centring), got {batch_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(order.split(batch_size))


def unicam_maps(unicam: UniCAM, images: torch.Tensor, targets: torch.Tensor, batch_size: int, seed: int, progress: bool = True,
                desc: str = "UniCAM") -> dict:
    """UniCAM maps of every image, each computed within its seeded batch.

    Returns ``maps`` (N, H, W; zeros where skipped), ``layers`` ({name: (N, H, W)}), ``valid`` (N,) bool,
    ``r2`` (per batch and layer), ``batch_size``, ``seed`` and ``notes`` (skipped batches).
    """
    n, size = len(images), images.shape[-2:]
    maps = torch.zeros(n, *size)
    layers = {name: torch.zeros(n, *size) for name in unicam.pairs}
    valid = torch.zeros(n, dtype=torch.bool)
    r2, notes = [], []
    for rows in tqdm(batch_rows(n, batch_size, seed), desc=desc, disable=None if progress else True, leave=False):
        device_rows = rows.to(images.device)
        result = unicam(images[device_rows], targets[device_rows])
        if result.skipped:
            notes.append(result.skipped)
            continue
        maps[rows] = result.maps.cpu()
        for name, layer_map in result.layers.items():
            layers[name][rows] = layer_map.cpu()
        valid[rows] = True
        r2.append(result.r2)
    return {"maps": maps, "layers": layers, "valid": valid, "r2": r2, "batch_size": batch_size, "seed": seed, "notes": notes}


def distilled_and_residual(student: nn.Module, base: nn.Module, layers: LayerSpecs, embeddings: LabelEmbeddings, cam: type[CAM] = GradCAM,
                           tokens: Tokens = "auto") -> tuple[UniCAM, UniCAM]:
    """UniCAM of the student given its base (distilled) and of the base given the student (residual)."""
    pairs = layer_pairs(layers)
    swapped = {name: (spec_b, spec_s) for name, (spec_s, spec_b) in pairs.items()}
    return UniCAM(student, base, pairs, embeddings, cam, tokens), UniCAM(base, student, swapped, embeddings, cam, tokens)
