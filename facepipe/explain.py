"""Where a detector looks: Grad-CAM family maps, gradient-weighted attention and attention rollout for every model
of the zoo, written as images, ``maps.npz``, ``summary.parquet`` and a ``gallery.html`` (``facepipe explain``).

Methods:

- ``gradcam`` / ``gradcam++``: the ``grad-cam`` library (pytorch-grad-cam; Selvaraju et al., ICCV 2017;
  Chattopadhay et al., WACV 2018) on the model's declared target layer (``ModelSpec.target_layer``). Token
  outputs (ViT / CLIP blocks) are reshaped to a grid with the prefix (class) tokens dropped; channels-last maps
  (Swin stages, window attention) are permuted to (B, C, H, W). The input always carries a gradient
  (``compute_input_gradient``): behind a frozen backbone the target layer's activations would otherwise have
  no gradient and the map would be blank.
- ``attn_grad``: gradient-weighted attention (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): per block ``cam = clamp(dy/dA * A, min=0)``
  fused over heads, accumulated as ``R = R + cam @ R`` from ``R = I``; the map is the class token's row over the
  patch tokens (or, for an average-pooled model, the mean row).
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  heads fused, ``0.5 A + 0.5 I`` renormalised per row, multiplied through the blocks. Gradient-free and
  class-agnostic: its real and fake maps are the same.

Attention methods read the softmax probabilities of *global* self-attention over all tokens (timm's ViT / CLIP
``Attention`` switched to its eager path, facepipe's :class:`~facepipe.models.attention.AttentionBlock`), kept in
the autograd graph. Windowed and local attention (Swin, local, multipole, global tokens) gives no token-to-token
matrix to roll out; such a model gets a :class:`~facepipe.errors.ConfigError` naming the methods that work.

The target is the model's one fake logit ``y`` for the fake map and ``-y`` for the real map.

Layer sets (``layers``): ``last`` (the declared target layer, or the last attention block), ``last4``, ``all``
(the layers of the same family: the target layer's name with its last index varied, e.g. every
``backbone.blocks.N.norm1``; every global attention block for the attention methods), or explicit module names.
The default (``auto``, :data:`DEFAULT_LAYERS`) is each method's published one: Grad-CAM / Grad-CAM++ on the last
(target) layer; ``attn_grad`` and ``rollout`` aggregate ALL attention blocks, as Chefer et al. (the relevance is
propagated from the first block to the last) and Abnar & Zuidema (rollout multiplies through every layer) do.
Head fusion (``mean`` | ``max`` | ``min``) applies to the attention methods, as in the seed's CLIP tool.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from facepipe._io import atomic_path
from facepipe.errors import ConfigError, InputError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "attn_grad", "rollout")
LAYER_SETS = ("last", "last4", "all")
#: each method's layer set for ``layers`` ``auto`` / ``None``: Grad-CAM's last (target) layer (Selvaraju et al.);
#: gradient-weighted attention (Chefer et al., ICCV 2021) and rollout (Abnar & Zuidema, ACL 2020) over all blocks
DEFAULT_LAYERS = {"gradcam": "last", "gradcam++": "last", "attn_grad": "all", "rollout": "all"}
HEAD_FUSIONS = ("mean", "max", "min")
#: classes whose attention is over windows or local neighbourhoods, never one token-to-token matrix
_WINDOWED = {"LocalAttention2D", "MultipoleAttention2D", "ShiftedWindowAttention", "GlobalTokenAttention",
             "GridAttention", "WindowAttention"}
#: face region of the "face mass" statistic: the quadrilateral eyes -> mouth corners, scaled about its centre
FACE_SCALE = 2.0


# ------------------------------------------------------------------------------------------------------------------
# the model as grad-cam sees it


class ImageModel(nn.Module):
    """A zoo model as a function of the normalised image only: (B, 3, H, W) float32 -> (B, 1) fake logits.

    Frequency views the model reads are recomputed from the image inside the forward pass (exactly as the
    loader computes them, from the de-normalised [0, 1] image), so gradients reach the image through them too.
    """

    def __init__(self, model: nn.Module, freq=None) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec
        self.freq = freq
        self.register_buffer("mean", torch.tensor(self.spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.spec.std).view(1, 3, 1, 1), persistent=False)

    def inputs(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        from facepipe.freq import compute_views_torch

        out = {"image": image}
        if self.spec.views:
            out.update(compute_views_torch(self.spec.views, image * self.std + self.mean, self.freq))
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        from facepipe.models import logits_of

        return logits_of(self.model(self.inputs(image))).float().unsqueeze(1)


class LogitTarget:
    """grad-cam target: ``sign * logit`` of one sample's (1,) output (``+1``: the fake map, ``-1``: the real map)."""

    def __init__(self, sign: float) -> None:
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output.reshape(-1)[0]


