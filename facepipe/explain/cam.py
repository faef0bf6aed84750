"""Grad-CAM and Grad-CAM++ maps through the ``grad-cam`` library (pytorch-grad-cam; Selvaraju et al., ICCV 2017;
Chattopadhay et al., WACV 2018) on a model's declared target layer (``ModelSpec.target_layer``), and the model as
grad-cam sees it (:class:`ImageModel`: the normalised image in, the fake logit out).

Token outputs (ViT / CLIP blocks) are reshaped to a grid with the prefix (class) tokens dropped; channels-last maps
(Swin stages, window attention) are permuted to (B, C, H, W). The input always carries a gradient
(``compute_input_gradient``): behind a frozen backbone the target layer's activations would otherwise have no
gradient and the map would be blank. Layer sets: see :mod:`facepipe.explain`.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import torch
from torch import nn

from facepipe.errors import ConfigError

LAYER_SETS = ("last", "last4", "all")


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
# clips (video models): Grad-CAM over the frames of a clip


class ClipModel(nn.Module):
    """A clip model (``ModelSpec.sample_kind == "clip"``) as grad-cam's 3D layout sees it: (B, 3, T, H, W) normalised
    clips -> (B, 1) fake logits (the model itself reads (B, T, 3, H, W))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec

    def forward(self, x5: torch.Tensor) -> torch.Tensor:
        from facepipe.models import logits_of

        return logits_of(self.model({"image": x5.transpose(1, 2)})).float().unsqueeze(1)


class _Thumbnail(nn.Module):
    """TALL as a 2D image model: its thumbnail in, the fake logit out (the Swin's maps live on the thumbnail)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.spec = model.spec

    def forward(self, thumb: torch.Tensor) -> torch.Tensor:
        return self.model.forward_thumbnail(thumb).float().unsqueeze(1)


def _untile(maps: np.ndarray, rows: int, cols: int, hw: tuple[int, int]) -> np.ndarray:
    """(B, S, S) thumbnail maps -> (B, rows * cols, H, W): each frame's tile, row by row, resized to the frame."""
    import cv2

    b, s, _ = maps.shape
    th, tw = s // rows, s // cols
    out = np.empty((b, rows * cols, *hw), np.float32)
    for i in range(b):
        for r in range(rows):
            for c in range(cols):
                tile = maps[i, r * th:(r + 1) * th, c * tw:(c + 1) * tw]
                out[i, r * cols + c] = cv2.resize(tile, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    return out


def _clip_transform(model: nn.Module, mods: list[nn.Module], x5: torch.Tensor):
    """grad-cam's ``reshape_transform`` giving every target layer's output as (B, C, T', h, w): 3D maps as they are;
    per-frame 2D maps of a backbone run on B*T frames (``clip_pool``) regrouped by clip (channels-last permuted)."""
    from facepipe.train.analysis import _first_tensor, feature_layout

    t = x5.shape[2]
    got: dict[int, tuple] = {}
    hooks = [m.register_forward_hook(lambda m_, i, o, k=k: got.__setitem__(
        k, (_first_tensor(o).dim(), _first_tensor(o).shape[0], feature_layout(m_, _first_tensor(o)))))
        for k, m in enumerate(mods)]
    try:
        with torch.no_grad():
            ClipModel(model)(x5[:1])
    finally:
        for h in hooks:
            h.remove()
    if len(got) != len(mods):
        raise ConfigError("a target layer is not called in the forward pass")
    kinds = {v for v in got.values()}
    if len(kinds) > 1:
        raise ConfigError(f"target layers mix output layouts {sorted(kinds)}: choose layers of one kind")
    ndim, batch, layout = kinds.pop()
    if ndim == 5:
        return None
    if ndim == 4 and batch == t and layout in ("NCHW", "NHWC"):
        def transform(a):
            a = a[0] if isinstance(a, (tuple, list)) else a
            a = a.permute(0, 3, 1, 2) if layout == "NHWC" else a
            return a.unflatten(0, (-1, t)).transpose(1, 2)  # (B*T, C, h, w) -> (B, C, T, h, w)

        return transform
    raise ConfigError(f"target layer output ({ndim}-d, layout {layout}) is not a per-frame or 3D feature map: "
                      "choose another layer")


def clip_gradcam_maps(model: nn.Module, x: torch.Tensor, layer_names: list[str], plus_plus: bool = False
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM (or Grad-CAM++) over the frames of each clip, for the fake logit and its negation.

    3D feature maps (``r3d_18``, ``ftcn``) and per-frame maps regrouped by clip (``clip_pool``) go through
    grad-cam's 3D path (channel weights = gradients averaged over time and space, the map resized to T x H x W,
    scaled per clip); TALL's Swin maps live on its thumbnail and are cut back into its frames.

    Args:
        model: a clip model of the zoo.
        x: (B, T, 3, H, W) float32 normalised clips.
        layer_names: full module names of the target layers.

    Returns:
        ``(real, fake, logits)``: (B, T, H, W) float32 maps in [0, 1] and (B,) fake logits.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    from facepipe.models import get_layer

    mods = [get_layer(model, n) for n in layer_names]
    if hasattr(model, "thumbnail"):  # TALL
        with torch.no_grad():
            thumbs = model.thumbnail(x)
        real, fake, logits = gradcam_maps(_Thumbnail(model), thumbs, layer_names, plus_plus)
        hw = tuple(x.shape[-2:])
        return _untile(real, model.rows, model.cols, hw), _untile(fake, model.rows, model.cols, hw), logits
    x5 = x.transpose(1, 2).contiguous()
    wrapper = ClipModel(model)
    cls = GradCAMPlusPlus if plus_plus else GradCAM
    b = x.shape[0]
    with cls(model=wrapper, target_layers=mods, reshape_transform=_clip_transform(model, mods, x5)) as cam:
        cam.compute_input_gradient = True
        fake = cam(input_tensor=x5, targets=[LogitTarget(1.0)] * b)
        logits = cam.outputs.detach().float().reshape(-1).cpu().numpy()
        real = cam(input_tensor=x5, targets=[LogitTarget(-1.0)] * b)
    return np.clip(real, 0, 1).astype(np.float32), np.clip(fake, 0, 1).astype(np.float32), logits
