"""ViT families of the researcher's notes (``shared/seeds/000``): a frozen ViT with a spatial adapter branch and a
frequency branch (``vit_freq_adapter``), and a ViT whose attention is replaced by local, multipole, shifted-window
or global-token attention (``vit_hybrid``).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from torch import nn

from facepipe.errors import ConfigError
from facepipe.models._builders import FrozenAwareModule, freeze, timm_backbone
from facepipe.models._registry import HALF, ModelSpec, model_entry, register_model
from facepipe.models.attention import GlobalTokenAttention, LocalAttention2D, MultipoleAttention2D, ShiftedWindowAttention

log = logging.getLogger(__name__)

FREQ_VIEWS = ("dct", "dct_bands", "block_dct", "fft", "phase", "srm")
VIEW_CHANNELS = {"dct": 3, "dct_bands": 9, "block_dct": 64, "fft": 3, "phase": 3, "srm": 3}
VIEW_STRIDE = {"block_dct": 8}  # block_dct is (64, H/8, W/8)


class Adapter(nn.Module):
    """Bottleneck adapter ``up(GELU(down(x))) * scale`` (Houlsby et al., ICML 2019; AdaptFormer's parallel form,
    Chen et al., NeurIPS 2022). (B, N, C) -> (B, N, C)."""

    def __init__(self, dim: int, bottleneck: int = 64, scale: float = 0.1) -> None:
        super().__init__()
        self.down, self.act, self.up = nn.Linear(dim, bottleneck), nn.GELU(), nn.Linear(bottleneck, dim)
        self.scale = scale
        nn.init.normal_(self.up.weight, std=1e-3)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x))) * self.scale


class AdaptedBlock(nn.Module):
    """A (frozen) timm ViT block with a parallel adapter beside its MLP and, optionally, frequency tokens added to
    its input: ``x = x + g * P(f)`` (patch tokens only), ``x = x + attn(norm1 x)``, ``x = x + mlp(h) + adapter(h)``
    with ``h = norm2 x``."""

    def __init__(self, block: nn.Module, dim: int, bottleneck: int, prefix_tokens: int, fuse: bool) -> None:
        super().__init__()
        self.block = block
        self.adapter = Adapter(dim, bottleneck)
        self.prefix = prefix_tokens
        self.fuse = nn.Linear(dim, dim) if fuse else None
        self.gate = nn.Parameter(torch.tensor(0.1)) if fuse else None
        self.freq_tokens: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        b = self.block
        if self.fuse is not None and self.freq_tokens is not None:
            add = self.gate * self.fuse(self.freq_tokens)
            x = torch.cat([x[:, :self.prefix], x[:, self.prefix:] + add], dim=1)
        x = x + b.drop_path1(b.ls1(b.attn(b.norm1(x), **kwargs)))
        h = b.norm2(x)
        return x + b.drop_path2(b.ls2(b.mlp(h))) + self.adapter(h)


class ViTFreqAdapter(FrozenAwareModule):
    """Frozen ViT (or CLIP ViT) + trainable bottleneck adapters in its blocks (spatial branch) + a frequency branch.

    The frequency branch patch-embeds a frequency view of the face (``dct_bands`` by default; any of
    :data:`FREQ_VIEWS`) with the ViT's patch size into tokens, LayerNorm-ed, that are added through a learned
    projection and gate to the patch tokens entering each of ``fuse_blocks``. ``freq_branch=False`` gives the
    spatial-only ablation the seed's diary regrets skipping. The class token goes to a linear head.

    Args:
        backbone: timm ViT name (``vit_base_patch16_224``; a CLIP tower such as
            ``vit_base_patch16_clip_224.openai`` works the same).
        pretrained: the backbone's weights (local caches or a file only).
        view: the frequency view. freq_branch: build it. fuse_blocks: block indices receiving frequency tokens
            (default: every third block, starting at 0). bottleneck: adapter width.
        **backbone_kwargs: ``timm.create_model`` overrides (tiny test configs).
    """

    def __init__(self, pretrained=False, backbone: str = "vit_base_patch16_224", view: str = "dct_bands",
                 freq_branch: bool = True, fuse_blocks=None, bottleneck: int = 64, drop_rate: float = 0.1,
                 **backbone_kwargs) -> None:
        super().__init__()
        if view not in FREQ_VIEWS:
            raise ConfigError(f"view must be one of {FREQ_VIEWS}, got {view!r}")
        self.vit = freeze(timm_backbone(backbone, pretrained, loud=bool(pretrained), **backbone_kwargs))
        dim, depth = self.vit.embed_dim, len(self.vit.blocks)
        self.view, self.freq_branch = view, bool(freq_branch)
        fuse = set(range(0, depth, 3) if fuse_blocks is None else fuse_blocks)
        if self.freq_branch and not fuse <= set(range(depth)):
            raise ConfigError(f"fuse_blocks {sorted(fuse)} outside the backbone's {depth} blocks")
        prefix = int(getattr(self.vit, "num_prefix_tokens", 1))
        self.vit.blocks = nn.Sequential(*[AdaptedBlock(b, dim, bottleneck, prefix, self.freq_branch and i in fuse)
                                          for i, b in enumerate(self.vit.blocks)])
        if self.freq_branch:
            patch = self.vit.patch_embed.patch_size[0]
            k = max(1, patch // VIEW_STRIDE.get(view, 1))
            self.freq_embed = nn.Sequential(nn.Conv2d(VIEW_CHANNELS[view], dim, k, k), )
            self.freq_norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(dim, 1))

    def _freq_tokens(self, view: torch.Tensor) -> torch.Tensor:
        return self.freq_norm(self.freq_embed(view).flatten(2).transpose(1, 2))

    def forward_features(self, inputs: dict) -> torch.Tensor:
        """(B, N, dim) tokens after the last block and the final norm."""
        tokens = self._freq_tokens(inputs[self.view]) if self.freq_branch else None
        for blk in self.vit.blocks:
            blk.freq_tokens = tokens
        try:
            return self.vit.forward_features(inputs["image"])
        finally:
            for blk in self.vit.blocks:
                blk.freq_tokens = None

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.forward_features(inputs)[:, 0]).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        out = {"adapters": nn.ModuleList(b.adapter for b in self.vit.blocks), "head": self.head}
        if self.freq_branch:
            out["frequency"] = nn.ModuleList([self.freq_embed, self.freq_norm,
                                              *[b.fuse for b in self.vit.blocks if b.fuse is not None]])
        return out


@register_model(ModelSpec("vit_freq_adapter", inputs=("image", "dct_bands"), input_size=224, mean=HALF, std=HALF,
                          family="vit", timm_name="vit_base_patch16_224",
                          paper="dual-branch spatial + frequency adapter on a frozen ViT (a researcher's design "
                                "notes); adapters "
                                "after AdaptFormer (Chen et al., NeurIPS 2022)",
                          faithful="the design as the notes describe it (no reference code): parallel bottleneck "
                                   "adapters "
                                   "in every block, frequency view patch-embedded and added (gated) to chosen blocks",
                          target_layer="vit.blocks.-1.block.norm1", explain="attn_grad"))
def vit_freq_adapter(pretrained=False, **kw) -> ViTFreqAdapter:
    model = ViTFreqAdapter(pretrained, **kw)
    spec = model_entry("vit_freq_adapter").spec
    model.spec = replace(spec, inputs=("image", model.view) if model.freq_branch else ("image",))
    return model


class GridAttention(nn.Module):
    """Run a 2-D attention module (local, multipole, shifted) or global-token attention in place of a ViT block's
    attention: (B, N, C) patch tokens (no class token) -> grid -> module -> (B, N, C)."""

    def __init__(self, module: nn.Module, kind: str, grid: tuple[int, int]) -> None:
        super().__init__()
        self.module, self.kind, self.grid = module, kind, grid

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor:
        b, n, c = x.shape
        h, w = self.grid
        g = x.view(b, h, w, c)
        if self.kind == "multipole":
            return self.module(g.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return self.module(g).reshape(b, n, c)


HYBRID_MIXERS = ("local", "multipole", "shifted", "global_tokens")


class ViTHybrid(FrozenAwareModule):
    """A ViT (no class token, average-pooled) whose chosen blocks use local, multipole, shifted-window or
    global-token attention instead of global attention (the seed's experiment: its diary found local/multipole
    below a plain 12-layer ViT). The replacement has the ViT's heads and head width.

    Args:
        backbone: timm ViT name. pretrained: its weights (replaced attentions start random).
        mixer: ``local`` | ``multipole`` | ``shifted`` | ``global_tokens``. blocks: indices to replace
            (default all). kernel_size (7), stride, sampling_rate (2): local/multipole; window (7), shift (3):
            shifted; n_tokens (4): global tokens.
    """

    def __init__(self, pretrained=False, backbone: str = "vit_base_patch16_224", mixer: str = "multipole",
                 blocks=None, kernel_size: int = 7, stride: int | None = None, sampling_rate: int = 2,
                 window: int = 7, shift: int = 3, n_tokens: int = 4, drop_rate: float = 0.1, **backbone_kwargs) -> None:
        super().__init__()
        if mixer not in HYBRID_MIXERS:
            raise ConfigError(f"mixer must be one of {HYBRID_MIXERS}, got {mixer!r}")
        self.vit = timm_backbone(backbone, pretrained, class_token=False, global_pool="avg", **backbone_kwargs)
        dim, heads = self.vit.embed_dim, self.vit.blocks[0].attn.num_heads
        grid = tuple(self.vit.patch_embed.grid_size)
        chosen = range(len(self.vit.blocks)) if blocks is None else blocks
        for i in chosen:
            if mixer == "local":
                mod = LocalAttention2D(kernel_size, stride, dim, heads, dim // heads)
            elif mixer == "multipole":
                mod = MultipoleAttention2D(grid[0], dim, kernel_size, stride, "avg_pool", "nearest", sampling_rate,
                                           heads, dim // heads)
            elif mixer == "shifted":
                mod = ShiftedWindowAttention(dim, heads, dim // heads, window, shift if i % 2 else 0)
            else:
                mod = GlobalTokenAttention(dim, heads, dim // heads, n_tokens)
            self.vit.blocks[i].attn = GridAttention(mod, mixer, grid)
        self.mixer = mixer
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(dim, 1))

    def forward_features(self, inputs: dict) -> torch.Tensor:
        return self.vit.forward_features(inputs["image"])

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.head(self.vit.forward_head(self.forward_features(inputs), pre_logits=True)).squeeze(1)


@register_model(ModelSpec("vit_hybrid", input_size=224, mean=HALF, std=HALF, family="hybrid",
                          timm_name="vit_base_patch16_224",
                          paper="ViT with local / multipole / shifted-window / global-token attention "
                                "(a researcher's design notes)",
                          faithful="timm ViT-B/16 blocks with the reference attention modules swapped in (Swin's "
                                   "alternating shift for 'shifted'); no class token, average-pooled",
                          target_layer="vit.blocks.-1.norm1"))
def vit_hybrid(pretrained=False, **kw) -> ViTHybrid:
    return ViTHybrid(pretrained, **kw)


__all__ = ["Adapter", "AdaptedBlock", "GridAttention", "HYBRID_MIXERS", "ViTFreqAdapter", "ViTHybrid"]