def _square_prefix(n_tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a square token grid preceded by class / register tokens."""
    side = math.isqrt(n_tokens)
    return n_tokens - side * side, side


def tokens_to_grid(t: torch.Tensor, prefix: int | None = None) -> torch.Tensor:
    """(B, L, C) tokens -> (B, C, h, w), dropping the ``prefix`` leading (class) tokens (default: whatever is left
    over a square grid).

    Raises:
        ConfigError: the remaining tokens do not form a square grid.
    """
    b, n, c = t.shape
    p, side = _square_prefix(n) if prefix is None else (prefix, math.isqrt(n - prefix))
    if side * side != n - p:
        raise ConfigError(f"{n - p} tokens after {p} prefix tokens are not a square grid")
    return t[:, p:].reshape(b, side, side, c).permute(0, 3, 1, 2)


def _vit_of(model: nn.Module):
    """The first timm VisionTransformer inside ``model`` (its prefix tokens and pooling), or ``None``."""
    for m in model.modules():
        if hasattr(m, "num_prefix_tokens") and hasattr(m, "global_pool") and hasattr(m, "blocks"):
            return m
    return None


def _family_names(model: nn.Module, name: str) -> list[str]:
    """Module names equal to ``name`` with its last index varied, in model order (``blocks.11.norm1`` ->
    ``blocks.0.norm1`` … ``blocks.11.norm1``); just ``[name]`` when it has no index."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    if not idx:
        return [name]
    i = idx[-1]
    pat = re.compile(r"\.".join([*map(re.escape, parts[:i]), r"\d+", *map(re.escape, parts[i + 1:])]) + "$")
    return [n for n, _ in model.named_modules() if pat.fullmatch(n)]


def _resolve_full_name(model: nn.Module, name: str) -> str:
    """The full dotted name of ``name`` (negative indices and unique endings resolved)."""
    from facepipe.models import get_layer

    target = get_layer(model, name)
    for n, m in model.named_modules():
        if m is target:
            return n
    raise ConfigError(f"layer '{name}' not found")


def target_layer_names(model: nn.Module, layers: str | Sequence[str] = "last") -> list[str]:
    """Full names of the Grad-CAM target layers for a layer set (``last`` | ``last4`` | ``all``) or explicit names.

    ``last`` is the spec's ``target_layer`` (for ``timm:`` models without one: the last stage of timm's
    ``feature_info``); ``last4`` / ``all`` vary its last index (see the module docstring).

    Raises:
        ConfigError: no declared target layer and none to infer, or an unknown layer name.
    """
    if isinstance(layers, str) and layers in LAYER_SETS:
        spec = model.spec
        name = spec.target_layer
        vit = _vit_of(model)
        if name is None and vit is not None:  # a layer before the last block's attention (CLS reads it)
            vit_name = next(n for n, m in model.named_modules() if m is vit)
            name = f"{vit_name}.blocks.-1.norm1" if vit_name else "blocks.-1.norm1"
        if name is None:
            info = getattr(getattr(model, "backbone", None), "feature_info", None)
            mods = [f.get("module") for f in (info or []) if f.get("module")]
            if not mods:
                raise ConfigError(f"model '{spec.name}' declares no Grad-CAM target layer: give --layers NAMES "
                                  "(see `facepipe features --list-layers`)")
            name = "backbone." + mods[-1]
        full = _resolve_full_name(model, name)
        fam = _family_names(model, full)
        return {"last": [full], "last4": fam[-4:], "all": fam}[layers]
    names = [layers] if isinstance(layers, str) else list(layers)
    return [_resolve_full_name(model, n) for n in names]


def _reshape_for(layouts: list[str]):
    """grad-cam's ``reshape_transform`` turning every target layer's output into (B, C, H, W) (``None`` for maps that
    already are); the prefix (class, register) tokens are what is left over a square grid."""
    if len(set(layouts)) > 1:
        raise ConfigError(f"target layers mix output layouts {sorted(set(layouts))}: choose layers of one kind")
    layout = layouts[0]

    def transform(t):
        t = t[0] if isinstance(t, (tuple, list)) else t
        return tokens_to_grid(t) if layout == "NLC" else t.permute(0, 3, 1, 2)

    return None if layout == "NCHW" else transform


def _layouts(wrapper: ImageModel, mods: list[nn.Module], x: torch.Tensor) -> list[str]:
    from facepipe.train.analysis import _first_tensor, feature_layout

    got: dict[int, str] = {}
    hooks = [m.register_forward_hook(lambda m_, i, o, k=k: got.__setitem__(k, feature_layout(m_, _first_tensor(o))))
             for k, m in enumerate(mods)]
    try:
        with torch.no_grad():
            wrapper(x[:1])
    finally:
        for h in hooks:
            h.remove()
    missing = [k for k in range(len(mods)) if k not in got]
    if missing:
        raise ConfigError("a target layer is not called in the forward pass")
    bad = [got[k] for k in range(len(mods)) if got[k] not in ("NCHW", "NHWC", "NLC")]
    if bad:
        raise ConfigError(f"target layer output of layout {bad[0]} has no spatial grid: choose a feature map")
    return [got[k] for k in range(len(mods))]


def gradcam_maps(wrapper: ImageModel, x: torch.Tensor, layer_names: list[str], plus_plus: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM (or Grad-CAM++) maps of a batch for the fake logit and its negation.

    Args:
        wrapper: the model as :class:`ImageModel`.
        x: (B, 3, H, W) float32 normalised images.
        layer_names: full module names of the target layers (their maps are averaged by grad-cam).

    Returns:
        ``(real, fake, logits)``: (B, H, W) float32 maps in [0, 1] (grad-cam's per-image scaling, resized to the
        input) and (B,) fake logits.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    from facepipe.models import get_layer

    model = wrapper.model
    mods = [get_layer(model, n) for n in layer_names]
    transform = _reshape_for(_layouts(wrapper, mods, x))
    cls = GradCAMPlusPlus if plus_plus else GradCAM
    b = x.shape[0]
    with cls(model=wrapper, target_layers=mods, reshape_transform=transform) as cam:
        cam.compute_input_gradient = True  # BaseCAM reads it; GradCAM's constructor does not pass it on
        fake = cam(input_tensor=x, targets=[LogitTarget(1.0)] * b)
        logits = cam.outputs.detach().float().reshape(-1).cpu().numpy()
        real = cam(input_tensor=x, targets=[LogitTarget(-1.0)] * b)
    return real.astype(np.float32), fake.astype(np.float32), logits


# ------------------------------------------------------------------------------------------------------------------
# attention


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


def resolve_layers(method: str, layers: str | Sequence[str] | None = None) -> str | list[str]:
    """``layers``, or for ``None`` / ``auto`` the method's published default (:data:`DEFAULT_LAYERS`: ``last`` for
    Grad-CAM / Grad-CAM++, ``all`` blocks for ``attn_grad`` and ``rollout``).

    Raises:
        ConfigError: unknown method.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if layers is None or (isinstance(layers, str) and layers == "auto"):
        return DEFAULT_LAYERS[method]
    return layers if isinstance(layers, str) else list(layers)


def explain_batch(wrapper: ImageModel, x: torch.Tensor, method: str | None = None, layers=None,
                  fusion: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real and fake maps of a batch with ``method`` (default: the model's ``ModelSpec.explain``) on ``layers``
    (default ``auto``: :func:`resolve_layers`, all blocks for the attention methods).

    Returns:
        ``(real, fake, logits)``: (B, H, W) float32 in [0, 1] at the input size, and (B,) fake logits.

    Raises:
        ConfigError: unknown method or head fusion, a method the model does not support, unknown layers.
    """
    method = method or wrapper.spec.explain
    layers = resolve_layers(method, layers)
    if fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")
    wrapper.eval()
    if method in ("gradcam", "gradcam++"):
        return gradcam_maps(wrapper, x, target_layer_names(wrapper.model, layers), plus_plus=method == "gradcam++")
    return attention_maps(wrapper, x, method, layers, fusion)


# ------------------------------------------------------------------------------------------------------------------
# statistics against the face and the manipulation mask


def face_region(landmarks, affine, crop_size: int, size: int) -> np.ndarray | None:
    """(size, size) bool mask of the face region in the model's input crop: the quadrilateral of the eyes and
    mouth corners of the 5-point landmarks (source frame -> crop by ``affine``, then scaled to ``size``), scaled
    by :data:`FACE_SCALE` about its centre (brows to chin). ``None`` without landmarks."""
    from skimage.draw import polygon

    if landmarks is None or affine is None or not crop_size:
        return None
    pts = np.asarray(landmarks, dtype=np.float64)
    m = np.asarray(affine, dtype=np.float64)
    crop = (pts @ m[:, :2].T + m[:, 2]) * (size / float(crop_size))
    quad = crop[[0, 1, 4, 3]]  # left eye, right eye, right mouth corner, left mouth corner
    quad = quad.mean(0) + FACE_SCALE * (quad - quad.mean(0))
    rr, cc = polygon(quad[:, 1], quad[:, 0], shape=(size, size))
    out = np.zeros((size, size), bool)
    out[rr, cc] = True
    return out


def face_mass(cam: np.ndarray, region: np.ndarray | None) -> float:
    """Share of the map's mass inside the face region (NaN without a region or with an all-zero map)."""
    total = float(cam.sum())
    if region is None or total <= 0:
        return float("nan")
    return float(cam[region].sum()) / total


def area_share(region: np.ndarray | None) -> float:
    """Share of the crop's area inside ``region`` (NaN without one): the chance level of :func:`face_mass` (a uniform
    map puts exactly this share of its mass in the face) and of :func:`pointing_hit` for a mask (a maximum at a
    uniformly random pixel lands in the mask with this probability)."""
    if region is None:
        return float("nan")
    return float(np.count_nonzero(region)) / float(region.size)


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> float:
    """Pointing game (Zhang et al., ECCV 2016, without tolerance): 1.0 when the map's maximum lies in the mask."""
    iy, ix = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return float(mask[iy, ix])


def topk_iou(cam: np.ndarray, mask: np.ndarray, top_percent: float) -> float:
    """IoU of the map's top ``top_percent`` % pixels with the mask."""
    k = max(1, int(round(cam.size * top_percent / 100.0)))
    thr = np.partition(cam.ravel(), cam.size - k)[cam.size - k]
    top = cam >= thr
    union = np.logical_or(top, mask).sum()
    return float(np.logical_and(top, mask).sum() / union) if union else float("nan")


# ------------------------------------------------------------------------------------------------------------------
# the run


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _local_shard_keys(urls: Iterable[str]) -> list[str]:
    """Sample keys of local tar shards, in order, from the member names only (nothing decoded)."""
    import tarfile

    keys: list[str] = []
    for u in urls:
        path = u[len("file://"):] if u.startswith("file://") else u
        with tarfile.open(path) as tf:
            for name in tf.getnames():
                base = name.rsplit("/", 1)[-1]
                k = base.split(".", 1)[0]
                if not keys or keys[-1] != k:
                    keys.append(k)
    return list(dict.fromkeys(keys))


def choose_keys(shards: str | Path, split: str, n: int, seed: int = 0) -> list[str]:
    """A seeded random sample of ``n`` keys of a split (sorted keys, then ``numpy.random.default_rng(seed)``):
    the same shards and seed give the same faces.

    Raises:
        InputError: the split has no samples, or its shards are not local files.
    """
    from facepipe.data.loader import resolve_shards

    ss = resolve_shards(shards, split)
    if any("://" in u and not u.startswith("file://") for u in ss.urls):
        raise InputError(f"{shards}: choosing a sample needs local shards; give --keys FILE instead")
    keys = sorted(_local_shard_keys(ss.urls))
    if not keys:
        raise InputError(f"{shards}: split '{split}' holds no samples")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(keys, size=min(n, len(keys)), replace=False).tolist())


def _overlay(rgb01: np.ndarray, cam: np.ndarray) -> np.ndarray:
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb01.astype(np.float32), cam.astype(np.float32), use_rgb=True, image_weight=0.5)


