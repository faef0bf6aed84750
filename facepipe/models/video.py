"""Video forgery detectors: models that read a *clip* of consecutive face crops (``ModelSpec.sample_kind ==
"clip"``) from a clip set (``extract.sampling.mode: clips``) and give one logit per clip.

Input ``{"image": (B, T, 3, H, W) float}`` normalised with the spec's mean and std; output (B,) logits. Video-level
scores are the mean over a video's clips (``evaluate.video_agg: mean``).

- ``r3d_18``: torchvision's 3D ResNet-18 (Tran et al., "A Closer Look at Spatiotemporal Convolutions for Action
  Recognition", CVPR 2018) with a one-logit head: the 3D-CNN video baseline.
- ``clip_pool``: any timm image backbone applied to every frame, features averaged (or max-pooled) over time, one
  logit: the simple baseline users reach for first.
- ``tall``: TALL (Xu et al., "TALL: Thumbnail Layout for Deepfake Video Detection", ICCV 2023): the frames of a
  clip tiled into one thumbnail for a Swin Transformer.
- ``ftcn``: FTCN (Zheng et al., "Exploring Temporal Coherence for More General Video Face Forgery Detection", ICCV
  2021): a fully temporal 3D ResNet-50 (spatial kernels 1) and a temporal Transformer.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from facepipe.errors import ConfigError
from facepipe.models._builders import FrozenAwareModule, timm_backbone
from facepipe.models._registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register_model

log = logging.getLogger(__name__)

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
"""Normalisation of torchvision's Kinetics-400 video models (``R3D_18_Weights.KINETICS400_V1.transforms``)."""


def _clip(inputs: dict, where: str) -> torch.Tensor:
    """``inputs["image"]`` checked to be a clip batch (B, T, 3, H, W)."""
    x = inputs["image"]
    if x.dim() != 5:
        raise ConfigError(f"{where} reads clips (B, T, 3, H, W); got a batch of shape {tuple(x.shape)}: train it on "
                          "a clip set (extract.sampling.mode clips)")
    return x


def _load_state(module: nn.Module, pretrained: bool | str, name: str) -> None:
    """Weights from a local file (``pretrained`` a path: a state dict, or a checkpoint holding one under
    ``state_dict`` / ``model``); ``True`` without a path is refused (nothing is downloaded)."""
    if not pretrained:
        return
    if pretrained is True:
        raise ConfigError(f"{name}: pretrained weights come from a local file (model_options.pretrained: PATH); "
                          "facepipe downloads nothing")
    state = torch.load(str(pretrained), map_location="cpu", weights_only=True)
    for k in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(k), dict):
            state = state[k]
    missing, unexpected = module.load_state_dict(state, strict=False)
    log.info("%s: weights from %s (%d missing, %d unexpected keys)", name, pretrained, len(missing), len(unexpected))


class R3D18(FrozenAwareModule):
    """torchvision's ``r3d_18`` (3D ResNet-18: 3x3x3 convolutions throughout) with a one-logit head.

    Args:
        pretrained: ``False``, or a local file with torchvision's Kinetics-400 ``r3d_18`` state dict (the fc layer
            is replaced).
        drop_rate: dropout before the head.

    Inputs: ``{"image": (B, T, 3, H, W)}`` (torchvision's video models read (B, 3, T, H, W)); output (B,) logits.
    """

    def __init__(self, pretrained: bool | str = False, drop_rate: float = 0.2) -> None:
        super().__init__()
        from torchvision.models.video import r3d_18 as tv_r3d_18

        self.backbone = tv_r3d_18(weights=None)
        _load_state(self.backbone, pretrained, "r3d_18")
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(512, 1))

    def forward(self, inputs: dict) -> torch.Tensor:
        x = _clip(inputs, "r3d_18").transpose(1, 2)  # (B, 3, T, H, W)
        return self.head(self.backbone(x)).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}


