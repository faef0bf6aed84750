"""Frequency views of face crops: numpy reference implementations (the ``freq`` stage uses these).

Every function takes one image as ``(C, H, W) float32`` (RGB crops scaled to [0, 1]; see
:func:`to_chw01`) and returns ``float32`` arrays, channel-first. :mod:`facepipe.freq.torch` gives the
same numbers on batches ``(B, C, H, W)`` on any device (tests check rtol ~1e-4 on real crops).

Views:
    ``dct``        full-image orthonormal 2-D DCT-II per channel (optionally log-magnitude): F3Net's
                   frequency input (Qian et al., "Thinking in Frequency: Face Forgery Detection by Mining
                   Frequency-aware Clues", ECCV 2020).
    ``dct_bands``  F3Net's FAD: low/mid/high masks on the DCT spectrum by ``i + j``, each inverse-DCT'd
                   back to image space -> 3 x C channels.
    ``block_dct``  8x8 block DCT on the JPEG grid of the BT.601 luma: 64 coefficient channels at H/8 x W/8
                   (channel ``u * 8 + v``: vertical frequency u, horizontal v).
    ``fft``        centred log-amplitude spectrum ``log(|fftshift(fft2(x))| + eps)`` per channel.
    ``phase``      phase-only reconstruction ``real(ifft2(exp(i * angle(fft2(x)))))`` per channel, as SPSL
                   uses (Liu et al., "Spatial-Phase Shallow Learning", CVPR 2021).
    ``srm``        the three fixed SRM high-pass residual filters of Luo et al. ("Generalizing Face Forgery
                   Detection with High-frequency Features", CVPR 2021), each summed over the input
                   channels and truncated to [-3, 3] -> 3 channels.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from scipy import ndimage

EPS = 1e-6
"""Added to magnitudes before the log in ``dct`` (log mode) and ``fft``."""

FAD_BANDS = (1 / 2.82, 1 / 2)
"""F3Net's FAD band edges as fractions of the crop side ``N`` on ``i + j`` (which runs 0 .. 2N-2): low
``i + j < N/2.82``, mid ``N/2.82 <= i + j < N/2``, high the rest (F3Net's reference code uses
``size // 2.82`` and ``size // 2``). Bands here are a partition, so they sum back to the image."""

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
"""ITU-R BT.601 luma weights (the JPEG Y channel)."""

SRM_KERNELS = np.stack([
    np.array([[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]]) / 4.0,
    np.array([[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2],
              [-1, 2, -2, 2, -1]]) / 12.0,
    np.array([[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]) / 2.0,
]).astype(np.float32)
"""(3, 5, 5) SRM kernels (Fridrich & Kodovsky 2012, as used by Zhou et al. CVPR 2018 and Luo et al. 2021)."""


def to_chw01(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 -> (C, H, W) float32 in [0, 1]."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected (H, W, C) uint8, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0


def _check(x: np.ndarray) -> np.ndarray:
    if x.ndim != 3:
        raise ValueError(f"expected (C, H, W), got shape {x.shape}")
    return x.astype(np.float32, copy=False)


def dct2(x: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II over the last two axes (float64 inside, float32 out)."""
    return scipy.fft.dctn(x.astype(np.float64), type=2, norm="ortho", axes=(-2, -1)).astype(np.float32)


def idct2(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dct2` (orthonormal DCT-III)."""
    return scipy.fft.idctn(x.astype(np.float64), type=2, norm="ortho", axes=(-2, -1)).astype(np.float32)


def dct(x: np.ndarray, log: bool = True) -> np.ndarray:
    """Full-image DCT per channel.

    Args:
        x: (C, H, W) float32 in [0, 1].
        log: return ``log(|X| + EPS)`` (F3Net's input) instead of signed coefficients.

    Returns:
        (C, H, W) float32; coefficient ``[c, 0, 0]`` is the DC term (``sqrt(H W)`` x mean).
    """
    X = dct2(_check(x))
    return np.log(np.abs(X) + EPS) if log else X


def fad_masks(h: int, w: int, bands: tuple[float, float] = FAD_BANDS) -> np.ndarray:
    """(3, H, W) float32 0/1 masks for the low, mid and high FAD bands (a partition of the spectrum).

    The edges are fractions of ``min(H, W)`` on ``i + j`` (see :data:`FAD_BANDS`).
    """
    lo, hi = bands
    if not 0 < lo < hi:
        raise ValueError(f"band edges must satisfy 0 < low < high, got {bands}")
    n = min(h, w)
    s = np.add.outer(np.arange(h), np.arange(w)).astype(np.float64)
    e1, e2 = lo * n, hi * n
    return np.stack([s < e1, (s >= e1) & (s < e2), s >= e2]).astype(np.float32)


def dct_bands(x: np.ndarray, bands: tuple[float, float] = FAD_BANDS) -> np.ndarray:
    """F3Net frequency-aware decomposition (fixed filters only; the learnable part lives in the model).

    Args:
        x: (C, H, W) float32 in [0, 1].
        bands: low/mid edges, fractions of the crop side on ``i + j``.

    Returns:
        (3 C, H, W) float32: low band of every channel, then mid, then high; they sum to ``x``.
    """
    X = dct2(_check(x))
    m = fad_masks(x.shape[1], x.shape[2], bands)
    return np.concatenate([idct2(X * m[b]) for b in range(3)], axis=0)


def luma(x: np.ndarray) -> np.ndarray:
    """(3, H, W) RGB -> (1, H, W) BT.601 luma; a 1-channel input is returned as is."""
    x = _check(x)
    if x.shape[0] == 1:
        return x
    return np.tensordot(LUMA, x, axes=(0, 0))[None].astype(np.float32)


def block_dct(x: np.ndarray, block: int = 8) -> np.ndarray:
    """Blockwise orthonormal DCT of the luma on the JPEG grid.

    Args:
        x: (C, H, W) float32 in [0, 1], C = 3 (RGB) or 1; H and W multiples of ``block``.
        block: block side (8 for JPEG).

    Returns:
        (block**2, H/block, W/block) float32; channel ``u * block + v`` holds coefficient (u, v).

    Raises:
        ValueError: H or W is not a multiple of ``block``.
    """
    y = luma(x)[0]
    h, w = y.shape
    if h % block or w % block:
        raise ValueError(f"block_dct needs H and W multiples of {block}, got {h}x{w}")
    t = y.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3)  # (hb, wb, u, v)
    c = dct2(t)
    return np.ascontiguousarray(c.reshape(h // block, w // block, block * block).transpose(2, 0, 1))


def fft(x: np.ndarray) -> np.ndarray:
    """Centred log-amplitude spectrum per channel: (C, H, W) -> (C, H, W) float32 (DC at ``[H//2, W//2]``)."""
    F = np.fft.fftshift(np.fft.fft2(_check(x).astype(np.float64), axes=(-2, -1)), axes=(-2, -1))
    return np.log(np.abs(F) + EPS).astype(np.float32)


def phase(x: np.ndarray) -> np.ndarray:
    """Phase-only reconstruction per channel (SPSL): (C, H, W) -> (C, H, W) float32."""
    F = np.fft.fft2(_check(x).astype(np.float64), axes=(-2, -1))
    return np.real(np.fft.ifft2(np.exp(1j * np.angle(F)), axes=(-2, -1))).astype(np.float32)


def srm(x: np.ndarray, truncate: float | None = 3.0) -> np.ndarray:
    """SRM residuals: kernel k cross-correlated with every channel (zero padding), summed over channels.

    Args:
        x: (C, H, W) float32.
        truncate: clip to ``[-truncate, truncate]`` (Luo et al.'s Hardtanh); ``None`` to skip.

    Returns:
        (3, H, W) float32.
    """
    x = _check(x).astype(np.float64)
    out = np.stack([sum(ndimage.correlate(x[c], k.astype(np.float64), mode="constant", cval=0.0)
                        for c in range(x.shape[0])) for k in SRM_KERNELS])
    if truncate is not None:
        out = np.clip(out, -truncate, truncate)
    return out.astype(np.float32)