def _save_png(path: Path, rgb_u8: np.ndarray) -> None:
    import cv2

    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb_u8, cv2.COLOR_RGB2BGR))
        if not ok:
            raise InputError(f"{path}: PNG encoding failed")
        tmp.write_bytes(buf.tobytes())


def _comparison(path: Path, rgb01, real, fake, caption: str, rollout: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(13, 3.8))
    panels = [(rgb01, "crop"), (_overlay(rgb01, real), "real map (-logit)"), (_overlay(rgb01, fake), "fake map (logit)")]
    for a, (img, title) in zip(ax, panels):
        a.imshow(img)
        a.set_title(title, fontsize=9)
    diff = fake - real
    lim = float(np.abs(diff).max()) or 1.0
    im = ax[3].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax[3].set_title("fake - real" + (" (rollout: class-agnostic)" if rollout else ""), fontsize=9)
    fig.colorbar(im, ax=ax[3], fraction=0.046)
    for a in ax:
        a.axis("off")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


SUMMARY_SCHEMA = {
    "key": pl.String, "dataset": pl.String, "video_id": pl.String, "method": pl.String, "label": pl.Int64,
    "video_label": pl.Int64, "label_source": pl.String, "score": pl.Float64, "face_mass": pl.Float64,
    "face_mass_real": pl.Float64, "face_mass_chance": pl.Float64, "has_mask": pl.Boolean, "pointing_hit": pl.Float64,
    "pointing_chance": pl.Float64, "iou_top": pl.Float64, "real_png": pl.String, "fake_png": pl.String,
    "comparison_png": pl.String,
}
"""One row per face. ``face_mass_chance``: the face region's share of the crop area (:func:`area_share`), the face
mass of a uniform map; ``pointing_chance``: the mask's area share, the pointing game's hit rate for a maximum at a
uniformly random pixel (NaN without a mask)."""


