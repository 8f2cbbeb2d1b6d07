"""CIFAR VGG with BatchNorm, as in RepDistiller/CRD.

Five conv blocks ``block0..block4`` (3×3 conv with bias, BN, ReLU); 2×2 max-pools
after blocks 0-2 only, so a 32×32 input reaches block3/block4 at 4×4; then global
average pooling and a single linear classifier ``fc`` (512 → classes).
"""
from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet import conv_bn, init_weights, pool_logits

_CFGS = {  # conv widths per block
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
    def __init__(self, cfg, num_classes: int = 100):
        super().__init__()
        cin = 3
        for i, widths in enumerate(cfg):
            layers = []
            for cout in widths:
                layers += conv_bn(cin, cout, 3, bias=True)
                cin = cout
            setattr(self, f"block{i}", nn.Sequential(*layers))
        self.pools = nn.ModuleList(nn.MaxPool2d(2, 2) for _ in range(3))
        self.fc = nn.Linear(cin, num_classes)
        # taps (as CRD, block0 acts as the stem): stage = blockK (ends in ReLU), preact = its last BN
        self.stage_taps = tuple(f"block{i}" for i in range(1, 5))
        self.preact_taps = tuple(f"block{i}.{3 * len(cfg[i]) - 2}" for i in range(1, 5))
        self.embedding_tap = "fc@input"
        init_weights(self)

    def forward(self, x):
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
            if i < 3:
                x = self.pools[i](x)
        return pool_logits(self.fc, x)


def _register(name: str) -> None:
    @register_model(name)
    def factory(num_classes: int = 100, **kw) -> nn.Module:
        return VGG(_CFGS[name], num_classes, **kw)


for _name in _CFGS:
    _register(_name)
