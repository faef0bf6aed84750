"""Reference attention modules: global, local-window, multipole, shifted-window (Swin) and global-token attention.

Signatures and defaults follow the researcher's reference notes (``shared/seeds/003``: heads 8, dim_head 64,
kernel 7, sampling rate 2, dropout): :class:`AttentionBlock` (pre-LayerNorm multi-head self-attention),
:class:`LocalAttention2D` (attention inside ``kernel x kernel`` windows cut with ``unfold`` at ``stride``,
put back with ``fold`` and divided by the fold of ones) and :class:`MultipoleAttention2D` (ONE local
attention shared by every level of a pooled pyramid, merged coarse-to-fine as ``res = out_l + up(res) / (l + 1)``).
Two defects of the reference are fixed rather than copied:

- windows that leave the last rows/columns uncovered when ``(H - kernel) % stride != 0`` made ``fold(ones)``
  zero there and the output 0/0 = NaN; here the grid is padded so every position is covered, and padded
  positions are masked out of every window's keys (they never change a real token's output);
- the reference counts ``levels`` as the number of downsamplings that keep ``size // rate**l >= kernel`` but
  runs one level fewer; here ``levels = 1 + that count`` (the full-resolution level plus every valid one).

:class:`ShiftedWindowAttention` is Swin's W-MSA/SW-MSA (Liu et al., ICCV 2021: window 7, shift 3, attention
mask across the shifted regions, relative position bias); :class:`GlobalTokenAttention` prepends learned global
tokens (4) that every token attends to and through which information travels globally.

Every module computes attention with fused ``scaled_dot_product_attention`` unless ``record_attention`` is
set: then it takes the eager path and keeps the softmax probabilities, in the autograd graph, in
``attn_map`` (for gradient-weighted attention and rollout in ``facepipe explain``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dropout: float, owner: nn.Module,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v over (..., N, d) tensors; eager (keeping ``owner.attn_map``) or fused.

    ``mask`` is additive (0 or -inf), broadcastable to (..., N, N).
    """
    if getattr(owner, "record_attention", False):
        dots = (q * scale) @ k.transpose(-1, -2)
        if mask is not None:
            dots = dots + mask
        attn = dots.softmax(dim=-1)
        owner.attn_map = attn
        attn = F.dropout(attn, dropout, owner.training)
        return attn @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout if owner.training else 0.0,
                                          scale=scale)


