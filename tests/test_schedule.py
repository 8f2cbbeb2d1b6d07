import math

import pytest

from distillscope.config import OptimConfig
from distillscope.engine import lr_at


def test_multistep_drops_at_milestones():
    cfg = OptimConfig(lr=0.1, schedule="multistep", milestones=[2, 4], gamma=0.1)
    values = [lr_at(cfg, epoch * 10, 10, 6) for epoch in range(6)]
    assert values == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_linear_warmup_then_cosine_to_zero():
    cfg = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1)
    assert lr_at(cfg, 0, 10, 5) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 10, 5) == pytest.approx(1.0)
    assert lr_at(cfg, 30, 10, 5) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cfg, 49, 10, 5) < 0.01


def test_onecycle_peaks_then_decays_to_zero():
    cfg = OptimConfig(lr=0.2, schedule="onecycle", warmup_epochs=2)
    lrs = [lr_at(cfg, s, 10, 10) for s in range(100)]
    assert max(lrs) == pytest.approx(0.2) and lrs.index(max(lrs)) == 19
    assert lrs[-1] == pytest.approx(0.2 / 80) and all(a >= b for a, b in zip(lrs[20:], lrs[21:]))


def test_constant():
    assert lr_at(OptimConfig(lr=0.3, schedule="constant"), 123, 10, 20) == 0.3
