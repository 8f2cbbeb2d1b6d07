"""CIFAR ResNets (He et al. 2016): 3 stages of BasicBlocks, depth = 6n + 2.

``resnetN`` use a 16-channel stem and 16/32/64-channel stages; ``resnetNx4`` are the
4× wide variants of RepDistiller/CRD (stem 32, stages 64/128/256). Projection (1×1
conv + BN) shortcuts wherever the shape changes, as in RepDistiller.
Taps (see ``ResNet``): stage = ``layerK``, preact = ``layerK.<last>.relu_out@input``.
"""
from __future__ import annotations

from torch import nn

from .registry import register_model
from .resnet import BasicBlock, ResNet

_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


def cifar_resnet(depth: int, stem: int = 16, widths=(16, 32, 64), num_classes: int = 100) -> ResNet:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), widths, stem, num_classes)


def _register(name: str, depth: int, stem: int, widths) -> None:
    @register_model(name)
    def factory(num_classes: int = 100, **kw) -> nn.Module:
        return cifar_resnet(depth, stem, widths, num_classes, **kw)


for _d in _DEPTHS:
    _register(f"resnet{_d}", _d, 16, (16, 32, 64))
for _d in (8, 32):
    _register(f"resnet{_d}x4", _d, 32, (64, 128, 256))
