"""Attention classifiers on the reference modules (:mod:`facepipe.models.attention`): ``multipole``, ``local`` and
``global`` — the same network with only the token mixer swapped, so the comparison is of attention, not capacity.

A CNN stem (three stride-2 3x3 convs: H/8) gives a (dim, H/8, W/8) map; ``depth`` blocks each apply the mixer
with a residual, then a token-wise LayerNorm + MLP (x4) with a residual, as in a ViT block; average pooling
and a linear head give the logit. The mixers have equal attention parameters: ``global`` is one
:class:`AttentionBlock` over all tokens, ``local`` a :class:`LocalAttention2D` (kernel 7), ``multipole`` a
:class:`MultipoleAttention2D` whose ONE local attention is shared by every level (levels computed from the
feature size; average-pool down, nearest up: no extra parameters).
"""

from __future__ import annotations

import torch
from torch import nn

from facepipe.models._builders import FrozenAwareModule
from facepipe.models._registry import ModelSpec, register_model
from facepipe.models.attention import AttentionBlock, LocalAttention2D, MultipoleAttention2D

MIXERS = ("global", "local", "multipole")


class MixerBlock(nn.Module):
    """Residual token mixer + residual token-wise MLP on a (B, C, H, W) map."""

    def __init__(self, dim: int, mixer: str, feature_size: int, kernel_size: int, stride: int | None, heads: int,
                 dim_head: int, dropout: float, downsampling: str, upsampling: str, sampling_rate: int) -> None:
        super().__init__()
        self.kind = mixer
        if mixer == "global":  # the same LayerNorm + AttentionBlock as LocalAttention2D: equal parameters
            self.mixer: nn.Module = nn.Sequential(nn.LayerNorm(dim), AttentionBlock(dim, heads, dim_head, dropout))
        elif mixer == "local":
            self.mixer = LocalAttention2D(kernel_size, stride, dim, heads, dim_head, dropout)
        elif mixer == "multipole":
            self.mixer = MultipoleAttention2D(feature_size, dim, kernel_size, stride, downsampling, upsampling,
                                              sampling_rate, heads, dim_head, dropout)
        else:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.kind == "multipole":
            x = x + self.mixer(x)
            t = x.permute(0, 2, 3, 1)
        elif self.kind == "local":
            t = x.permute(0, 2, 3, 1)
            t = t + self.mixer(t)
        else:
            t = x.flatten(2).transpose(1, 2)
            t = (t + self.mixer(t)).view(b, h, w, c)
        t = t + self.mlp(self.norm(t))
        return t.permute(0, 3, 1, 2)


class AttentionClassifier(FrozenAwareModule):
    """CNN stem (stride 8) -> ``depth`` mixer blocks -> average pool -> one logit.

    Args:
        mixer: ``global`` | ``local`` | ``multipole``.
        input_size: image side (sets the multipole levels: :func:`~facepipe.models.attention.multipole_levels`
            of ``input_size // 8``).
        dim: channels of the token map. depth: blocks. kernel_size, stride, heads (8), dim_head (64), dropout:
            of the attention (the reference's defaults). downsampling, upsampling, sampling_rate: multipole's.
    """

    def __init__(self, mixer: str, pretrained=False, input_size: int = 256, dim: int = 64, depth: int = 2,
                 kernel_size: int = 7, stride: int | None = None, heads: int = 8, dim_head: int = 64,
                 dropout: float = 0.0, downsampling: str = "avg_pool", upsampling: str = "nearest",
                 sampling_rate: int = 2) -> None:
        super().__init__()
        if pretrained:
            import logging

            logging.getLogger(__name__).warning("%s has no pretrained weights; random initialisation", mixer)
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.GELU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.GELU(),
            nn.Conv2d(64, dim, 3, 2, 1), nn.BatchNorm2d(dim), nn.GELU())
        fsize = max(1, input_size // 8)
        self.blocks = nn.Sequential(*[MixerBlock(dim, mixer, fsize, kernel_size, stride, heads, dim_head, dropout,
                                                 downsampling, upsampling, sampling_rate) for _ in range(depth)])
        self.head = nn.Linear(dim, 1)
        self.levels = self.blocks[0].mixer.levels if mixer == "multipole" else 1

    def forward_features(self, inputs: dict) -> torch.Tensor:
        """(B, dim, H/8, W/8) after the last block."""
        return self.blocks(self.stem(inputs["image"]))

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.forward_features(inputs).mean(dim=(2, 3))).squeeze(1)

    def attention_params(self) -> int:
        """Parameters of the attention modules (equal across the three mixers)."""
        return sum(p.numel() for b in self.blocks for p in b.mixer.parameters())

    def branches(self) -> dict[str, nn.Module]:
        return {"stem": self.stem, "blocks": self.blocks, "head": self.head}


_FAITHFUL = ("the reference modules of a researcher's attention notes with its two defects fixed (full window "
             "coverage, all "
             "levels run); the surrounding CNN stem + ViT-style blocks are this project's")


@register_model(ModelSpec("multipole", input_size=256, family="attention", size_options=("input_size",),
                          paper="multipole attention (a researcher's design notes): one local attention shared across a "
                                "pooled pyramid, merged coarse-to-fine",
                          faithful=_FAITHFUL, target_layer="blocks.-1", explain="gradcam"))
def multipole(pretrained=False, **kw) -> AttentionClassifier:
    return AttentionClassifier("multipole", pretrained, **kw)


@register_model(ModelSpec("local", input_size=256, family="attention", size_options=("input_size",),
                          paper="local-window attention (a researcher's design notes): the one-level ablation of "
                                "multipole",
                          faithful=_FAITHFUL, target_layer="blocks.-1"))
def local(pretrained=False, **kw) -> AttentionClassifier:
    return AttentionClassifier("local", pretrained, **kw)


@register_model(ModelSpec("global", input_size=256, family="attention", size_options=("input_size",),
                          paper="global multi-head self-attention (a researcher's AttentionBlock)",
                          faithful=_FAITHFUL, target_layer="blocks.-1"))
def global_(pretrained=False, **kw) -> AttentionClassifier:
    return AttentionClassifier("global", pretrained, **kw)


__all__ = ["MIXERS", "AttentionClassifier", "MixerBlock"]
