"""Frequency views: numpy reference vs torch on real crops, round trips, Parseval, band partition."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from facepipe.freq import VIEWS, compute_view, compute_views_torch
from facepipe.freq import functional as Fn
from facepipe.freq import torch as T
from facepipe.freq.config import FreqConfig
from tests.conftest import REAL


def _crops(t1) -> np.ndarray:
    """(N, 3, 64, 64) float32 [0, 1]: real face crops (shared FF++/MesoNet crops when present, else t1)."""
    imgs = []
    if REAL.is_dir():
        for name in ("000_0000.png", "001_0000.png", "df00204.jpg", "real00240.jpg"):
            im = cv2.cvtColor(cv2.imread(str(REAL / "images" / "crops" / name)), cv2.COLOR_BGR2RGB)
            imgs.append(cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA))
    imgs.append(cv2.resize(t1[100:400, 450:750], (64, 64), interpolation=cv2.INTER_AREA))
    return np.stack([Fn.to_chw01(i) for i in imgs])


@pytest.mark.parametrize("name", VIEWS)
def test_numpy_and_torch_agree_on_real_crops(name, t1):
    x = _crops(t1)
    cfg = FreqConfig(dct_log=False)
    ref = np.stack([compute_view(name, xi, cfg) for xi in x])
    got = compute_views_torch([name], torch.from_numpy(x), cfg)[name].numpy()
    assert got.shape == ref.shape and got.dtype == np.float32
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * scale)


def test_log_views_agree_where_the_spectrum_is_not_zero(t1):
    x = _crops(t1)
    ref_abs = np.abs(np.stack([Fn.dct(xi, log=False) for xi in x]))
    ref = np.stack([Fn.dct(xi, log=True) for xi in x])
    got = T.dct(torch.from_numpy(x), log=True).numpy()
    big = ref_abs > 1e-2  # float32 matmul noise is ~1e-6; below that the log is noise by definition
    np.testing.assert_allclose(got[big], ref[big], rtol=1e-4, atol=1e-4)
    ref_f = np.stack([Fn.fft(xi) for xi in x])
    np.testing.assert_allclose(T.fft(torch.from_numpy(x)).numpy(), ref_f, rtol=1e-4, atol=1e-3)


def test_dct_round_trip_and_parseval(t1):
    x = _crops(t1)[0]
    X = Fn.dct(x, log=False)
    np.testing.assert_allclose(Fn.idct2(X), x, atol=1e-5)
    np.testing.assert_allclose((X.astype(np.float64) ** 2).sum(), (x.astype(np.float64) ** 2).sum(), rtol=1e-5)
    # DC coefficient is sqrt(H W) times the mean (orthonormal scaling)
    np.testing.assert_allclose(X[:, 0, 0], np.sqrt(64 * 64) * x.mean(axis=(1, 2)), rtol=1e-5)
    xt = torch.from_numpy(_crops(t1))
    np.testing.assert_allclose(T.idct2(T.dct2(xt)).numpy(), xt.numpy(), atol=1e-5)
    F = np.fft.fft2(x.astype(np.float64))
    np.testing.assert_allclose((np.abs(F) ** 2).sum() / (64 * 64), (x.astype(np.float64) ** 2).sum(), rtol=1e-9)


def test_fad_bands_partition_the_spectrum(t1):
    x = _crops(t1)[0]
    m = Fn.fad_masks(64, 64)
    assert np.array_equal(m.sum(0), np.ones((64, 64)))  # every coefficient in exactly one band
    assert m[0, 0, 0] == 1 and m[2, 63, 63] == 1 and m[1, 0, 25] == 1  # 64/2.82 = 22.7, 64/2 = 32
    b = Fn.dct_bands(x)
    assert b.shape == (9, 64, 64)
    np.testing.assert_allclose(b[0:3] + b[3:6] + b[6:9], x, atol=1e-5)
    assert np.abs(b[6:9]).mean() < np.abs(b[0:3]).mean()  # faces carry most energy in low frequencies


def test_block_dct_on_the_jpeg_grid():
    flat = np.full((3, 32, 48), 0.5, np.float32)
    c = Fn.block_dct(flat)
    assert c.shape == (64, 4, 6)
    np.testing.assert_allclose(c[0], 0.5 * 8, rtol=1e-6)  # DC of an 8x8 block = 8 x mean
    assert np.abs(c[1:]).max() < 1e-6
    # A vertical-only cosine shows up in channel u * 8 + 0.
    y = np.cos(np.pi * (2 * np.arange(8) + 1) * 3 / 16)
    img = np.repeat(np.tile(y, 4)[:, None], 8, axis=1)[None].repeat(3, 0).astype(np.float32)
    c = Fn.block_dct(img)
    assert np.argmax(np.abs(c).sum(axis=(1, 2))) == 3 * 8
    with pytest.raises(ValueError, match="multiples of 8"):
        Fn.block_dct(np.zeros((3, 30, 32), np.float32))


def test_fft_centre_and_phase_only(t1):
    x = _crops(t1)[0]
    f = Fn.fft(x)
    assert np.unravel_index(np.argmax(f[0]), f[0].shape) == (32, 32)  # DC at the centre
    p = Fn.phase(x)
    P = np.fft.fft2(p.astype(np.float64))
    np.testing.assert_allclose(np.abs(P), 1.0, atol=1e-6)  # unit amplitude everywhere
    np.testing.assert_allclose(np.angle(P[:, 3, 5]), np.angle(np.fft.fft2(x)[:, 3, 5]), atol=1e-5)


def test_srm_removes_smooth_content():
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32
    ramp = np.stack([0.2 + 0.5 * xx + 0.1 * yy] * 3)
    r = Fn.srm(ramp)
    assert r.shape == (3, 32, 32)
    assert np.abs(r[:, 3:-3, 3:-3]).max() < 1e-5  # linear content has zero second differences
    noise = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    assert np.abs(Fn.srm(noise)[:, 3:-3, 3:-3]).mean() > 0.1


def test_unknown_view_is_named():
    with pytest.raises(ValueError, match="did you mean dct"):
        compute_view("dtc", np.zeros((3, 8, 8), np.float32))
