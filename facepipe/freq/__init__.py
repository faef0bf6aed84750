"""Frequency views: ``functional`` (numpy reference, used by the ``freq`` stage) and ``torch`` (batched,
any device, used after augmentation in training), with identical numbers.

``compute_view(name, x, cfg)`` / ``compute_views_torch(names, x, cfg)`` dispatch by view name; the
names are :data:`VIEWS`. Output shapes for a (C, H, W) input: ``dct``/``fft``/``phase`` (C, H, W),
``dct_bands`` (3C, H, W), ``block_dct`` (64, H/8, W/8), ``srm`` (3, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from facepipe.freq import functional as Fn
from facepipe.freq.config import VIEWS, FreqConfig

if TYPE_CHECKING:
    import torch

def _unknown(name: str) -> ValueError:
    import difflib

    close = difflib.get_close_matches(name, VIEWS, n=2)
    return ValueError(f"unknown frequency view '{name}' (known: {', '.join(VIEWS)})"
                      + (f"; did you mean {', '.join(close)}?" if close else ""))


def compute_view(name: str, x: np.ndarray, cfg: FreqConfig | None = None) -> np.ndarray:
    """One view of one (C, H, W) float32 [0, 1] image with the numpy reference.

    Raises:
        ValueError: unknown view name or incompatible shape.
    """
    cfg = cfg or FreqConfig()
    if name == "dct":
        return Fn.dct(x, log=cfg.dct_log)
    if name == "dct_bands":
        return Fn.dct_bands(x, tuple(cfg.bands))
    if name == "block_dct":
        return Fn.block_dct(x, cfg.block)
    if name == "fft":
        return Fn.fft(x)
    if name == "phase":
        return Fn.phase(x)
    if name == "srm":
        return Fn.srm(x, cfg.srm_truncate)
    raise _unknown(name)


def compute_views_torch(names, x: "torch.Tensor", cfg: FreqConfig | None = None) -> dict[str, "torch.Tensor"]:
    """Views of a (B, C, H, W) float batch with the torch implementations, on ``x``'s device.

    Raises:
        ValueError: unknown view name or incompatible shape.
    """
    from facepipe.freq import torch as T

    cfg = cfg or FreqConfig()
    out = {}
    for name in names:
        if name == "dct":
            out[name] = T.dct(x, log=cfg.dct_log)
        elif name == "dct_bands":
            out[name] = T.dct_bands(x, tuple(cfg.bands))
        elif name == "block_dct":
            out[name] = T.block_dct(x, cfg.block)
        elif name == "fft":
            out[name] = T.fft(x)
        elif name == "phase":
            out[name] = T.phase(x)
        elif name == "srm":
            out[name] = T.srm(x, cfg.srm_truncate)
        else:
            raise _unknown(name)
    return out


__all__ = ["VIEWS", "FreqConfig", "compute_view", "compute_views_torch"]