@register_model(ModelSpec("r3d_18", input_size=112, mean=KINETICS_MEAN, std=KINETICS_STD, sample_kind="clip",
                          paper="Tran et al., 'A Closer Look at Spatiotemporal Convolutions for Action Recognition', "
                                "CVPR 2018 (torchvision r3d_18)",
                          faithful="torchvision's r3d_18 with a one-logit head; Kinetics-400 normalisation and 112 "
                                   "px input as its weights; a 3D-CNN baseline, not DeepfakeBench's I3D (an I3D R50)",
                          family="video", target_layer="backbone.layer4"))
def r3d_18(pretrained=False, **kw) -> R3D18:
    return R3D18(pretrained, **kw)


class ClipPool(FrozenAwareModule):
    """A timm image backbone on every frame, its pooled features averaged (``temporal: mean``) or max-pooled over
    the clip, then one logit.

    Args:
        backbone: timm model name (``efficientnet_b0``, ``resnet18``, ``xception41`` ...).
        pretrained: see :func:`facepipe.models.create_model` (local weights only).
        temporal: ``mean`` | ``max`` over the frames' features.
        drop_rate: dropout before the head.
        **backbone_kwargs: passed to ``timm.create_model`` (tiny test configs).

    Inputs: ``{"image": (B, T, 3, H, W)}``; output (B,) logits.
    """

    def __init__(self, backbone: str = "resnet18", pretrained: bool | str = False, temporal: str = "mean",
                 drop_rate: float = 0.2, **backbone_kwargs) -> None:
        super().__init__()
        if temporal not in ("mean", "max"):
            raise ConfigError(f"clip_pool: temporal must be mean or max, got {temporal!r}")
        self.temporal = temporal
        self.backbone = timm_backbone(backbone, pretrained, **backbone_kwargs)  # num_classes=0: pooled features
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.backbone.num_features, 1))

    def forward(self, inputs: dict) -> torch.Tensor:
        x = _clip(inputs, "clip_pool")
        b, t = x.shape[:2]
        f = self.backbone(x.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, C)
        f = f.mean(1) if self.temporal == "mean" else f.amax(1)
        return self.head(f).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}


@register_model(ModelSpec("clip_pool", input_size=224, sample_kind="clip", family="video",
                          paper="per-frame CNN + temporal average pooling (the usual frame-to-video baseline)",
                          faithful="facepipe's baseline: a timm backbone per frame, mean (or max) over time, one "
                                   "logit; not a published architecture",
                          defaults={"backbone": "resnet18"}))
def clip_pool(pretrained=False, **kw) -> ClipPool:
    return ClipPool(pretrained=pretrained, **kw)


