"""Evaluation: logits over a loader and the metrics computed from them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..data.loader import Loader


@torch.no_grad()
def collect_logits(model: nn.Module, loader: Loader,
                   amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``model`` in eval mode over ``loader``; returns float32 ``(logits, targets, index)`` on the CPU."""
    was_training = model.training
    model.eval()
    logits, targets, index = [], [], []
    for batch in loader.epoch(0):
        with torch.autocast(loader.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(batch.images)
        logits.append(out.float().cpu())
        targets.append(batch.targets.cpu())
        index.append(batch.index.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(targets), torch.cat(index)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows have their target among the ``k`` largest logits (a 0-dim tensor)."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == targets[:, None]).any(dim=1).sum()


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Top-1/top-5 accuracy (%), mean negative log-likelihood and the sample count."""
    n = len(targets)
    return {
        "top1": 100.0 * topk_correct(logits, targets, 1).item() / n,
        "top5": 100.0 * topk_correct(logits, targets, 5).item() / n,
        "nll": F.cross_entropy(logits, targets).item(),
        "count": n,
    }


def evaluate(model: nn.Module, loader: Loader, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    logits, targets, _ = collect_logits(model, loader, amp_dtype)
    return classification_metrics(logits, targets)
