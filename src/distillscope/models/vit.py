"""A small Vision Transformer for 32-pixel images (Dosovitskiy et al. 2021), in plain torch: ``vit_tiny_cifar``.

Patch 4 (a 4×4 stride-4 convolution) turns a 32×32 image into 8×8 = 64 patch tokens; a learned class token is
prepended and a learned position embedding added (65 tokens). Width 192, depth 6, 3 heads (64 channels each), MLP
ratio 2 (GELU), pre-norm blocks ``x + attn(LN(x))`` then ``x + mlp(LN(x))``, a final LayerNorm and the classifier
``fc`` on the class token. Other image sizes work: the position embedding is resized bilinearly to the patch grid.

Taps (``taps.py``): every block output ``blocks.i`` is (B, tokens, channels); the declared aliases read it as an
(B, 192, 8, 8) map (``@tokens``: class token dropped, patch tokens row-major). The depth is split into 3 stages
(blocks 0-1, 2-3, 4-5); ``stage:0`` and ``stage:1`` are the outputs of blocks 1 and 3. ``stage:2`` (``stage:-1``) is
the output of block 4, the last token map the classifier reads: after block 5 only the class token goes on to the
head, so block 5's patch tokens get no gradient from the logits (a Grad-CAM there is empty). ``preact:i`` is the
same as ``stage:i`` (no activation follows a block), and ``embedding`` is ``fc@input``, the normalised class token.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_model


class Attention(nn.Module):
    """Multi-head self-attention: softmax(q kᵀ / sqrt(d)) v per head, written out (deterministic, any backend)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"ViT width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, num_classes: int = 100, image_size: int = 32, patch: int = 4, dim: int = 192, depth: int = 6,
                 heads: int = 3, mlp_ratio: float = 2.0):
        super().__init__()
        if depth < 4:
            raise ValueError(f"ViT depth must be at least 4 (three stages before the last block), got {depth}")
        self.grid = image_size // patch
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        # stages: the depth in 3 groups; the last one ends at block depth-2, whose patch tokens block depth-1 reads
        ends = [depth // 3 - 1, 2 * depth // 3 - 1, depth - 2]
        self.stage_taps = tuple(f"blocks.{i}@tokens" for i in ends)
        self.preact_taps = self.stage_taps
        self.embedding_tap = "fc@input"
        for p in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def position(self, h: int, w: int) -> torch.Tensor:
        """The position embedding for an h×w patch grid (bilinear resize of the learned grid when it differs)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        return torch.cat([cls, grid], dim=1)

    def forward(self, x):
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.position(h, w)
        x = self.norm(self.blocks(x))
        return self.fc(x[:, 0])


@register_model("vit_tiny_cifar")
def vit_tiny_cifar(num_classes: int = 100, **kw) -> nn.Module:
    return VisionTransformer(num_classes, **kw)
