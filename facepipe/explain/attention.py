"""Attention explanations: gradient-weighted attention (``attn_grad``; Chefer, Gur & Wolf, ICCV 2021) and attention
rollout (``rollout``; Abnar & Zuidema, ACL 2020) from the softmax probabilities of *global* self-attention, kept in
the autograd graph (timm's ViT / CLIP ``Attention`` switched to its eager path, facepipe's
:class:`~facepipe.models.attention.AttentionBlock`).

Windowed and local attention (Swin, local, multipole, global tokens) gives no token-to-token matrix to roll out;
such a model gets a :class:`~facepipe.errors.ConfigError` naming the methods that work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facepipe.errors import ConfigError
from facepipe.explain.cam import LAYER_SETS, ImageModel, _resolve_full_name, _square_prefix, _vit_of

HEAD_FUSIONS = ("mean", "max", "min")
#: classes whose attention is over windows or local neighbourhoods, never one token-to-token matrix
_WINDOWED = {"LocalAttention2D", "MultipoleAttention2D", "ShiftedWindowAttention", "GlobalTokenAttention",
             "GridAttention", "WindowAttention"}


@dataclass
class AttentionSite:
    """A global self-attention module whose softmax probabilities (B, heads, N, N) can be kept in the graph."""

    name: str
    module: nn.Module
    kind: str  # "timm" (Attention with attn_drop) or "record" (facepipe AttentionBlock)


def attention_sites(model: nn.Module) -> list[AttentionSite]:
    """Global self-attention modules of ``model`` in forward order (windowed / local attention left out)."""
    windowed: list[str] = [n for n, m in model.named_modules() if type(m).__name__ in _WINDOWED]
    sites = []
    for n, m in model.named_modules():
        if any(n == w or n.startswith(w + ".") for w in windowed):
            continue
        if type(m).__name__ == "Attention" and hasattr(m, "fused_attn") and hasattr(m, "attn_drop"):
            sites.append(AttentionSite(n, m, "timm"))
        elif type(m).__name__ == "AttentionBlock" and hasattr(m, "record_attention"):
            sites.append(AttentionSite(n, m, "record"))
    return sites


def _attention_error(model: nn.Module, method: str) -> ConfigError:
    spec = model.spec
    found = sorted({type(m).__name__ for m in model.modules() if type(m).__name__ in _WINDOWED})
    what = f"only windowed/local attention ({', '.join(found)})" if found else "no attention modules"
    return ConfigError(f"{method} needs global self-attention over all tokens, but model '{spec.name}' has {what}: "
                       f"use --method gradcam or gradcam++ (its default: {spec.explain})")


class AttentionTap:
    """Keeps the attention probabilities of chosen sites, in the autograd graph, during forward passes."""

    def __init__(self, sites: list[AttentionSite]) -> None:
        self.sites = sites
        self.maps: list[torch.Tensor | None] = [None] * len(sites)
        self.hooks = []
        self.saved = []
        for i, s in enumerate(sites):
            if s.kind == "timm":
                self.saved.append(("fused_attn", s.module, s.module.fused_attn))
                s.module.fused_attn = False
                self.hooks.append(s.module.attn_drop.register_forward_hook(
                    lambda m, inp, out, i=i: self.maps.__setitem__(i, inp[0])))
            else:
                self.saved.append(("record_attention", s.module, s.module.record_attention))
                s.module.record_attention = True
                self.hooks.append(s.module.register_forward_hook(
                    lambda m, inp, out, i=i: self.maps.__setitem__(i, m.attn_map)))

    def close(self) -> None:
        for h in self.hooks:
            h.remove()
        for attr, mod, value in self.saved:
            setattr(mod, attr, value)

    def __enter__(self) -> "AttentionTap":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fuse_heads(t: torch.Tensor, fusion: str) -> torch.Tensor:
    """(B, heads, N, N) -> (B, N, N) by ``mean`` | ``max`` | ``min`` over heads."""
    if fusion == "mean":
        return t.mean(1)
    if fusion == "max":
        return t.amax(1)
    if fusion == "min":
        return t.amin(1)
    raise ConfigError(f"head fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")


def gradient_weighted_relevance(attn: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], fusion: str = "mean"
                                ) -> torch.Tensor:
    """Chefer et al. (ICCV 2021) relevance: ``R = I``; per block ``R = R + clamp(grad * A, 0)_fused @ R``.

    Args:
        attn, grads: per block, (B, heads, N, N) attention probabilities and the target's gradient w.r.t. them.

    Returns:
        (B, N, N) float32 relevance of token j (column) for token i (row).
    """
    b, _, n, _ = attn[0].shape
    r = torch.eye(n, device=attn[0].device).expand(b, n, n).clone()
    for a, g in zip(attn, grads):
        cam = fuse_heads((g.float() * a.float()).clamp(min=0), fusion)
        r = r + torch.bmm(cam, r)
    return r


def attention_rollout(attn: Sequence[torch.Tensor], fusion: str = "mean") -> torch.Tensor:
    """Abnar & Zuidema (2020) rollout: per block heads fused, ``0.5 A + 0.5 I`` renormalised per row, multiplied
    in forward order. Every row of the result sums to 1.

    Returns:
        (B, N, N) float32.
    """
    b, _, n, _ = attn[0].shape
    eye = torch.eye(n, device=attn[0].device)
    r = eye.expand(b, n, n).clone()
    for a in attn:
        m = 0.5 * fuse_heads(a.float(), fusion) + 0.5 * eye
        m = m / m.sum(-1, keepdim=True)
        r = torch.bmm(m, r)
    return r


def relevance_to_grid(r: torch.Tensor, prefix: int, cls_readout: bool) -> torch.Tensor:
    """(B, N, N) relevance -> (B, h, w) over the patch tokens: the class token's row (``cls_readout``) or the mean
    row (average-pooled models).

    Raises:
        ConfigError: the patch tokens do not form a square grid.
    """
    row = r[:, 0] if cls_readout else r.mean(1)
    patches = row[:, prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ConfigError(f"{patches.shape[1]} patch tokens are not a square grid")
    return patches.reshape(-1, side, side)


def _readout(model: nn.Module, n_tokens: int) -> tuple[int, bool]:
    vit = _vit_of(model)
    if vit is not None and n_tokens == int(vit.patch_embed.num_patches) + int(vit.num_prefix_tokens):
        prefix = int(vit.num_prefix_tokens)
        return prefix, prefix > 0 and vit.global_pool == "token"
    prefix, _ = _square_prefix(n_tokens)
    return prefix, prefix > 0


def _scale01(m: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1] of (B, H, W) (a flat map stays 0)."""
    lo = m.flatten(1).amin(1).view(-1, 1, 1)
    hi = m.flatten(1).amax(1).view(-1, 1, 1)
    return torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m))


