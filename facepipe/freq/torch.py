"""Frequency views on batches with torch: same definitions and numbers as :mod:`facepipe.freq.functional`.

Inputs are ``(B, C, H, W)`` float tensors (RGB in [0, 1]) on any device; outputs stay on that device,
so views can be computed on the GPU after augmentation. The DCT is a product with the orthonormal
DCT-II matrix (cached per size, device and dtype).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from facepipe.freq.functional import EPS, FAD_BANDS, LUMA, SRM_KERNELS


@lru_cache(maxsize=32)
def _dct_matrix_cpu(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


_CACHE: dict[tuple, torch.Tensor] = {}


def dct_matrix(n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix ``D`` (``D @ x`` transforms a column; ``D.T`` inverts)."""
    key = (n, str(device), dtype)
    if key not in _CACHE:
        _CACHE[key] = _dct_matrix_cpu(n).to(device=device, dtype=dtype)
    return _CACHE[key]


def _check(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(x.shape)}")
    return x if x.is_floating_point() else x.float()


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh @ x @ dw.T


def idct2(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`."""
    dh = dct_matrix(x.shape[-2], x.device, x.dtype)
    dw = dct_matrix(x.shape[-1], x.device, x.dtype)
    return dh.T @ x @ dw


def dct(x: torch.Tensor, log: bool = True) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): full-image DCT per channel, ``log(|X| + EPS)`` when ``log``."""
    X = dct2(_check(x))
    return torch.log(X.abs() + EPS) if log else X


def fad_masks(h: int, w: int, bands: tuple[float, float] = FAD_BANDS, device="cpu",
              dtype=torch.float32) -> torch.Tensor:
    """(3, H, W) low/mid/high FAD masks (see :func:`facepipe.freq.functional.fad_masks`)."""
    lo, hi = bands
    n = min(h, w)
    s = (torch.arange(h, device=device)[:, None] + torch.arange(w, device=device)[None, :]).to(torch.float64)
    e1, e2 = lo * n, hi * n
    return torch.stack([s < e1, (s >= e1) & (s < e2), s >= e2]).to(dtype)


def dct_bands(x: torch.Tensor, bands: tuple[float, float] = FAD_BANDS) -> torch.Tensor:
    """(B, C, H, W) -> (B, 3C, H, W): F3Net FAD bands (low of every channel, then mid, then high)."""
    X = dct2(_check(x))
    m = fad_masks(x.shape[-2], x.shape[-1], bands, x.device, x.dtype)
    return torch.cat([idct2(X * m[b]) for b in range(3)], dim=1)


def luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) BT.601 luma; 1-channel input passes through."""
    x = _check(x)
    if x.shape[1] == 1:
        return x
    w = torch.as_tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def block_dct(x: torch.Tensor, block: int = 8) -> torch.Tensor:
    """(B, C, H, W) -> (B, block**2, H/block, W/block): blockwise DCT of the luma (channel ``u*block+v``)."""
    y = luma(x)[:, 0]
    b, h, w = y.shape
    if h % block or w % block:
        raise ValueError(f"block_dct needs H and W multiples of {block}, got {h}x{w}")
    t = y.reshape(b, h // block, block, w // block, block).permute(0, 1, 3, 2, 4)
    d = dct_matrix(block, x.device, x.dtype)
    c = d @ t @ d.T
    return c.reshape(b, h // block, w // block, block * block).permute(0, 3, 1, 2).contiguous()


def fft(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) centred log-amplitude spectrum."""
    Fx = torch.fft.fftshift(torch.fft.fft2(_check(x)), dim=(-2, -1))
    return torch.log(Fx.abs() + EPS)


def phase(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W) phase-only reconstruction (SPSL)."""
    Fx = torch.fft.fft2(_check(x))
    return torch.fft.ifft2(torch.exp(1j * torch.angle(Fx))).real


def srm(x: torch.Tensor, truncate: float | None = 3.0) -> torch.Tensor:
    """(B, C, H, W) -> (B, 3, H, W) SRM residuals summed over channels, clipped to ``[-truncate, truncate]``."""
    x = _check(x)
    k = torch.as_tensor(SRM_KERNELS, device=x.device, dtype=x.dtype)[:, None].expand(3, x.shape[1], 5, 5)
    out = F.conv2d(x, k.contiguous(), padding=2)
    return out.clamp(-truncate, truncate) if truncate is not None else out
