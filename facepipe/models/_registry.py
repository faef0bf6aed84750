"""The model zoo registry (after timm's ``_registry``): the name -> (factory, :class:`ModelSpec`) table filled by
``@register_model``, ``list_models()`` and the lookup of registered names, and the contract every forgery detector
follows. Building (``create_model``, names outside the table) is :mod:`facepipe.models._factory`; the helpers
factories share are :mod:`facepipe.models._builders`.

**Contract.** A model maps the batch dict to one logit per face::

    out = model({"image": (B, 3, H, W) float, <view>: (B, C', H', W') float, ["label": (B,) int64]})
    out: (B,) logits, or {"logit": (B,), "losses": {name: scalar tensor}, "features": ...}

A *clip* model (``ModelSpec.sample_kind == "clip"``: the video detectors of :mod:`facepipe.models.video`) reads
``{"image": (B, T, 3, H, W), <view>: (B, T, C', H', W')}`` from a clip set (``extract.sampling.mode: clips``) and
returns one logit per clip; ``facepipe train`` refuses to feed it frame shards, and a frame model clip shards.

``losses`` are auxiliary training losses (reconstruction, contrastive, metric ...), added to the BCE on the
logit with the weights ``train.loss_weights`` gives (default: the spec's ``loss_weights``, else 1) and each
logged on its own. A model whose losses need the labels says so (``ModelSpec.uses_labels``); it gets
``"label"`` in training only. Optional methods: ``param_groups(lr) -> list[dict]`` (per-group learning rates)
and ``branches() -> dict[str, nn.Module]`` (named sub-networks, for diagnostics). Every model exposes its
modules by name (``named_modules``); ``ModelSpec.target_layer`` names the feature map explanations use.

**Names** resolve from the registry (``list_models()``), from ``timm:<name>`` (any timm model with a fresh
one-logit head: options ``pool: avg|max|avgmax|token``, ``freeze_backbone``, ``drop_rate``, ``plugins``,
``features_only`` + ``out_indices``), and from ``package.module:factory`` (a user's factory returning an
``nn.Module``); ``import_model_file(path)`` executes a user's file whose ``@register_model`` factories then
resolve by name (``facepipe train --import FILE``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from torch import nn

from facepipe._registries import check_unique
from facepipe.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    """What a model consumes and how faithful it is.

    Attributes:
        name: registry name.
        inputs: ``"image"`` and/or frequency view names (:data:`facepipe.freq.VIEWS`) it reads.
        input_size: square input side in pixels the architecture is meant for.
        mean, std: normalisation of the [0, 1] RGB image.
        paper: where the architecture comes from.
        faithful: what follows the paper or reference code, and what differs.
        family: cnn | vit | clip | hybrid | frequency | reconstruction | attention (for tables and defaults).
        timm_name: the timm backbone, when pretrained weights may apply.
        defaults: factory keyword defaults.
        size_options: factory keywords that take the training input size (filters sized to the input).
        uses_labels: the model's auxiliary losses need ``batch["label"]`` in training.
        loss_weights: default weights of its auxiliary losses (``train.loss_weights`` overrides).
        target_layer: module name of the feature map the Grad-CAM family uses by default.
        explain: default explanation method (``gradcam`` | ``attn_grad``).
        sample_kind: ``frame`` (one face crop per sample) or ``clip`` (a clip of consecutive crops per sample).
        clip_length: the frames per clip the architecture is built for (clip models; ``None`` = any length).
    """

    name: str
    inputs: tuple[str, ...] = ("image",)
    input_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    paper: str = ""
    faithful: str = ""
    family: str = "cnn"
    timm_name: str | None = None
    defaults: dict = field(default_factory=dict)
    size_options: tuple[str, ...] = ()
    uses_labels: bool = False
    loss_weights: dict = field(default_factory=dict)
    target_layer: str | None = None
    explain: str = "gradcam"
    sample_kind: str = "frame"
    clip_length: int | None = None

    @property
    def views(self) -> tuple[str, ...]:
        """The frequency views among ``inputs``."""
        return tuple(i for i in self.inputs if i != "image")


class ModelEntry(NamedTuple):
    """A registered model: its factory ``factory(pretrained=False, **options) -> nn.Module`` and its spec."""

    factory: Callable[..., nn.Module]
    spec: ModelSpec


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(spec: ModelSpec):
    """Decorator adding ``factory(pretrained=False, **kwargs) -> nn.Module`` under ``spec.name``.

    A factory that takes ``**kwargs`` and hands them to a class says which by its return annotation
    (``-> BackboneClassifier``): ``create_model`` checks options against that class's parameters too.

    Raises:
        ConfigError: another factory is already registered under ``spec.name`` (both named). The same factory
            registered again (its module imported again, e.g. the same ``--import`` file) replaces the entry.
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        old = _REGISTRY.get(spec.name)
        check_unique("model", spec.name, fn, old.factory if old else None)
        _REGISTRY[spec.name] = ModelEntry(fn, spec)
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted (``timm:<name>`` and ``module:factory`` names resolve too)."""
    return sorted(_REGISTRY)


def is_model(name: str) -> bool:
    """Whether ``name`` is registered (``timm:<name>`` and ``module:factory`` names are not)."""
    return name in _REGISTRY


def unknown_model(name: str) -> ConfigError:
    """The error for a name that resolves nowhere, with close registered names."""
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    return ConfigError(f"unknown model '{name}' (known: {', '.join(list_models())}; or timm:<name>, "
                       "package.module:factory, --import FILE)"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))


def model_entry(name: str) -> ModelEntry:
    """The registered factory and spec of ``name``.

    Raises:
        ConfigError: ``name`` is not registered (close matches listed).
    """
    if name not in _REGISTRY:
        raise unknown_model(name)
    return _REGISTRY[name]


__all__ = ["HALF", "IMAGENET_MEAN", "IMAGENET_STD", "ModelEntry", "ModelSpec", "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD",
           "is_model", "list_models", "model_entry", "register_model", "unknown_model"]
