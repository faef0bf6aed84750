"""The forgery-detector zoo registry (after timm's ``_registry``/``_factory``): one decorated factory per model.

Every model maps a dict of inputs to one logit per sample::

    logits = model({"image": (B, 3, H, W) float, <view>: (B, C', H', W') float, ...})   # (B,) float

``ModelSpec`` says which inputs it consumes (``"image"`` and frequency view names), its input size
and normalisation; the loader is configured from it.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from facepipe.errors import ConfigError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a model consumes.

    Attributes:
        name: registry name.
        inputs: ``"image"`` and/or frequency view names (:data:`facepipe.freq.VIEWS`) it reads.
        input_size: square input side in pixels the architecture is meant for.
        mean, std: normalisation of the [0, 1] RGB image.
        paper: where the architecture comes from.
        timm_name: the timm backbone, when pretrained weights may apply.
    """

    name: str
    inputs: tuple[str, ...] = ("image",)
    input_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    paper: str = ""
    timm_name: str | None = None
    defaults: dict = field(default_factory=dict)
    size_options: tuple[str, ...] = ()
    """Factory keyword arguments that take the training input size in pixels (e.g. ``input_size`` for models
    with size-dependent filters); the train and evaluate stages pass the size under these names."""

    @property
    def views(self) -> tuple[str, ...]:
        """The frequency views among ``inputs``."""
        return tuple(i for i in self.inputs if i != "image")


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelSpec]] = {}


def register_model(spec: ModelSpec):
    """Decorator adding ``factory(**kwargs) -> nn.Module`` under ``spec.name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[spec.name] = (fn, spec)
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``.

    Raises:
        ConfigError: unknown name, with close matches.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        raise ConfigError(f"unknown model '{name}' (known: {', '.join(list_models())})"
                          + (f"; did you mean {', '.join(close)}?" if close else ""))
    return _REGISTRY[name][1]


def create_model(name: str, pretrained: bool | str = False, **overrides) -> nn.Module:
    """Build model ``name``; the module gets a ``spec`` attribute.

    Args:
        name: a registered name (:func:`list_models`).
        pretrained: ``False`` (random init), ``True`` (timm weights from the local timm / Hugging Face
            cache only; never downloads — random init with a warning when absent), or a path to a
            checkpoint file for the backbone.
        **overrides: factory keyword arguments (e.g. ``freeze_backbone=True``, ``levels=3``).

    Raises:
        ConfigError: unknown name or bad overrides.
    """
    spec = get_spec(name)
    fn = _REGISTRY[name][0]
    try:
        model = fn(pretrained=pretrained, **{**spec.defaults, **overrides})
    except TypeError as e:
        raise ConfigError(f"model '{name}': bad options {overrides}: {e}") from None
    model.spec = spec
    return model


def local_timm_weights(timm_name: str) -> Path | None:
    """The timm weights of ``timm_name`` if already on this machine, else ``None`` (never downloads).

    Looks in the Hugging Face hub cache (``hf_hub_id``: ``model.safetensors`` or ``pytorch_model.bin``)
    and in torch hub's checkpoint folder (the file named by the legacy ``url``).
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for fname in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if fname:
                hit = try_to_load_from_cache(repo, fname)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    if cfg.url:
        hit = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if hit.is_file():
            return hit
    return None


def timm_backbone(timm_name: str, pretrained: bool | str, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0``); weights from a given file or the local caches only.

    Args:
        timm_name: timm model name.
        pretrained: ``False``; ``True`` to use weights already in the Hugging Face / torch hub cache
            (random initialisation with a warning when absent: nothing is downloaded); or a file path.
        **kwargs: passed to ``timm.create_model`` (e.g. ``in_chans=9``: timm adapts the first conv).

    Raises:
        ConfigError: a given weights file does not exist.
    """
    import timm

    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(f"{path}: pretrained weights file not found")
    elif pretrained:
        path = local_timm_weights(timm_name)
        if path is None:
            log.warning("no local pretrained weights for %s in the Hugging Face or torch hub cache; random "
                        "initialisation (fetch them once with timm.create_model('%s', pretrained=True))",
                        timm_name, timm_name)
    else:
        path = None
    if path is None:
        return timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    return timm.create_model(timm_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(path)},
                             **kwargs)
