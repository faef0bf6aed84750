"""Global-context plug-ins inserted after named stages of CNN backbones.

``plugins: [{type: nonlocal, after: layer3}, {type: se, after: layer4}]`` (the seed's essay on giving a model
global context, ``shared/seeds/004``):

- ``se``: squeeze-and-excitation channel gating (Hu et al., CVPR 2018), timm's ``SEModule``;
- ``cbam``: channel then spatial attention (Woo et al., ECCV 2018), timm's ``CbamModule``;
- ``nonlocal``: a non-local block, every position attending to every other (Wang et al., CVPR 2018),
  timm's ``NonLocalAttn`` (residual, zero-initialised output BN: identity at start);
- ``ppm``: pyramid pooling (Zhao et al., PSPNet, CVPR 2017): average pooling to 1, 2, 3 and 6 bins, 1x1 conv
  to C/4 each, upsampled, concatenated with the input and fused back to C by a 1x1 conv.

The plug-in follows the named module (``nn.Sequential(stage, plugin)``); channels are found with one dry run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.errors import ConfigError

PLUGINS = ("se", "cbam", "nonlocal", "ppm")


class PyramidPooling(nn.Module):
    """PSPNet's pyramid pooling module. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        red = max(1, channels // len(bins))
        self.bins = bins
        self.stages = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, red, 1, bias=False), nn.BatchNorm2d(red),
                                                  nn.ReLU(inplace=True)) for _ in bins)
        self.fuse = nn.Sequential(nn.Conv2d(channels + red * len(bins), channels, 1, bias=False),
                                  nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pooled = [F.interpolate(s(F.adaptive_avg_pool2d(x, b)), size=(h, w), mode="bilinear", align_corners=False)
                  for b, s in zip(self.bins, self.stages)]
        return self.fuse(torch.cat([x, *pooled], dim=1))


def make_plugin(kind: str, channels: int) -> nn.Module:
    """One plug-in for a (B, ``channels``, H, W) feature map.

    Raises:
        ConfigError: unknown kind.
    """
    from timm.layers import NonLocalAttn, SEModule
    from timm.layers.cbam import CbamModule

    if kind == "se":
        return SEModule(channels)
    if kind == "cbam":
        return CbamModule(channels)
    if kind == "nonlocal":
        return NonLocalAttn(channels)
    if kind == "ppm":
        return PyramidPooling(channels)
    raise ConfigError(f"unknown plug-in '{kind}' (known: {', '.join(PLUGINS)})")


def insert_plugins(backbone: nn.Module, plugins, probe_size: int = 64) -> nn.Module:
    """Insert ``plugins`` (dicts ``{type, after}``) after the named modules of ``backbone`` (in place).

    Raises:
        ConfigError: a plug-in names a module the backbone lacks, an unknown type, or a stage whose output is
            not a (B, C, H, W) map.
    """
    plugins = list(plugins or ())
    if not plugins:
        return backbone
    names = dict(backbone.named_modules())
    shapes: dict[str, tuple] = {}
    hooks = []
    for p in plugins:
        if not isinstance(p, dict) or "type" not in p or "after" not in p:
            raise ConfigError(f"plug-in {p!r}: give {{type: se|cbam|nonlocal|ppm, after: <module name>}}")
        if p["after"] not in names:
            stages = [n for n in names if n and n.count(".") == 0]
            raise ConfigError(f"plug-in after '{p['after']}': the backbone has no such module (top-level: {stages})")
        hooks.append(names[p["after"]].register_forward_hook(
            lambda m, i, o, n=p["after"]: shapes.__setitem__(n, tuple(o.shape))))
    was = backbone.training
    backbone.eval()
    with torch.no_grad():
        backbone(torch.zeros(1, 3, probe_size, probe_size))
    backbone.train(was)
    for h in hooks:
        h.remove()
    for p in plugins:
        shape = shapes.get(p["after"])
        if shape is None or len(shape) != 4:
            raise ConfigError(f"plug-in after '{p['after']}': its output is {shape}, not a (B, C, H, W) map")
        parent_name, _, child = p["after"].rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        setattr(parent, child, nn.Sequential(getattr(parent, child), make_plugin(p["type"], shape[1])))
    return backbone


__all__ = ["PLUGINS", "PyramidPooling", "insert_plugins", "make_plugin"]
