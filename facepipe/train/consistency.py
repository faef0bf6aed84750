"""Global-local multi-view consistency (``train.consistency``): the pooled feature of a face's whole crop (the global
view) is pulled towards those of K random local crops of the same face, against the other faces of the batch
(InfoNCE, as the global-local consistency loss of the researcher's notes, ``shared/seeds/004``: ``similarity =
normalize(global) @ normalize(local).T / temperature``, cross-entropy with the diagonal as targets), or simply
towards them (``cosine``: ``1 - cos``). Logged as the auxiliary loss ``consistency`` and weighted by ``weight``.

The global view is the training image itself; its pooled feature also gives the logit, so the consistency term
costs one extra forward of the K small local views (``size`` px).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from facepipe.config import Section
from facepipe.errors import ConfigError


class ConsistencyConfig(Section):
    """Attributes:
        views: local crops per face (K).
        scale: (low, high) side of a local crop as a share of the image side, drawn uniformly per crop.
        size: side of the local views in pixels (the seed's 96).
        loss: ``infonce`` (the seed's contrastive form) or ``cosine``.
        temperature: InfoNCE temperature (the seed's 0.1).
        weight: the term's weight in the total loss.
    """

    views: int = Field(2, ge=1)
    scale: tuple[float, float] = (0.4, 0.7)
    size: int = Field(96, ge=16)
    loss: Literal["infonce", "cosine"] = "infonce"
    temperature: float = Field(0.1, gt=0)
    weight: float = Field(0.1, ge=0)

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"scale must be 0 < low <= high <= 1, got {list(v)}")
        return v


def local_views(image: torch.Tensor, cfg: ConsistencyConfig, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """K random square crops of every image, resized to ``cfg.size`` (bilinear, ``torchvision.ops.roi_align``).

    Args:
        image: (B, 3, H, W) float images.

    Returns:
        (K, B, 3, size, size) crops; crop k of image b lies inside it, its side ``U(scale) * min(H, W)``.
    """
    from torchvision.ops import roi_align

    b, _, h, w = image.shape
    k = cfg.views
    side = min(h, w) * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * torch.rand(k, b, generator=generator))
    x0 = (w - side) * torch.rand(k, b, generator=generator)
    y0 = (h - side) * torch.rand(k, b, generator=generator)
    idx = torch.arange(b, dtype=torch.float32).expand(k, b)
    boxes = torch.stack([idx, x0, y0, x0 + side, y0 + side], dim=-1).reshape(-1, 5).to(image.device, image.dtype)
    crops = roi_align(image, boxes, output_size=cfg.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops.reshape(k, b, *crops.shape[1:])


def consistency_loss(global_feat: torch.Tensor, local_feats: torch.Tensor, cfg: ConsistencyConfig) -> torch.Tensor:
    """The global-local term, averaged over the K local views.

    Args:
        global_feat: (B, C) pooled features of the whole crops.
        local_feats: (K, B, C) pooled features of the local crops.

    Returns:
        A scalar: InfoNCE ``CE(normalize(g) @ normalize(l_k).T / temperature, arange(B))`` or ``1 - cos(g, l_k)``,
        mean over k (and faces).
    """
    g = F.normalize(global_feat.float(), dim=-1)
    terms = []
    for lk in local_feats:
        lk = F.normalize(lk.float(), dim=-1)
        if cfg.loss == "cosine":
            terms.append((1 - (g * lk).sum(-1)).mean())
        else:
            sim = g @ lk.T / cfg.temperature
            terms.append(F.cross_entropy(sim, torch.arange(len(g), device=g.device)))
    return torch.stack(terms).mean()


def consistent_forward(core: torch.nn.Module, inputs: dict, cfg: ConsistencyConfig) -> dict:
    """A model's training forward with the consistency term: ``{"logit", "losses": {"consistency": ...}}``.

    Raises:
        ConfigError: the model does not compute its logit as ``head(pooled(inputs))`` (timm-backbone members:
            ``resnet18``, ``xception``, ``efficientnet_b4``, ``vit_b16``, ``swin_t``, ``timm:<name>``), or reads
            frequency views (the local crops have none).
    """
    from facepipe.models.baselines import BackboneClassifier

    if not isinstance(core, BackboneClassifier) or set(inputs) - {"image", "label"}:
        raise ConfigError(f"train.consistency needs a model whose logit is head(pooled(image)) (timm-backbone "
                          f"members such as resnet18, xception, efficientnet_b4, timm:<name>); "
                          f"'{core.spec.name}' is not one")
    g = core.pooled({"image": inputs["image"]})
    views = local_views(inputs["image"], cfg)
    k, b = views.shape[:2]
    local = core.pooled({"image": views.flatten(0, 1)}).unflatten(0, (k, b))
    return {"logit": core.head(g).squeeze(1), "losses": {"consistency": consistency_loss(g, local, cfg)}}


__all__ = ["ConsistencyConfig", "consistency_loss", "consistent_forward", "local_views"]
