"""Learning-rate schedules as a pure function of the step (so resuming needs only the step count)."""
from __future__ import annotations

import bisect
import math

from ..config import OptimConfig


def lr_at(cfg: OptimConfig, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based): warm-up, then the chosen schedule."""
    epoch = step / steps_per_epoch
    if cfg.schedule == "onecycle":
        peak = cfg.warmup_epochs or 0.3 * epochs
        if epoch < peak:
            return cfg.lr * (step + 1) / (peak * steps_per_epoch)
        return cfg.lr * max(0.0, (epochs - epoch) / (epochs - peak))
    factor = (step + 1) / (cfg.warmup_epochs * steps_per_epoch) if epoch < cfg.warmup_epochs else 1.0
    if cfg.schedule == "multistep":
        factor *= cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), int(epoch))
    elif cfg.schedule == "cosine":
        progress = max(0.0, epoch - cfg.warmup_epochs) / max(1e-8, epochs - cfg.warmup_epochs)
        factor *= 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * factor