class AttentionBlock(nn.Module):
    """Global multi-head self-attention with a pre-LayerNorm (the reference's ``AttentionBlock``).

    Args:
        dim: token width C.
        heads: attention heads.
        dim_head: width of each head (``scale = dim_head ** -0.5``).
        dropout: on the attention probabilities and after the output projection.

    Shapes: (B, N, C) -> (B, N, C). With ``record_attention`` the probabilities (B, heads, N, N) are kept in
    ``attn_map``.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim_head * heads
        self.heads, self.dim_head, self.scale, self.dropout = heads, dim_head, dim_head ** -0.5, dropout
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        project = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout)) if project else nn.Identity()
        self.record_attention = False
        self.attn_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = _attend(q, k, v, self.scale, self.dropout, self, mask)
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


def window_grid(size: int, kernel: int, stride: int) -> int:
    """Padded side so that windows of ``kernel`` at ``stride`` cover ``size`` exactly (>= kernel)."""
    if size <= kernel:
        return kernel
    return kernel + -(-(size - kernel) // stride) * stride


class _WrapsAttention(nn.Module):
    """A mixer whose ``self.attention`` does the attending: ``record_attention`` (keep the last attention
    probabilities for explanations) passes through to it."""

    attention: nn.Module

    @property
    def record_attention(self) -> bool:
        return self.attention.record_attention

    @record_attention.setter
    def record_attention(self, value: bool) -> None:
        self.attention.record_attention = value


class LocalAttention2D(_WrapsAttention):
    """Self-attention inside square windows (the reference's ``LocalAttention2D``, with full coverage).

    Windows of ``kernel_size`` are cut with ``unfold`` at ``stride`` (default: the kernel, non-overlapping),
    each attends within itself through an :class:`AttentionBlock`, and ``fold`` puts them back; positions
    covered by several windows are averaged (divided by the fold of ones). The grid is zero-padded at the
    bottom/right until the windows cover it, and padded positions are masked out of the keys.

    Args:
        kernel_size: window side.
        stride: window step (``None`` = ``kernel_size``).
        dim, heads, dim_head, dropout: of the :class:`AttentionBlock`.

    Shapes: (B, H, W, C) -> (B, H, W, C). With ``record_attention``, ``attention.attn_map`` holds
    (B * L, heads, k*k, k*k) for the L windows.
    """

    channels_last = True  # 4-D maps are (B, H, W, C) (facepipe features reads this)

    def __init__(self, kernel_size: int = 7, stride: int | None = None, dim: int = 64, heads: int = 8,
                 dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride or kernel_size)
        if not 1 <= self.stride <= self.kernel_size:
            raise ValueError(f"stride must be in [1, kernel_size={kernel_size}], got {stride}")
        self.norm = nn.LayerNorm(dim)
        self.attention = AttentionBlock(dim=dim, heads=heads, dim_head=dim_head, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        k, s = self.kernel_size, self.stride
        hp, wp = window_grid(h, k, s), window_grid(w, k, s)
        xc = F.pad(x.permute(0, 3, 1, 2), (0, wp - w, 0, hp - h))  # (B, C, hp, wp)
        valid = F.pad(torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype), (0, wp - w, 0, hp - h))
        cols = F.unfold(xc, k, stride=s)  # (B, C*k*k, L)
        n_win = cols.shape[-1]
        patches = cols.view(b, c, k * k, n_win).permute(0, 3, 2, 1).reshape(b * n_win, k * k, c)
        mask = None
        if hp != h or wp != w:
            keep = F.unfold(valid, k, stride=s)[0].t()  # (L, k*k): 1 = a real position
            mask = torch.zeros(n_win, k * k, dtype=x.dtype, device=x.device).masked_fill(keep == 0, float("-inf"))
            mask = mask.repeat(b, 1)[:, None, None, :]  # (B*L, 1, 1, k*k)
        out = self.attention(self.norm(patches), mask)
        out = out.view(b, n_win, k * k, c).permute(0, 3, 2, 1).reshape(b, c * k * k, n_win)
        folded = F.fold(out, (hp, wp), k, stride=s)
        count = F.fold(F.unfold(torch.ones_like(valid), k, stride=s), (hp, wp), k, stride=s)
        return (folded / count)[:, :, :h, :w].permute(0, 2, 3, 1)


def multipole_levels(image_size: int, kernel_size: int, sampling_rate: int) -> int:
    """Levels of :class:`MultipoleAttention2D`: the full resolution plus every downsampling that keeps the side
    ``image_size // rate**l >= kernel_size`` (e.g. 56 px, kernel 7, rate 2 -> 56, 28, 14, 7: 4 levels)."""
    levels, size = 1, image_size
    while size // sampling_rate >= kernel_size:
        size //= sampling_rate
        levels += 1
    return levels


class MultipoleAttention2D(_WrapsAttention):
    """Local-window attention at several scales with ONE shared :class:`LocalAttention2D`, merged coarse-to-fine.

    Level 0 is the input; level l is level l-1 downsampled by ``sampling_rate`` (``avg_pool`` or a strided
    ``conv``); the same local attention runs on every level, so a fixed window covers ``rate**l`` times more of
    the image at level l (near field at full resolution, far field coarse, as in a multipole expansion). From
    the coarsest up: ``res = out_l + up(res) / (l + 1)`` with ``up`` nearest upsampling or a transposed conv.

    Args:
        image_size: side of the input feature map (sets the number of levels, :func:`multipole_levels`).
        dim: channels C.
        kernel_size, stride, heads, dim_head, dropout: of the shared local attention.
        downsampling: ``avg_pool`` | ``conv``. upsampling: ``nearest`` | ``conv_transpose``.
        sampling_rate: downsampling factor per level.

    Shapes: (B, C, H, W) -> (B, C, H, W) (any H, W; ``levels`` is fixed at construction).
    """

    def __init__(self, image_size: int, dim: int, kernel_size: int = 7, stride: int | None = None,
                 downsampling: Literal["avg_pool", "conv"] = "avg_pool",
                 upsampling: Literal["nearest", "conv_transpose"] = "nearest", sampling_rate: int = 2,
                 heads: int = 8, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.levels = multipole_levels(image_size, kernel_size, sampling_rate)
        self.rate = sampling_rate
        self.attention = LocalAttention2D(kernel_size, stride, dim, heads, dim_head, dropout)
        if downsampling == "avg_pool":
            self.down: nn.Module = nn.AvgPool2d(sampling_rate, sampling_rate)
        elif downsampling == "conv":
            self.down = nn.Conv2d(dim, dim, sampling_rate, sampling_rate, bias=False)
        else:
            raise ValueError(f"downsampling must be avg_pool or conv, got {downsampling!r}")
        if upsampling not in ("nearest", "conv_transpose"):
            raise ValueError(f"upsampling must be nearest or conv_transpose, got {upsampling!r}")
        self.upsampling = upsampling
        self.up = (nn.ConvTranspose2d(dim, dim, sampling_rate, sampling_rate, bias=False)
                   if upsampling == "conv_transpose" else None)

    def _up(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.up is not None:
            x = self.up(x, output_size=None)
            dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
            return F.pad(x, (0, max(dw, 0), 0, max(dh, 0)))[..., :size[0], :size[1]]
        return F.interpolate(x, size=size, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        level = x
        self.level_maps = []
        for lv in range(self.levels):
            if lv:
                level = self.down(level)
            outs.append(self.attention(level.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
            if self.record_attention:
                self.level_maps.append(self.attention.attention.attn_map)
        res = outs.pop()
        for lv, finer in enumerate(reversed(outs)):
            res = finer + self._up(res, finer.shape[-2:]) / (lv + 1)
        return res


class ShiftedWindowAttention(nn.Module):
    """Swin's window attention (Liu et al., "Swin Transformer", ICCV 2021), shifted or not.

    Tokens attend within ``window x window`` windows; with ``shift > 0`` the grid is cyclically rolled by
    ``-shift`` first, and an additive mask keeps tokens of different original regions from attending to each
    other (as Swin's SW-MSA). A learned relative position bias table ((2w-1)^2, heads) is added to the logits.
    The grid is padded to a multiple of the window (padded keys masked out).

    Args:
        dim: channels C. heads, dim_head: attention heads and their width. window: side. shift: cyclic shift
        (0 = W-MSA, window // 2 = Swin's SW-MSA, 3 for window 7). dropout: attention dropout.

    Shapes: (B, H, W, C) -> (B, H, W, C).
    """

    channels_last = True  # 4-D maps are (B, H, W, C) (facepipe features reads this)

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, window: int = 7, shift: int = 3,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift must be in [0, window), got {shift}")
        self.heads, self.dim_head, self.window, self.shift, self.dropout = heads, dim_head, window, shift, dropout
        self.scale = dim_head ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * heads * dim_head, bias=True)
        self.proj = nn.Linear(heads * dim_head, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        self.record_attention = False
        self.attn_map: torch.Tensor | None = None

    def _region_mask(self, hp: int, wp: int, h: int, w: int, device, dtype) -> torch.Tensor:
        """(nW, w*w, w*w) additive mask: -inf between tokens of different shifted regions or onto padding."""
        ws, sh = self.window, self.shift
        region = torch.zeros(hp, wp, device=device)
        if sh:
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -sh), slice(-sh, None)):
                for wsl in (slice(0, -ws), slice(-ws, -sh), slice(-sh, None)):
                    region[hs, wsl] = cnt
                    cnt += 1
        pad = torch.zeros(hp, wp, device=device, dtype=torch.bool)
        pad[h:, :] = True
        pad[:, w:] = True
        if sh:
            pad = torch.roll(pad, (-sh, -sh), (0, 1))
        r = region.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        p = pad.view(hp // ws, ws, wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
        bad = (r[:, :, None] != r[:, None, :]) | p[:, None, :]
        return torch.zeros(bad.shape, device=device, dtype=dtype).masked_fill(bad, float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        ws, sh = self.window, self.shift
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        t = F.pad(self.norm(x), (0, 0, 0, wp - w, 0, hp - h))
        if sh:
            t = torch.roll(t, (-sh, -sh), (1, 2))
        nw = (hp // ws) * (wp // ws)
        win = t.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, ws * ws, c)
        q, k, v = self.qkv(win).view(b * nw, ws * ws, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index.reshape(-1)].view(ws * ws, ws * ws, -1).permute(2, 0, 1)
        mask = self._region_mask(hp, wp, h, w, x.device, q.dtype)  # (nW, N, N)
        full = bias[None, None] + mask[None, :, None]  # (1, nW, heads, N, N)
        full = full.expand(b, -1, -1, -1, -1).reshape(b * nw, self.heads, ws * ws, ws * ws)
        out = _attend(q, k, v, self.scale, self.dropout, self, full)
        out = self.proj(out.transpose(1, 2).reshape(b * nw, ws * ws, self.heads * self.dim_head))
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if sh:
            out = torch.roll(out, (sh, sh), (1, 2))
        return out[:, :h, :w]


class GlobalTokenAttention(_WrapsAttention):
    """Global attention with ``n_tokens`` learned global (memory) tokens prepended to the sequence.

    Every token attends to every token and to the global tokens, which are updated too and carry context
    across the sequence (global/memory tokens as in ETC, Ainslie et al. 2020; the seed's essay, 4 tokens).
    The global tokens are dropped from the output.

    Shapes: (B, N, C) -> (B, N, C), or (B, H, W, C) -> (B, H, W, C).
    """

    channels_last = True  # 4-D maps are (B, H, W, C) (facepipe features reads this)

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, n_tokens: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.attention = AttentionBlock(dim, heads, dim_head, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        t = x.reshape(shape[0], -1, shape[-1])
        g = self.tokens.expand(shape[0], -1, -1)
        out = self.attention(torch.cat([g, t], dim=1))[:, g.shape[1]:]
        return out.reshape(shape)


__all__ = ["AttentionBlock", "GlobalTokenAttention", "LocalAttention2D", "MultipoleAttention2D",
           "ShiftedWindowAttention", "multipole_levels", "window_grid"]
