"""Reading a model's features at taps: the one helper the analyses use to run a model over images."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from ..models.taps import FeatureTaps

LOGITS = "logits"


@torch.no_grad()
def read_features(
    model: nn.Module,
    images: torch.Tensor,
    taps: Mapping[str, str] | Sequence[str],
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    *,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    cpu: bool = False,
    logits: bool = False,
) -> dict[str, torch.Tensor]:
    """``{name: features}`` of ``model`` in eval mode at the tap specs ``taps`` (see ``FeatureTaps``), in ``dtype``
    and shaped as the layers give them, one row per image.

    ``batch_size`` images at a time (None: all at once); each batch moves to ``device`` (default: the model's) and
    through ``prepare`` (e.g. normalisation) first. ``cpu`` gathers the features on the CPU batch by batch;
    ``logits`` adds the model's outputs as ``"logits"``. The model's train/eval mode is restored afterwards.
    """
    if device is None:
        device = next((p.device for p in model.parameters()), images.device)
    was_training = model.training
    model.eval()
    try:
        with FeatureTaps(model, taps) as tapped:
            if logits and LOGITS in tapped.taps:
                raise ValueError(f"a tap is named '{LOGITS}', the name the logits are read as")
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in [*tapped.taps, *[LOGITS] * logits]}
            for batch in [images] if batch_size is None else images.split(batch_size):
                x = batch.to(device)
                out, features = tapped(prepare(x) if prepare else x)
                if logits:
                    features = {**features, LOGITS: out}
                for name, value in features.items():
                    value = value.to(dtype)
                    parts[name].append(value.cpu() if cpu else value)
    finally:
        model.train(was_training)
    return {name: values[0] if len(values) == 1 else torch.cat(values) for name, values in parts.items()}
