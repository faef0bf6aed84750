"""Single-stream baselines on timm backbones: Xception (FF++), EfficientNet-B4 (DFDC winners), ResNet-18, ViT-B/16,
Swin-T, and any timm model as ``timm:<name>``."""

from __future__ import annotations

import torch
from torch import nn

from facepipe.errors import ConfigError
from facepipe.models._builders import FrozenAwareModule, freeze, timm_backbone
from facepipe.models._registry import HALF, ModelSpec, register_model
from facepipe.models.plugins import insert_plugins

POOLS = ("avg", "max", "avgmax", "token")


def pool_features(f: torch.Tensor, pool: str, prefix_tokens: int = 0, nhwc: bool = False) -> torch.Tensor:
    """Pool a backbone's unpooled features to (B, C).

    Args:
        f: (B, C, H, W) CNN maps, (B, H, W, C) with ``nhwc`` (Swin), or (B, N, C) tokens (ViT).
        pool: ``avg`` | ``max`` | ``avgmax`` (mean of both) | ``token`` (the first prefix token, e.g. CLS).
        prefix_tokens: leading non-patch tokens of a token sequence (left out of avg/max).

    Raises:
        ConfigError: ``token`` pooling of features without a prefix token.
    """
    if f.ndim == 3:
        if pool == "token":
            if not prefix_tokens:
                raise ConfigError("pool 'token' needs a model with a class token")
            return f[:, 0]
        t = f[:, prefix_tokens:]
        avg, mx = t.mean(1), t.amax(1)
    else:
        if pool == "token":
            raise ConfigError("pool 'token' is for transformer tokens; use avg, max or avgmax")
        dims = (1, 2) if nhwc else (2, 3)
        avg, mx = f.mean(dims), f.amax(dims)
    return {"avg": avg, "max": mx, "avgmax": (avg + mx) / 2}[pool]


class BackboneClassifier(FrozenAwareModule):
    """timm backbone (unpooled) -> pooling -> dropout -> linear -> one logit.

    Args:
        timm_name: timm model name.
        pretrained: see :func:`facepipe.models.create_model`.
        freeze_backbone: train only the head; the backbone's batch-norm statistics stay fixed (a linear probe).
        drop_rate: dropout before the head.
        pool: ``avg`` | ``max`` (the seed's ``AdaptiveMaxPool2d`` + ``Linear(512, 1)`` head on ResNet-18) |
            ``avgmax`` | ``token`` (ViT class token); default: the backbone's own (token for ViTs, avg else).
        plugins: global-context plug-ins after named stages (:mod:`facepipe.models.plugins`).
        features_only, out_indices: pool several stages of a ``features_only`` timm backbone and concatenate
            them (multi-scale features) instead of the last map.
        **backbone_kwargs: passed to ``timm.create_model`` (e.g. ``depth``/``embed_dim`` for tiny test configs).

    Inputs: ``{"image": (B, 3, H, W)}``; output (B,) logits.
    """

    def __init__(self, timm_name: str, pretrained=False, freeze_backbone: bool = False, drop_rate: float = 0.2,
                 pool: str | None = None, plugins=(), features_only: bool = False, out_indices=None,
                 **backbone_kwargs) -> None:
        super().__init__()
        if pool is not None and pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {pool!r}")
        self.features_only = bool(features_only)
        if self.features_only:
            extra = {"features_only": True, **({"out_indices": tuple(out_indices)} if out_indices else {})}
            self.backbone = timm_backbone(timm_name, pretrained, num_classes=None, **extra, **backbone_kwargs)
            self.backbone_num_features = sum(self.backbone.feature_info.channels())
        else:
            self.backbone = timm_backbone(timm_name, pretrained, global_pool="", **backbone_kwargs)
            self.backbone_num_features = self.backbone.num_features
        self.prefix_tokens = int(getattr(self.backbone, "num_prefix_tokens", 0))
        self.nhwc = getattr(self.backbone, "output_fmt", "NCHW") == "NHWC" or "swin" in timm_name
        self.pool = pool or ("token" if self.prefix_tokens else "avg")
        insert_plugins(self.backbone, plugins, probe_size=backbone_kwargs.get("img_size", 64) if isinstance(
            backbone_kwargs.get("img_size", 64), int) else 64)
        if freeze_backbone:
            freeze(self.backbone)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.backbone_num_features, 1))

    def forward_features(self, inputs: dict) -> torch.Tensor | list[torch.Tensor]:
        """Unpooled backbone features of ``inputs["image"]`` (a list of stages with ``features_only``)."""
        x = inputs["image"]
        return self.backbone(x) if self.features_only else self.backbone.forward_features(x)

    def pooled(self, inputs: dict) -> torch.Tensor:
        f = self.forward_features(inputs)
        if self.features_only:
            return torch.cat([pool_features(s, self.pool if self.pool != "token" else "avg") for s in f], dim=1)
        return pool_features(f, self.pool, self.prefix_tokens, self.nhwc)

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.pooled(inputs)).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}


