"""ShuffleNet V1 (g=3) and V2 (1×), the CIFAR variants used by CRD.

Both: a 1×1 stem conv to 24 channels (no down-sampling), three stages ``layer1..3``
of 4/8/4 blocks whose first block has stride 2 (32×32 → 4×4), V2 adds a 1×1 head
``conv2`` to 1024 channels, then global average pooling and ``fc``.
Every block ends in its own ``relu_out`` taking the pre-activation tensor.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .registry import register_model
from .resnet import conv_bn, init_weights, pool_logits

STEM = 24


class ChannelShuffle(nn.Module):
    """Interleave the channels of ``groups`` equal groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1×1 → shuffle → depthwise 3×3 → grouped 1×1, added to the input, or
    concatenated with its 3×3 average-pool when stride is 2 (the branch then makes
    ``cout - cin`` channels). The first 1×1 after the stem is not grouped."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 3):
        super().__init__()
        self.stride = stride
        branch = cout - cin if stride == 2 else cout
        mid, pw_groups = branch // 4, (1 if cin == STEM else groups)
        self.conv1, self.bn1, self.relu1 = conv_bn(cin, mid, 1, groups=pw_groups)
        self.shuffle = ChannelShuffle(pw_groups)
        self.conv2, self.bn2, self.relu2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3, self.bn3 = conv_bn(mid, branch, 1, groups=groups, act=False)
        self.shortcut = nn.AvgPool2d(3, 2, 1) if stride == 2 else nn.Identity()
        self.relu_out = nn.ReLU()

    def forward(self, x):
        out = self.shuffle(self.relu1(self.bn1(self.conv1(x))))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return self.relu_out(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleV2Block(nn.Module):
    """Stride 1: split channels in half, pass one half through, transform the other.
    Stride 2: both branches see the whole input and down-sample. Concatenate, shuffle.

    Each branch's final ReLU is moved after the concat+shuffle (``relu_out``); this is
    the same function because the pass-through half is already non-negative (it is a
    previous block's output), and it gives a full-width pre-activation tap.
    """

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride == 1:
            self.left, cin = nn.Identity(), half
        else:
            self.left = nn.Sequential(*conv_bn(cin, cin, 3, 2, groups=cin, act=False), *conv_bn(cin, half, 1, act=False))
        self.right = nn.Sequential(*conv_bn(cin, half, 1), *conv_bn(half, half, 3, stride, groups=half, act=False),
                                   *conv_bn(half, half, 1, act=False))
        self.shuffle = ChannelShuffle(2)
        self.relu_out = nn.ReLU()

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1) if self.stride == 1 else (x, x)
        return self.relu_out(self.shuffle(torch.cat([self.left(x1), self.right(x2)], 1)))


class ShuffleNet(nn.Module):
    def __init__(self, block, widths, depths, head: int | None, num_classes: int = 100):
        super().__init__()
        self.conv1 = nn.Sequential(*conv_bn(3, STEM, 1))
        cin = STEM
        for i, (cout, n) in enumerate(zip(widths, depths), 1):
            setattr(self, f"layer{i}", nn.Sequential(block(cin, cout, 2), *(block(cout, cout, 1) for _ in range(n - 1))))
            cin = cout
        self.conv2 = nn.Sequential(*conv_bn(cin, head, 1)) if head else None
        self.fc = nn.Linear(head or cin, num_classes)
        # taps: stage = last block of layer1/2 and the final feature map (layer3, or the
        # head when there is one); preact = the tensor entering that block's/head's final ReLU
        pre = [f"layer{i}.{n - 1}.relu_out@input" for i, n in enumerate(depths, 1)]
        self.stage_taps = ("layer1", "layer2", "conv2" if head else "layer3")
        self.preact_taps = (pre[0], pre[1], "conv2.1" if head else pre[2])
        self.embedding_tap = "fc@input"
        init_weights(self)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        if self.conv2 is not None:
            x = self.conv2(x)
        return pool_logits(self.fc, x)


@register_model("shufflenetv1")
def shufflenetv1(num_classes: int = 100, **kw) -> nn.Module:
    """CRD's ShuffleV1: groups 3, widths 240/480/960, 4/8/4 blocks."""
    return ShuffleNet(partial(ShuffleV1Block, groups=3), (240, 480, 960), (4, 8, 4), None, num_classes, **kw)


@register_model("shufflenetv2")
def shufflenetv2(num_classes: int = 100, **kw) -> nn.Module:
    """CRD's ShuffleV2 (1×): widths 116/232/464, 1+3/1+7/1+3 blocks, head 1024."""
    return ShuffleNet(ShuffleV2Block, (116, 232, 464), (4, 8, 4), 1024, num_classes, **kw)