class TALL(FrozenAwareModule):
    """TALL (Xu et al., ICCV 2023): the T = ``rows`` x ``cols`` frames of a clip laid out row by row as one thumbnail
    (``rearrange(x, 'b (th tw c) h w -> b c (th h) (tw w)')`` in the reference ``my_models/tall_swin.py``), the
    thumbnail resized back to ``img_size`` (bilinear, so each frame is ``img_size / rows`` high), and a Swin
    Transformer on it. In training, one random ``cutout`` x ``cutout`` square is zeroed at the same place in every
    frame of a clip before tiling (the reference's ``GroupCutout(n_holes=1, length=16)``, drawn once per clip).

    Args:
        pretrained: see :func:`facepipe.models.create_model` (local weights only; timm adapts window sizes).
        rows, cols: the thumbnail grid (the paper's main setting: 4 frames in 2 x 2; its code's default 8 in 4 x 2).
        img_size: the Swin input side (224).
        swin: the timm Swin (``swin_base_patch4_window7_224``: Swin-B, ImageNet-22k weights in the paper).
        window_size: per-stage attention windows; the reference uses (14, 14, 14, 7) on Swin-B (needs timm >= 1.0.31
            for per-stage windows; give one int on older timm, a stated deviation).
        cutout: side of the training cutout square in pixels (0: off).
        drop_rate: dropout before the head.
        **swin_kwargs: passed to ``timm.create_model`` (``embed_dim``, ``depths``, ``num_heads`` for tiny test
            configs).

    Inputs: ``{"image": (B, rows * cols, 3, H, W)}``; output (B,) logits.
    """

    def __init__(self, pretrained: bool | str = False, rows: int = 2, cols: int = 2, img_size: int = 224,
                 swin: str = "swin_base_patch4_window7_224", window_size=(14, 14, 14, 7), cutout: int = 16,
                 drop_rate: float = 0.0, **swin_kwargs) -> None:
        super().__init__()
        self.rows, self.cols, self.img_size, self.cutout = int(rows), int(cols), int(img_size), int(cutout)
        self.clip_length = self.rows * self.cols
        try:
            self.backbone = timm_backbone(swin, pretrained, img_size=img_size, window_size=window_size, **swin_kwargs)
        except (AssertionError, TypeError) as e:
            if isinstance(window_size, int):
                raise
            raise ConfigError(f"tall: this timm cannot build {swin} with per-stage windows {tuple(window_size)} "
                              f"({type(e).__name__}: {e}); upgrade timm (>= 1.0.31) or set window_size to one int "
                              "(a deviation from TALL's windows)") from None
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(self.backbone.num_features, 1))

    def thumbnail(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, 3, img_size, img_size): frames row by row, then resized as the reference does."""
        b, t, c, h, w = x.shape
        if t != self.rows * self.cols:
            raise ConfigError(f"tall: a {self.rows} x {self.cols} thumbnail takes clips of {self.rows * self.cols} "
                              f"frames, got {t} (extract.sampling.clip_length, or model_options rows/cols)")
        if (h, w) != (self.img_size, self.img_size):
            x = nn.functional.interpolate(x.flatten(0, 1), size=(self.img_size,) * 2, mode="bilinear",
                                          align_corners=False).unflatten(0, (b, t))
            h = w = self.img_size
        grid = x.reshape(b, self.rows, self.cols, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, self.rows * h,
                                                                                           self.cols * w)
        return nn.functional.interpolate(grid, size=(self.img_size,) * 2, mode="bilinear", align_corners=False)

    def _cutout(self, x: torch.Tensor) -> torch.Tensor:
        """One ``cutout`` square per clip, at the same place in every frame (training only)."""
        b, _, _, h, w = x.shape
        ys = torch.randint(0, h, (b,), device=x.device)
        xs = torch.randint(0, w, (b,), device=x.device)
        yy = torch.arange(h, device=x.device).view(1, h, 1)
        xx = torch.arange(w, device=x.device).view(1, 1, w)
        half = self.cutout // 2  # GroupCutout: rows y-half .. y+half-1 and columns likewise, cut at the border
        y0, x0 = ys.view(b, 1, 1) - half, xs.view(b, 1, 1) - half
        hole = (yy >= y0) & (yy < y0 + 2 * half) & (xx >= x0) & (xx < x0 + 2 * half)  # (B, H, W)
        return x.masked_fill(hole[:, None, None], 0.0)

    def forward_thumbnail(self, thumb: torch.Tensor) -> torch.Tensor:
        """(B, 3, img_size, img_size) thumbnails -> (B,) logits (what explanations take the gradient of)."""
        return self.head(self.backbone(thumb)).squeeze(1)

    def forward(self, inputs: dict) -> torch.Tensor:
        x = _clip(inputs, "tall")
        if self.training and self.cutout > 0:
            x = self._cutout(x)
        return self.forward_thumbnail(self.thumbnail(x))

    def branches(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "head": self.head}


@register_model(ModelSpec("tall", input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, sample_kind="clip",
                          clip_length=4, timm_name="swin_base_patch4_window7_224", family="video",
                          paper="Xu et al., 'TALL: Thumbnail Layout for Deepfake Video Detection', ICCV 2023",
                          faithful="thumbnail layout of 2 x 2 frames resized to 224 for Swin-B with windows "
                                   "(14, 14, 14, 7) and a per-clip 16 px cutout in training, as the reference "
                                   "(rainy-xu/TALL4Deepfake); one logit instead of two classes",
                          target_layer="backbone.layers.-1"))
def tall(pretrained=False, **kw) -> TALL:
    return TALL(pretrained, **kw)


# -- FTCN --

FTCN_TEMPORAL_KERNELS = ((3,), (3, 1), (3, 1))
"""Temporal kernel of each block's first conv, repeated over a stage's blocks (res2, res3, res4): the I3D basis of
SlowFast's ``_TEMPORAL_KERNEL_BASIS["i3d"]`` that FTCN builds on (res5 is not used)."""