def explain(checkpoint: str | Path, shards: str | Path, out_dir: str | Path, *, split: str = "test", n: int = 32,
            keys: Sequence[str] | None = None, seed: int = 0, method: str | None = None, layers=None,
            head_fusion: str = "mean", top_percent: float = 20.0, batch_size: int = 8, progress: bool = True) -> dict:
    """Explain a checkpoint's decisions on a sample of a split.

    Writes, in ``out_dir``: per sample ``<key>_real.png`` and ``<key>_fake.png`` (map over the crop),
    ``<key>_comparison.png`` (crop, both overlays, their difference; score, face label and method in the caption);
    ``maps.npz`` (``keys`` and float16 ``real`` / ``fake`` maps (N, H, W) in [0, 1] at the model's input size, the
    crop the model saw); ``summary.parquet`` (:data:`SUMMARY_SCHEMA`: score, labels, ``face_mass`` = share of the
    fake map inside the face region from the stored landmarks with its chance level ``face_mass_chance`` (the
    region's area share), and where the sample has a manipulation mask (fakes compared with their original) the
    pointing-game hit with its chance level ``pointing_chance`` (the mask's area share) and the IoU of the map's top
    ``top_percent`` % with the mask); ``summary.json`` (means, each chance level averaged over the same faces as its
    statistic: ``face_mass_chance``, ``face_mass_fake_faces_chance``, ``face_mass_real_faces_chance``,
    ``pointing_game_chance``) and ``gallery.html`` (every sample, sortable by score, label, face mass).
    Files are written under temporary names and renamed.

    Args:
        checkpoint: a ``facepipe train`` checkpoint.
        shards: shard folder / index; split: which split.
        n: samples, a seeded choice (``seed``) among the split's keys; ``keys`` instead lists them.
        method: ``gradcam`` | ``gradcam++`` | ``attn_grad`` | ``rollout`` (default: the model's).
        layers: ``auto`` (default: :func:`resolve_layers`, ``last`` for Grad-CAM, ``all`` blocks for ``attn_grad``
            / ``rollout``) | ``last`` | ``last4`` | ``all`` or module names (``summary.json`` records the set
            used). head_fusion: ``mean`` | ``max`` | ``min``.

    Returns:
        The summary means (``summary.json``).

    Raises:
        InputError: unreadable checkpoint or shards, an empty split, keys not in the split (named).
        ConfigError: a method the model does not support (names those that work), unknown layers.
    """
    from tqdm.auto import tqdm

    from facepipe.data.loader import make_loader
    from facepipe.train.engine import model_from_checkpoint

    lm = model_from_checkpoint(checkpoint)
    method = method or lm.spec.explain
    layers = resolve_layers(method, layers)
    wrapper = ImageModel(lm.model, lm.freq).to(lm.device)
    wanted = sorted(set(keys)) if keys else choose_keys(shards, split, n, seed)
    loader = make_loader(shards, split, batch_size, 0, shuffle=False, rank=0, world_size=1, image_size=lm.size,
                         views=(), freq=lm.freq, mean=lm.spec.mean, std=lm.spec.std, device=lm.device, masks=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mean = np.asarray(lm.spec.mean, np.float32)[:, None, None]
    std = np.asarray(lm.spec.std, np.float32)[:, None, None]
    rows: dict[str, list] = {k: [] for k in SUMMARY_SCHEMA}
    reals, fakes = [], []
    todo = set(wanted)
    bar = tqdm(total=len(wanted), desc=f"explain {lm.checkpoint['model_name']} ({method})", unit="face",
               disable=not progress)
    for b in loader:
        sel = [i for i, k in enumerate(b["key"]) if k in todo]
        if not sel:
            continue
        x = b["image"][sel]
        real, fake, logit = explain_batch(wrapper, x, method, layers, head_fusion)
        imgs = np.clip(x.detach().cpu().numpy() * std + mean, 0, 1).transpose(0, 2, 3, 1)
        masks = b["mask"][sel, 0].cpu().numpy() > 0.5
        size = x.shape[-1]
        for j, i in enumerate(sel):
            key = b["key"][i]
            todo.discard(key)
            score = float(1 / (1 + math.exp(-float(logit[j]))))
            label = int(b["label"][i])
            caption = (f"{key}   score {score:.3f}   face label {'fake' if label else 'real'}   "
                       f"method {b['method'][i]}   [{method}, {lm.checkpoint['model_name']}]")
            stem = _safe(key)
            _save_png(out / f"{stem}_real.png", _overlay(imgs[j], real[j]))
            _save_png(out / f"{stem}_fake.png", _overlay(imgs[j], fake[j]))
            _comparison(out / f"{stem}_comparison.png", imgs[j], real[j], fake[j], caption, method == "rollout")
            region = face_region(b["landmarks"][i], b["affine"][i], b["crop_size"][i], size)
            has_mask = bool(masks[j].any())
            for k, v in (("key", key), ("dataset", b["dataset"][i]), ("video_id", b["video_id"][i]),
                         ("method", b["method"][i]), ("label", label), ("video_label", int(b["video_label"][i])),
                         ("label_source", b["label_source"][i]), ("score", score),
                         ("face_mass", face_mass(fake[j], region)), ("face_mass_real", face_mass(real[j], region)),
                         ("face_mass_chance", area_share(region)), ("has_mask", has_mask),
                         ("pointing_hit", pointing_hit(fake[j], masks[j]) if has_mask else float("nan")),
                         ("pointing_chance", area_share(masks[j]) if has_mask else float("nan")),
                         ("iou_top", topk_iou(fake[j], masks[j], top_percent) if has_mask else float("nan")),
                         ("real_png", f"{stem}_real.png"), ("fake_png", f"{stem}_fake.png"),
                         ("comparison_png", f"{stem}_comparison.png")):
                rows[k].append(v)
            reals.append(real[j].astype(np.float16))
            fakes.append(fake[j].astype(np.float16))
            bar.update(1)
        if not todo:
            break
    bar.close()
    if todo:
        raise InputError(f"{shards}: split '{split}' has no samples {sorted(todo)[:5]}"
                         f"{' …' if len(todo) > 5 else ''} ({len(todo)} keys not found)")
    summary = pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
    with atomic_path(out / "summary.parquet") as tmp:
        summary.write_parquet(tmp)
    with atomic_path(out / "maps.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, keys=np.asarray(rows["key"]), real=np.stack(reals), fake=np.stack(fakes))

    masked = summary.filter(pl.col("has_mask"))
    means = {"model": lm.checkpoint["model_name"], "explain_method": method,
             "layers": layers if isinstance(layers, str) else list(layers), "head_fusion": head_fusion,
             "n": summary.height, "n_masked": masked.height, **summary_means(summary, top_percent)}
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(means, indent=1))
    write_gallery(out, summary, means)
    return means


def summary_means(summary: pl.DataFrame, top_percent: float = 20.0) -> dict[str, float | None]:
    """The statistics of ``summary.json`` from a :data:`SUMMARY_SCHEMA` frame: face mass (all faces, fake faces,
    real faces) and the pointing game and top-share IoU over the faces with a mask, each with its chance level
    averaged over the same faces as the statistic (faces where it is NaN, e.g. a blank map, left out of both).
    ``None`` where no face has a value."""

    def _mean(col: str, df: pl.DataFrame, of: str | None = None) -> float | None:
        if of is not None:  # the faces where the statistic ``of`` is defined
            df = df.filter(pl.col(of).is_not_null() & ~pl.col(of).is_nan())
        v = df[col].drop_nulls().drop_nans()
        return float(v.mean()) if len(v) else None

    masked = summary.filter(pl.col("has_mask"))
    fakes, reals = summary.filter(pl.col("label") == 1), summary.filter(pl.col("label") == 0)
    return {"face_mass": _mean("face_mass", summary),
            "face_mass_chance": _mean("face_mass_chance", summary, "face_mass"),
            "face_mass_fake_faces": _mean("face_mass", fakes),
            "face_mass_fake_faces_chance": _mean("face_mass_chance", fakes, "face_mass"),
            "face_mass_real_faces": _mean("face_mass", reals),
            "face_mass_real_faces_chance": _mean("face_mass_chance", reals, "face_mass"),
            "pointing_game": _mean("pointing_hit", masked),
            "pointing_game_chance": _mean("pointing_chance", masked, "pointing_hit"),
            f"iou_top{top_percent:g}": _mean("iou_top", masked)}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_gallery(out: Path, summary: pl.DataFrame, means: dict) -> Path:
    """``gallery.html``: one card per sample (comparison image, real and fake maps, caption), sortable by score,
    face label and face mass; a status line counts the images that loaded (``data-loaded`` / ``data-failed`` on
    ``<body>``)."""
    cards = []
    for r in summary.iter_rows(named=True):
        fm = "" if r["face_mass"] is None or math.isnan(r["face_mass"]) else f"{r['face_mass']:.3f}"
        chance = r.get("face_mass_chance")
        fm_chance = "" if chance is None or math.isnan(chance) else f" (chance {chance:.3f})"
        extra = ""
        if r["has_mask"]:
            extra = (f" · pointing {int(r['pointing_hit'])} (chance {r['pointing_chance']:.3f})"
                     f" · IoU {r['iou_top']:.3f}")
        cards.append(
            f'<div class="card" data-score="{r["score"]:.6f}" data-label="{r["label"]}" '
            f'data-facemass="{fm or -1}" data-key="{html.escape(r["key"])}">'
            f'<img src="{html.escape(r["comparison_png"])}" alt="comparison" class="cmp">'
            f'<div class="maps"><img src="{html.escape(r["real_png"])}" alt="real map">'
            f'<img src="{html.escape(r["fake_png"])}" alt="fake map"></div>'
            f'<p><b>{html.escape(r["key"])}</b><br>score {r["score"]:.3f} · face label '
            f'{"fake" if r["label"] else "real"} · {html.escape(str(r["method"]))} · {html.escape(r["dataset"])}'
            f' · face mass {fm or "n/a"}{fm_chance if fm else ""}{extra}</p></div>')
    title = f"facepipe explain: {means['model']} ({means['explain_method']})"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
.card {{ border: 1px solid #ccc; margin: 0.5em 0; padding: 0.5em; }}
.cmp {{ max-width: 100%; }}
.maps img {{ width: 160px; margin-right: 4px; }}
.missing {{ outline: 3px solid red; }}
button {{ margin-right: 0.5em; }}
</style></head>
<body data-loaded="0" data-failed="0">
<h1>{html.escape(title)}</h1>
<p>{means['n']} faces · face mass (fake map inside the face) {_fmt(means['face_mass'])} (chance: the face's area
share, {_fmt(means.get('face_mass_chance'))}) · pointing game {_fmt(means['pointing_game'])} (chance: the mask's area
share, {_fmt(means.get('pointing_game_chance'))}) on {means['n_masked']} faces with a mask</p>
<p>Sort: <button onclick="sortBy('score', -1)">score ↓</button><button onclick="sortBy('score', 1)">score ↑</button>
<button onclick="sortBy('label', -1)">fake first</button><button onclick="sortBy('facemass', -1)">face mass ↓</button>
<span id="status"></span></p>
<div id="cards">
{chr(10).join(cards)}
</div>
<script>
function sortBy(attr, dir) {{
  const box = document.getElementById('cards');
  const cards = Array.from(box.children);
  cards.sort((a, b) => dir * (parseFloat(a.dataset[attr]) - parseFloat(b.dataset[attr])));
  cards.forEach(c => box.appendChild(c));
}}
(function () {{
  const imgs = Array.from(document.images);
  let ok = 0, bad = 0;
  const show = () => {{
    document.body.dataset.loaded = ok; document.body.dataset.failed = bad;
    document.getElementById('status').textContent = ok + ' of ' + imgs.length + ' images loaded' +
      (bad ? ', ' + bad + ' missing' : '');
  }};
  imgs.forEach(img => {{
    const done = () => {{ if (img.naturalWidth > 0) ok++; else {{ bad++; img.classList.add('missing'); }} show(); }};
    if (img.complete) done(); else {{ img.addEventListener('load', done); img.addEventListener('error', done); }}
  }});
  show();
}})();
</script>
</body></html>
"""
    with atomic_path(out / "gallery.html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out / "gallery.html"


__all__ = ["DEFAULT_LAYERS", "HEAD_FUSIONS", "LAYER_SETS", "METHODS", "ImageModel", "LogitTarget", "area_share",
           "attention_maps", "attention_rollout", "attention_sites", "choose_keys", "explain", "explain_batch",
           "face_mass", "face_region", "gradcam_maps", "gradient_weighted_relevance", "pointing_hit",
           "relevance_to_grid", "resolve_layers", "summary_means", "target_layer_names", "tokens_to_grid", "topk_iou",
           "write_gallery"]