def timm_classifier(timm_name: str, pretrained=False, **kw) -> BackboneClassifier:
    """Any timm model with a one-logit head (``timm:<name>``)."""
    return BackboneClassifier(timm_name, pretrained, **kw)


@register_model(ModelSpec("xception", input_size=299, mean=HALF, std=HALF, timm_name="legacy_xception",
                          paper="Chollet, CVPR 2017; FF++ baseline (Rössler et al., ICCV 2019)",
                          faithful="timm legacy_xception (the Cadene/FF++ network), one-logit head",
                          target_layer="backbone.act4"))
def xception(pretrained=False, **kw) -> BackboneClassifier:
    return BackboneClassifier("legacy_xception", pretrained, **kw)


@register_model(ModelSpec("efficientnet_b4", input_size=380, timm_name="efficientnet_b4",
                          paper="Tan & Le, ICML 2019; DFDC winning solutions (Seferbekov 2020)",
                          faithful="timm efficientnet_b4, one-logit head", target_layer="backbone.conv_head"))
def efficientnet_b4(pretrained=False, **kw) -> BackboneClassifier:
    return BackboneClassifier("efficientnet_b4", pretrained, **kw)


@register_model(ModelSpec("resnet18", input_size=224, timm_name="resnet18",
                          paper="He et al., CVPR 2016 (transfer baseline)",
                          faithful="timm resnet18; freeze_backbone=True is a linear probe (BN statistics frozen "
                                   "too); pool=max is the design notes' AdaptiveMaxPool2d + Linear(512, 1) head",
                          target_layer="backbone.layer4"))
def resnet18(pretrained=False, **kw) -> BackboneClassifier:
    return BackboneClassifier("resnet18", pretrained, **kw)


@register_model(ModelSpec("vit_b16", input_size=224, mean=HALF, std=HALF, timm_name="vit_base_patch16_224",
                          family="vit", paper="Dosovitskiy et al., ICLR 2021 (ViT-B/16)",
                          faithful="timm vit_base_patch16_224, class-token head",
                          target_layer="backbone.blocks.-1.norm1", explain="attn_grad"))
def vit_b16(pretrained=False, **kw) -> BackboneClassifier:
    return BackboneClassifier("vit_base_patch16_224", pretrained, **kw)


@register_model(ModelSpec("swin_t", input_size=224, timm_name="swin_tiny_patch4_window7_224", family="vit",
                          paper="Liu et al., ICCV 2021 (Swin-T)",
                          faithful="timm swin_tiny_patch4_window7_224, average-pooled head",
                          target_layer="backbone.layers.-1"))
def swin_t(pretrained=False, **kw) -> BackboneClassifier:
    return BackboneClassifier("swin_tiny_patch4_window7_224", pretrained, **kw)


__all__ = ["POOLS", "BackboneClassifier", "pool_features", "timm_classifier"]
