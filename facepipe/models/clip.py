"""CLIP-based detectors: ``clip_linear`` (UnivFD) and ``rine`` (RINE), on a frozen OpenAI CLIP image tower.

The tower is timm's ``vit_large_patch14_clip_quickgelu_224`` (QuickGELU, as OpenAI's CLIP; timm's
``.openai`` weights convert the OpenAI checkpoint, its ``head`` is CLIP's visual projection). Weights come from
``pretrained=True`` (timm's Hugging Face repo already in the local cache; ``HF_HUB_OFFLINE`` is respected, nothing
is downloaded) or a file (an OpenAI CLIP / open_clip checkpoint or a timm state dict: timm's checkpoint filter
converts them). Without weights the tower is random and a loud warning says that results mean nothing. Tests
use tiny random configs through ``clip_kwargs``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facepipe.models._builders import FrozenAwareModule, freeze, timm_backbone
from facepipe.models._registry import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ModelSpec, register_model

CLIP_L14 = "vit_large_patch14_clip_quickgelu_224"
"""OpenAI CLIP ViT-L/14 image tower in timm (embedding 768, width 1024, 24 blocks)."""
CLIP_TAG = ".openai"


def clip_tower(pretrained, clip_model: str = CLIP_L14, embed_dim: int | None = 768, clip_kwargs: dict | None = None):
    """A frozen CLIP image tower: ``tower(x)`` is CLIP's ``encode_image(x)`` (the projected embedding) when
    ``embed_dim`` is given, else the ``ln_post`` class token.

    Args:
        pretrained: ``True`` (local cache of ``clip_model + ".openai"``), a weights file, or ``False``.
        clip_model: timm CLIP tower name. embed_dim: projection width (768 for ViT-L/14, 512 for B/16, B/32).
        clip_kwargs: ``timm.create_model`` overrides (tiny random configs in tests).
    """
    name = clip_model if "." in clip_model else clip_model + CLIP_TAG
    kwargs = dict(clip_kwargs or {})
    kwargs["num_classes"] = embed_dim or 0
    return freeze(timm_backbone(name, pretrained, loud=True, **kwargs))


class CLIPLinear(FrozenAwareModule):
    """UnivFD (Ojha, Li & Lee, "Towards Universal Fake Image Detectors that Generalize Across Generative Models",
    CVPR 2023): a frozen CLIP ViT-L/14 image embedding (768-d, not normalised) and one trainable linear layer
    (weights N(0, 0.02), as UniversalFakeDetect's ``init_gain``).

    Inputs: ``{"image": (B, 3, 224, 224)}`` normalised with CLIP's mean/std; output (B,) logits.
    """

    def __init__(self, pretrained=False, clip_model: str = CLIP_L14, embed_dim: int = 768,
                 clip_kwargs: dict | None = None) -> None:
        super().__init__()
        self.clip = clip_tower(pretrained, clip_model, embed_dim, clip_kwargs)
        self.fc = nn.Linear(embed_dim, 1)
        nn.init.normal_(self.fc.weight, 0.0, 0.02)
        nn.init.zeros_(self.fc.bias)

    def forward_features(self, inputs: dict) -> torch.Tensor:
        return self.clip.forward_features(inputs["image"])

    def forward(self, inputs: dict) -> torch.Tensor:
        return self.fc(self.clip(inputs["image"])).squeeze(1)

    def branches(self) -> dict[str, nn.Module]:
        return {"clip": self.clip, "head": self.fc}


@register_model(ModelSpec("clip_linear", input_size=224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, family="clip",
                          timm_name=CLIP_L14 + CLIP_TAG,
                          paper="UnivFD: Ojha, Li & Lee, CVPR 2023 (frozen CLIP ViT-L/14 + linear probe)",
                          faithful="as UniversalFakeDetect: encode_image (projected 768-d) -> Linear(768, 1), N(0, 0.02) "
                                   "init; timm's QuickGELU tower with the OpenAI weights",
                          target_layer="clip.blocks.-1.norm1", explain="attn_grad"))
def clip_linear(pretrained=False, **kw) -> CLIPLinear:
    return CLIPLinear(pretrained, **kw)


def _mlp(width_in: int, width: int, layers: int, p: float) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Dropout(p)]
    for i in range(layers):
        mods += [nn.Linear(width_in if i == 0 else width, width), nn.ReLU(), nn.Dropout(p)]
    return nn.Sequential(*mods)


#: mever-team/rine's training batch size (``scripts/experiments.py``) and SupCon ``factor`` (one-class model)
RINE_REFERENCE_BATCH = 128
RINE_REFERENCE_FACTOR = 0.1
#: the reference's ``sum BCE + 0.1 SupCon`` at batch 128 as a weight on facepipe's mean BCE: 0.1 / 128
RINE_SUPCON_WEIGHT = RINE_REFERENCE_FACTOR / RINE_REFERENCE_BATCH


class RINE(FrozenAwareModule):
    """RINE (Koutlis & Papadopoulos, "Leveraging Representations from Intermediate Encoder-blocks for Synthetic
    Image Detection", ECCV 2024; mever-team/rine): the class token of EVERY block of a frozen CLIP ViT.

    For block i the class token of ``norm2`` (the normalised input of its MLP, where RINE hooks ``ln_2``) is
    taken: g (B, n_blocks, width) -> ``proj1`` (dropout + q x [Linear, ReLU, dropout]) -> the Trainable Importance
    Estimator: ``alpha`` (1, n_blocks, proj_dim), softmax over blocks per feature, weighted sum -> ``proj2`` (same
    form) -> z, the feature of the supervised contrastive loss -> head (2 x [Linear, ReLU, dropout] + Linear -> 1).

    Loss: the trainer's BCE plus ``supcon`` (Khosla et al., NeurIPS 2020, temperature 0.07, from
    ``pytorch-metric-learning``) on the L2-normalised z, weighted by ``train.loss_weights.supcon``. The default
    weight is the reference's balance on facepipe's mean BCE: mever-team/rine ``src/utils.py``
    ``train_one_experiment`` trains on ``BCEWithLogitsLoss(reduction="sum")`` (line 176) ``+ factor * SupConLoss``
    (lines 198-202; its SupCon, lines 513-606, is a mean over anchors), with batch size 128
    (``scripts/experiments.py`` line 16) and ``factor`` 0.1 for the one-class model whose configuration
    (q = 4, 1024 wide) facepipe's defaults take (``results/dataset_size/ViT-L-14_1_0.1_4_1024_128_...``). Hence
    ``sum_B BCE + 0.1 SupCon = B (mean BCE + (0.1 / B) SupCon)``: at B = 128 the equivalent weight on the mean BCE
    is ``0.1 / 128 = 7.8125e-4`` (:data:`RINE_SUPCON_WEIGHT`); the overall factor B only rescales the gradient,
    which Adam (the reference's optimizer, no clipping) does not see up to its eps (``train.clip_norm`` acts on
    facepipe's mean-scale gradient). To reproduce the reference code at another batch size B
    set ``train.loss_weights.supcon`` to ``0.1 / B`` (``factor / B`` for its other factors 0.2, 0.4, 0.8).

    Args:
        clip_model: timm CLIP tower (ViT-L/14 by default). proj_dim: projection width (1024). nproj: q, layers per
            projection (4). dropout: 0.5 (``nn.Dropout()``). clip_kwargs: tiny test configs.
    """

    def __init__(self, pretrained=False, clip_model: str = CLIP_L14, proj_dim: int = 1024, nproj: int = 4,
                 dropout: float = 0.5, temperature: float = 0.07, clip_kwargs: dict | None = None) -> None:
        super().__init__()
        from pytorch_metric_learning.losses import SupConLoss

        self.clip = clip_tower(pretrained, clip_model, None, clip_kwargs)
        width, n = self.clip.embed_dim, len(self.clip.blocks)
        self._cls: list[torch.Tensor | None] = [None] * n
        for i, blk in enumerate(self.clip.blocks):
            blk.norm2.register_forward_hook(lambda m, inp, out, i=i: self._cls.__setitem__(i, out[:, 0]))
        self.proj1 = _mlp(width, proj_dim, nproj, dropout)
        self.alpha = nn.Parameter(torch.randn(1, n, proj_dim))
        self.proj2 = _mlp(proj_dim, proj_dim, nproj, dropout)
        self.head = nn.Sequential(nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(proj_dim, 1))
        self.supcon = SupConLoss(temperature=temperature)

    def block_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, n_blocks, width) class tokens of every block's ``norm2``."""
        self.clip.forward_features(image)
        tokens = torch.stack(self._cls, dim=1)
        self._cls = [None] * len(self._cls)
        return tokens

    def forward(self, inputs: dict):
        g = self.proj1(self.block_tokens(inputs["image"]).float())
        z = self.proj2((torch.softmax(self.alpha, dim=1) * g).sum(dim=1))
        logit = self.head(z).squeeze(1)
        out = {"logit": logit, "features": z, "losses": {}}
        if self.training and "label" in inputs:
            out["losses"]["supcon"] = self.supcon(F.normalize(z, dim=1), inputs["label"])
        return out

    def branches(self) -> dict[str, nn.Module]:
        return {"proj1": self.proj1, "proj2": self.proj2, "head": self.head}


@register_model(ModelSpec("rine", input_size=224, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, family="clip",
                          timm_name=CLIP_L14 + CLIP_TAG, uses_labels=True,
                          loss_weights={"supcon": RINE_SUPCON_WEIGHT},
                          paper="RINE: Koutlis & Papadopoulos, ECCV 2024 (intermediate CLIP blocks, TIE, SupCon)",
                          faithful="as mever-team/rine (ln_2 class tokens of all blocks, proj1/TIE/proj2/head, SupCon "
                                   "0.07); summed BCE + 0.1 SupCon at batch 128 as mean BCE + (0.1/128) SupCon",
                          target_layer="clip.blocks.-1.norm1", explain="attn_grad"))
def rine(pretrained=False, **kw) -> RINE:
    return RINE(pretrained, **kw)


__all__ = ["CLIPLinear", "CLIP_L14", "RINE", "RINE_SUPCON_WEIGHT", "clip_tower"]