class _DownBN(nn.Sequential):
    """FTCN's replacement of a spatially strided conv's batch norm: the norm, then a (1, 2, 2) max-pool (the conv
    itself runs at stride 1 with a spatial kernel of 1)."""

    def __init__(self, channels: int, down: bool) -> None:
        super().__init__(nn.BatchNorm3d(channels), *([nn.MaxPool3d((1, 2, 2))] if down else []))


class _FTCNBottleneck(nn.Module):
    """SlowFast's bottleneck with FTCN's fully temporal convolutions: a (kt, 1, 1), b (1, 1, 1), c (1, 1, 1), spatial
    downsampling by a max-pool after b's norm (and after the shortcut's), the last norm zero-initialised."""

    def __init__(self, dim_in: int, inner: int, dim_out: int, kt: int, down: bool) -> None:
        super().__init__()
        self.a = nn.Conv3d(dim_in, inner, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)
        self.a_bn = nn.BatchNorm3d(inner)
        self.b = nn.Conv3d(inner, inner, 1, bias=False)
        self.b_bn = _DownBN(inner, down)
        self.c = nn.Conv3d(inner, dim_out, 1, bias=False)
        self.c_bn = nn.BatchNorm3d(dim_out)
        nn.init.zeros_(self.c_bn.weight)
        self.shortcut = (nn.Sequential(nn.Conv3d(dim_in, dim_out, 1, bias=False), _DownBN(dim_out, down))
                         if dim_in != dim_out or down else None)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.a_bn(self.a(x)))
        y = self.relu(self.b_bn(self.b(y)))
        y = self.c_bn(self.c(y))
        return self.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class _TimeTransformer(nn.Module):
    """FTCN's temporal Transformer (``model/classifier/time_transformer.py``): a learned class token and position
    embedding over the time steps, pre-norm layers (attention with ``heads`` x ``dim_head``, bias-free qkv; MLP with
    GELU), dropout 0.1, the class token through LayerNorm and a linear layer to one logit."""

    def __init__(self, steps: int, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, steps + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleDict({
                "attn_norm": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * heads * dim_head, bias=False),
                "proj": nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout)),
                "mlp_norm": nn.LayerNorm(dim),
                "mlp": nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim),
                                     nn.Dropout(dropout))}))
        self.heads, self.dim_head = heads, dim_head
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1))

    def _attend(self, layer: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = layer["qkv"](layer["attn_norm"](x)).view(b, n, 3, self.heads, self.dim_head).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(dim_head)) v
        return layer["proj"](out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, steps, dim) -> (B,) logits."""
        if tokens.shape[1] + 1 != self.pos_embedding.shape[1]:
            raise ConfigError(f"ftcn: the temporal Transformer was built for {self.pos_embedding.shape[1] - 1} time "
                              f"steps (clips of {2 * (self.pos_embedding.shape[1] - 1)} frames), got {tokens.shape[1]}")
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.pos_embedding
        x = self.dropout(x)
        for layer in self.layers:
            x = x + self._attend(layer, x)
            x = x + layer["mlp"](layer["mlp_norm"](x))
        return self.head(x[:, 0]).squeeze(1)


class FTCN(FrozenAwareModule):
    """FTCN (Zheng et al., ICCV 2021), as its reference code builds it (yinglinzheng/FTCN: SlowFast's I3D ResNet-50,
    ``temporal_only_conv``, ``TransformerHead`` / ``TimeTransformer`` of ``setting/ftcn_tt.yaml``):

    - the I3D ResNet-50 up to res4 (res5 removed: ``stop_point 5``) with every convolution's spatial kernel set to 1
      (temporal kernels kept: stem 5, res2 3,3,3, res3 3,1,3,1, res4 3,1,3,1,3,1); spatial downsampling by a (1, 2, 2)
      max-pool after the norm of each formerly strided conv; the stem's 3x3 max-pool and the (2, 1, 1) temporal pool
      after res2 kept. A 32 x 224 x 224 clip gives (1024, 16, 14, 14);
    - features averaged over space -> 16 time steps of 1024 -> a temporal Transformer of one layer, 16 heads of 64,
      MLP 2048, dropout 0.1, class token -> one logit (the reference applies a sigmoid to it; facepipe trains the
      logit with BCE).

    Args:
        pretrained: ``False`` or a local state-dict file of this module (the reference initialises from scratch).
        clip_length: frames per clip (32); the Transformer has ``clip_length // 2`` time steps.
        width: res2's inner width (64; stages 64/128/256 inner, 4x out), blocks: blocks of res2-res4 (3, 4, 6),
        depth, heads, dim_head, mlp_dim, dropout: the Transformer (1, 16, 64, 2048, 0.1). Smaller values make
        tiny test configurations.

    Inputs: ``{"image": (B, clip_length, 3, H, W)}``; output (B,) logits.
    """

    def __init__(self, pretrained: bool | str = False, clip_length: int = 32, width: int = 64,
                 blocks: tuple[int, int, int] = (3, 4, 6), depth: int = 1, heads: int = 16, dim_head: int = 64,
                 mlp_dim: int = 2048, dropout: float = 0.1) -> None:
        super().__init__()
        self.clip_length = int(clip_length)
        if self.clip_length < 2 or self.clip_length % 2:
            raise ConfigError(f"ftcn: clip_length must be even (a temporal pool halves it), got {clip_length}")
        self.stem = nn.Sequential(nn.Conv3d(3, width, (5, 1, 1), padding=(2, 0, 0), bias=False), _DownBN(width, True),
                                  nn.ReLU(inplace=True), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        stages, dim_in = [], width
        for i, (n, basis) in enumerate(zip(blocks, FTCN_TEMPORAL_KERNELS)):
            inner, out = width * 2 ** i, width * 4 * 2 ** i
            stages.append(nn.Sequential(*[_FTCNBottleneck(dim_in if j == 0 else out, inner, out, basis[j % len(basis)],
                                                          down=(i > 0 and j == 0)) for j in range(n)]))
            dim_in = out
        self.res2, self.res3, self.res4 = stages
        self.temporal_pool = nn.MaxPool3d((2, 1, 1), (2, 1, 1))
        self.transformer = _TimeTransformer(self.clip_length // 2, dim_in, depth, heads, dim_head, mlp_dim, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):  # c2_msra_fill
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        _load_state(self, pretrained, "ftcn")

    def forward(self, inputs: dict) -> torch.Tensor:
        x = _clip(inputs, "ftcn").transpose(1, 2)  # (B, 3, T, H, W)
        f = self.res4(self.res3(self.temporal_pool(self.res2(self.stem(x)))))  # (B, C, T/2, h, w)
        return self.transformer(f.mean(dim=(3, 4)).transpose(1, 2))  # space averaged: (B, T/2, C)

    def branches(self) -> dict[str, nn.Module]:
        return {"backbone": nn.ModuleList([self.stem, self.res2, self.res3, self.res4]),
                "transformer": self.transformer}


@register_model(ModelSpec("ftcn", input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, sample_kind="clip",
                          clip_length=32, family="video", size_options=(),
                          paper="Zheng et al., 'Exploring Temporal Coherence for More General Video Face Forgery "
                                "Detection', ICCV 2021",
                          faithful="the reference's fully temporal I3D ResNet-50 (to res4) and one-layer temporal "
                                   "Transformer (yinglinzheng/FTCN, setting/ftcn_tt.yaml); BCE on the logit (the "
                                   "reference releases no training code); clips cropped once per clip as its "
                                   "preprocessing (align.clip_transform clip)",
                          target_layer="res4"))
def ftcn(pretrained=False, **kw) -> FTCN:
    return FTCN(pretrained, **kw)
