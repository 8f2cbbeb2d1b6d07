"""MobileNetV2 (Sandler et al. 2018), the CRD "mobile_half" CIFAR variant.

Width multiplier 0.5, expansion T=6, a stride-2 3×3 stem (32×32 → 16×16), seven
inverted-residual groups ``blocks.0..6`` (CIFAR strides 1,1,2,2,1,2,1; every block
keeps its 1×1 expansion conv, even at t=1), a 1×1 head ``conv2`` to 1280 channels
and the classifier ``fc``.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet import conv_bn, init_weights, pool_logits

# (expansion t, channels c, repeats n, first stride s) at width 1.0; t=None means "T"
_SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
            (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, 1×1 linear projection; identity skip when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_skip = stride == 1 and cin == cout
        self.conv = nn.Sequential(*conv_bn(cin, hidden, 1), *conv_bn(hidden, hidden, 3, stride, groups=hidden),
                                  *conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_skip else out


class MobileNetV2(nn.Module):
    def __init__(self, expand: int = 6, width: float = 0.5, num_classes: int = 100):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = nn.Sequential(*conv_bn(3, cin, 3, 2))
        groups = []
        for t, c, n, s in _SETTING:
            cout = int(c * width)
            blocks = []
            for j in range(n):
                blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, expand if t is None else t))
                cin = cout
            groups.append(nn.Sequential(*blocks))
        self.blocks = nn.ModuleList(groups)
        last = 1280 if width <= 1.0 else int(1280 * width)
        self.conv2 = nn.Sequential(*conv_bn(cin, last, 1))
        self.fc = nn.Linear(last, num_classes)
        # taps: groups before each stride-2 group, then the 1×1 head (whose channels feed fc);
        # linear bottlenecks have no final activation, so their preact tap is the stage itself
        self.stage_taps = ("blocks.1", "blocks.2", "blocks.4", "conv2")
        self.preact_taps = ("blocks.1", "blocks.2", "blocks.4", "conv2.1")
        self.embedding_tap = "fc@input"
        init_weights(self)

    def forward(self, x):
        x = self.conv1(x)
        for group in self.blocks:
            x = group(x)
        return pool_logits(self.fc, self.conv2(x))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 100, **kw) -> nn.Module:
    """CRD's ``mobile_half``: T=6, width 0.5."""
    return MobileNetV2(6, 0.5, num_classes, **kw)
