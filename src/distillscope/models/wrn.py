"""Pre-activation Wide ResNets WRN-d-k (Zagoruyko & Komodakis 2016) as used by CRD.

Stem 3×3 conv to 16 channels, 3 stages (``block1..3``) of (d-4)/6 pre-activation
blocks with 16k/32k/64k channels, then final ``bn`` + ``relu`` and the classifier.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet import conv_bn, init_weights, pool_logits


class PreActBlock(nn.Module):
    """BN-ReLU-conv ×2; a 1×1 projection of the activated input when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1, self.bn2, self.relu2 = conv_bn(cin, cout, 3, stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if (cin == cout and stride == 1) else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        a = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(a))))
        return out + (x if self.shortcut is None else self.shortcut(a))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int = 100):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        cin = 16
        for i, cout in enumerate(widths, 1):
            blocks = [PreActBlock(cin, cout, 1 if i == 1 else 2)] + [PreActBlock(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"block{i}", nn.Sequential(*blocks))
            cin = cout
        self.bn, self.relu = nn.BatchNorm2d(cin), nn.ReLU()
        self.fc = nn.Linear(cin, num_classes)
        # taps: block outputs are pre-activation sums; a stage's activated output is the
        # BN-ReLU the next stage's first block (or the final bn/relu) applies to it, so
        # stage = that ReLU, preact = that BN (as CRD's preact feats for WRN).
        self.stage_taps = ("block2.0.relu1", "block3.0.relu1", "relu")
        self.preact_taps = ("block2.0.bn1", "block3.0.bn1", "bn")
        self.embedding_tap = "fc@input"
        init_weights(self)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return pool_logits(self.fc, self.relu(self.bn(x)))


def _register(depth: int, widen: int) -> None:
    @register_model(f"wrn_{depth}_{widen}")
    def factory(num_classes: int = 100, **kw) -> nn.Module:
        return WideResNet(depth, widen, num_classes, **kw)


for _depth, _widen in ((16, 1), (16, 2), (40, 1), (40, 2)):
    _register(_depth, _widen)
