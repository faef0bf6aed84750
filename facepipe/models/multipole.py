"""Multipole attention classifier: local-window self-attention at several scales, merged coarse-to-fine.

Local windows (``window`` x ``window``, 50% overlap) are cut with ``unfold``, attend within themselves,
and are put back with ``fold``; overlapping outputs are averaged by dividing by ``fold(unfold(ones))``
(overlap normalisation). Level l works on the feature map average-pooled by 2**l, so a fixed window
sees a 2**l times wider area; levels are merged from the coarsest up (upsample + add), like a multipole
expansion: near field at full resolution, far field at coarse resolution. ``local`` is the one-level
ablation. The stem is a small CNN (stride 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.models._registry import ModelSpec, register_model


class LocalWindowAttention(nn.Module):
    """Multi-head self-attention inside overlapping square windows. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, window: int = 7, heads: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.window, self.stride, self.heads = window, max(1, window // 2), heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        k, s = self.window, self.stride
        hp = max(h, k) + (s - (max(h, k) - k) % s) % s
        wp = max(w, k) + (s - (max(w, k) - k) % s) % s
        xp = F.pad(x, (0, wp - w, 0, hp - h))
        cols = F.unfold(xp, k, stride=s)  # (B, C*k*k, L)
        n = cols.shape[-1]
        t = cols.view(b, c, k * k, n).permute(0, 3, 2, 1).reshape(b * n, k * k, c)
        q, kk, v = self.qkv(self.norm(t)).view(b * n, k * k, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, kk, v).transpose(1, 2).reshape(b * n, k * k, c)
        o = self.proj(o).view(b, n, k * k, c).permute(0, 3, 2, 1).reshape(b, c * k * k, n)
        out = F.fold(o, (hp, wp), k, stride=s)
        ones = torch.ones(1, 1, hp, wp, device=x.device, dtype=x.dtype)
        count = F.fold(F.unfold(ones, k, stride=s), (hp, wp), k, stride=s)
        return (out / count)[..., :h, :w]


class MultipoleAttention(nn.Module):
    """Local-window attention at ``levels`` scales (pooled by 2**l), merged coarse-to-fine."""

    def __init__(self, dim: int, levels: int = 3, window: int = 7, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.ModuleList([LocalWindowAttention(dim, window, heads) for _ in range(levels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for lvl, attn in enumerate(self.attn):
            xl = F.avg_pool2d(x, 2 ** lvl, ceil_mode=True) if lvl else x
            outs.append(attn(xl))
        y = outs[-1]
        for finer in reversed(outs[:-1]):
            y = finer + F.interpolate(y, size=finer.shape[-2:], mode="bilinear", align_corners=False)
        return y


class MultipoleBlock(nn.Module):
    def __init__(self, dim: int, levels: int, window: int, heads: int) -> None:
        super().__init__()
        self.mix = MultipoleAttention(dim, levels, window, heads)
        self.mlp = nn.Sequential(nn.GroupNorm(1, dim), nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mix(x)
        return x + self.mlp(x)


class MultipoleClassifier(nn.Module):
    """CNN stem (stride 8) -> ``depth`` multipole blocks -> global average pool -> one logit."""

    def __init__(self, pretrained=False, dim: int = 64, depth: int = 2, levels: int = 3, window: int = 7,
                 heads: int = 4) -> None:
        super().__init__()
        if pretrained:
            import logging

            logging.getLogger(__name__).warning("multipole has no pretrained weights; random initialisation")
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.GELU(),
            nn.Conv2d(64, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())
        self.blocks = nn.Sequential(*[MultipoleBlock(dim, levels, window, heads) for _ in range(depth)])
        self.head = nn.Linear(dim, 1)

    def forward(self, inputs: dict) -> torch.Tensor:
        f = self.blocks(self.stem(inputs["image"]))
        return self.head(f.mean(dim=(2, 3))).squeeze(1)


@register_model(ModelSpec("multipole", input_size=256, paper="multipole local-window attention (this project)",
                                defaults={"levels": 3}))
def multipole(pretrained=False, **kw) -> nn.Module:
    return MultipoleClassifier(pretrained, **kw)


@register_model(ModelSpec("local", input_size=256, paper="multipole ablation: one level",
                                defaults={"levels": 1}))
def local(pretrained=False, **kw) -> nn.Module:
    return MultipoleClassifier(pretrained, **kw)