def attention_maps(wrapper: ImageModel, x: torch.Tensor, method: str, layers: str | Sequence[str] = "all",
                   fusion: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient-weighted attention (``attn_grad``) or rollout maps of a batch.

    Args:
        layers: ``last`` | ``last4`` | ``all`` attention blocks (default ``all``, as published), or explicit names
            of attention modules.

    Returns:
        ``(real, fake, logits)``: (B, H, W) float32 maps in [0, 1] at the input size, and (B,) fake logits.

    Raises:
        ConfigError: the model has no global self-attention (names the methods that work), unknown layers.
    """
    model = wrapper.model
    sites = attention_sites(model)
    if not sites:
        raise _attention_error(model, method)
    if isinstance(layers, str) and layers in LAYER_SETS:
        chosen = {"last": sites[-1:], "last4": sites[-4:], "all": sites}[layers]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        full = [_resolve_full_name(model, n) for n in names]
        chosen = [s for s in sites if s.name in full]
        if len(chosen) != len(full):
            raise ConfigError(f"not global attention modules: {sorted(set(full) - {s.name for s in chosen})} "
                              f"(these are: {[s.name for s in sites][:6]}…)")
    size = x.shape[-2:]
    with AttentionTap(chosen) as tap, torch.enable_grad():
        xin = x.detach().requires_grad_(True)  # frozen backbones: the graph must reach the attention anyway
        logits = wrapper(xin)[:, 0]
        attn = list(tap.maps)
        if any(a is None for a in attn):
            raise ConfigError("an attention module was not called in the forward pass: "
                              f"{[s.name for s, a in zip(chosen, attn) if a is None]}")
        prefix, cls_readout = _readout(model, attn[0].shape[-1])
        out = {}
        if method == "rollout":
            r = attention_rollout([a.detach() for a in attn], fusion)
            out["fake"] = out["real"] = relevance_to_grid(r, prefix, cls_readout)
        else:
            for name, sign in (("fake", 1.0), ("real", -1.0)):
                grads = torch.autograd.grad((sign * logits).sum(), attn, retain_graph=True)
                r = gradient_weighted_relevance([a.detach() for a in attn], grads, fusion)
                out[name] = relevance_to_grid(r, prefix, cls_readout)
    maps = {k: _scale01(F.interpolate(v[:, None], size=size, mode="bilinear", align_corners=False)[:, 0])
            for k, v in out.items()}
    return (maps["real"].cpu().numpy(), maps["fake"].cpu().numpy(), logits.detach().float().cpu().numpy())
