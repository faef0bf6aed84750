"""Frequency-aware detectors: F3Net's FAD branch beside an RGB backbone, and an RGB + SRM two-stream model."""

from __future__ import annotations

import torch
from torch import nn

from facepipe.freq.functional import FAD_BANDS
from facepipe.freq.torch import dct2, fad_masks, idct2
from facepipe.models._registry import ModelSpec, register_model, timm_backbone


class FAD(nn.Module):
    """Frequency-aware decomposition with learnable band offsets (Qian et al., "Thinking in Frequency",
    ECCV 2020, Sec. 3.2).

    For each band b: ``IDCT(DCT(x) * (base_b + (2 * sigmoid(w_b) - 1)))`` with fixed masks ``base_b`` (low /
    mid / high on ``i + j``, :func:`facepipe.freq.torch.fad_masks`) and learnable ``w_b`` (init N(0, 0.1)).

    Args:
        size: input side in pixels (the filters are size x size).
        bands: low/mid edges as fractions of ``size``.

    Shapes: (B, C, size, size) -> (B, 3C, size, size).
    """

    def __init__(self, size: int, bands: tuple[float, float] = FAD_BANDS) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("base", fad_masks(size, size, bands))
        self.learnable = nn.Parameter(torch.randn(3, size, size) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"FAD built for {self.size}x{self.size} inputs, got {tuple(x.shape[-2:])}")
        X = dct2(x.float())
        filt = self.base + (2 * torch.sigmoid(self.learnable) - 1)
        return torch.cat([idct2(X * filt[b]) for b in range(3)], dim=1).to(x.dtype)


class F3Net(nn.Module):
    """RGB backbone + a backbone over the FAD bands (9 channels), pooled features concatenated before the head.

    F3Net's MixBlock cross-attention between the streams and its LFS branch are not reproduced; the
    fusion is late (feature concatenation), as in common re-implementations' "FAD-only" variant.
    """

    def __init__(self, pretrained=False, backbone: str = "legacy_xception", input_size: int = 299,
                 drop: float = 0.2) -> None:
        super().__init__()
        self.fad = FAD(input_size)
        self.rgb = timm_backbone(backbone, pretrained)
        self.freq = timm_backbone(backbone, pretrained, in_chans=9)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.rgb.num_features + self.freq.num_features, 1))

    def forward(self, inputs: dict) -> torch.Tensor:
        x = inputs["image"]
        f = torch.cat([self.rgb(x), self.freq(self.fad(x))], dim=1)
        return self.head(f).squeeze(1)


class TwoStreamSRM(nn.Module):
    """RGB stream + SRM high-frequency residual stream (the ``srm`` view), features concatenated
    (after Luo et al., "Generalizing Face Forgery Detection with High-frequency Features", CVPR 2021)."""

    def __init__(self, pretrained=False, backbone: str = "resnet18", drop: float = 0.2) -> None:
        super().__init__()
        self.rgb = timm_backbone(backbone, pretrained)
        self.srm = timm_backbone(backbone, pretrained)
        self.head = nn.Sequential(nn.Dropout(drop), nn.Linear(self.rgb.num_features + self.srm.num_features, 1))

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(torch.cat([self.rgb(inputs["image"]), self.srm(inputs["srm"])], dim=1)).squeeze(1)


@register_model(ModelSpec("f3net", input_size=299, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                paper="Qian et al., ECCV 2020 (FAD branch)", timm_name="legacy_xception",
                             size_options=("input_size",)))
def f3net(pretrained=False, **kw) -> nn.Module:
    return F3Net(pretrained, **kw)


@register_model(ModelSpec("two_stream_srm", inputs=("image", "srm"), input_size=256,
                                paper="Luo et al., CVPR 2021 (two-stream RGB + SRM)", timm_name="resnet18"))
def two_stream_srm(pretrained=False, **kw) -> nn.Module:
    return TwoStreamSRM(pretrained, **kw)
