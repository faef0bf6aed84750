"""The model zoo registry (after timm's ``_registry``/``_factory``): one decorated factory per model, and the
contract every forgery detector follows.

**Contract.** A model maps the batch dict to one logit per face::

    out = model({"image": (B, 3, H, W) float, <view>: (B, C', H', W') float, ["label": (B,) int64]})
    out: (B,) logits, or {"logit": (B,), "losses": {name: scalar tensor}, "features": ...}

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
import importlib
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from facepipe.errors import ConfigError

log = logging.getLogger(__name__)

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

    @property
    def views(self) -> tuple[str, ...]:
        """The frequency views among ``inputs``."""
        return tuple(i for i in self.inputs if i != "image")


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelSpec]] = {}


def register_model(spec: ModelSpec):
    """Decorator adding ``factory(pretrained=False, **kwargs) -> nn.Module`` under ``spec.name``."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[spec.name] = (fn, spec)
        return fn

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted (``timm:<name>`` and ``module:factory`` names resolve too)."""
    return sorted(_REGISTRY)


def _unknown(name: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    return ConfigError(f"unknown model '{name}' (known: {', '.join(list_models())}; or timm:<name>, "
                       "package.module:factory, --import FILE)"
                       + (f"; did you mean {', '.join(close)}?" if close else ""))


def _external(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    """``timm:<name>`` or ``package.module:factory``."""
    if name.startswith("timm:"):
        import timm

        tname = name[5:]
        if not timm.is_model(tname):
            close = difflib.get_close_matches(tname, timm.list_models(), n=3)
            raise ConfigError(f"timm has no model '{tname}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
        from facepipe.models.baselines import timm_classifier

        cfg = timm.models.get_pretrained_cfg(tname)
        mean = tuple(getattr(cfg, "mean", IMAGENET_MEAN)) if cfg else IMAGENET_MEAN
        std = tuple(getattr(cfg, "std", IMAGENET_STD)) if cfg else IMAGENET_STD
        size = int(cfg.input_size[-1]) if cfg and getattr(cfg, "input_size", None) else 224
        spec = ModelSpec(name, input_size=size, mean=mean, std=std, paper=f"timm {tname}", timm_name=tname,
                         faithful="the timm model with a one-logit head", family="timm")
        return (lambda pretrained=False, **kw: timm_classifier(tname, pretrained, **kw)), spec
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model '{name}': cannot import {attr} from {module}: {e}") from None
    spec = getattr(fn, "spec", None) or ModelSpec(name, paper=f"user factory {name}", family="user")
    return fn, replace(spec, name=name)


def _resolve(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm:") or (":" in name and "." in name.split(":")[0]) or (
            ":" in name and name.split(":")[0].isidentifier()):
        return _external(name)
    raise _unknown(name)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (registry, ``timm:<name>`` or ``module:factory``).

    Raises:
        ConfigError: unknown name, with close matches.
    """
    return _resolve(name)[1]


def create_model(name: str, pretrained: bool | str = False, **overrides) -> nn.Module:
    """Build model ``name``; the module gets a ``spec`` attribute.

    Args:
        name: a registered name, ``timm:<name>``, or ``package.module:factory``.
        pretrained: ``False`` (random init), ``True`` (weights from the local Hugging Face / torch hub cache
            only; never downloads — random init with a warning when absent), or a path to a weights file.
        **overrides: factory keyword arguments (e.g. ``freeze_backbone=True``, ``levels=3``).

    Raises:
        ConfigError: unknown name or bad overrides.
    """
    fn, spec = _resolve(name)
    try:
        model = fn(pretrained=pretrained, **{**spec.defaults, **overrides})
    except TypeError as e:
        raise ConfigError(f"model '{name}': bad options {overrides}: {e}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{name}': the factory returned {type(model).__name__}, not a torch.nn.Module")
    model.spec = getattr(model, "spec", None) if isinstance(getattr(model, "spec", None), ModelSpec) else spec
    if model.spec.name != name:
        model.spec = replace(model.spec, name=name)
    return model


def import_model_file(path: str | os.PathLike) -> None:
    """Execute a user's Python file so its ``@register_model`` factories join the registry.

    Raises:
        ConfigError: the file is missing or raises while importing (named).
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise ConfigError(f"{p}: model file not found")
    mod_name = f"facepipe_user_{abs(hash(str(p)))}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  any error in the user's file: named, one line
        raise ConfigError(f"{p}: importing the model file failed: {type(e).__name__}: {e}") from None


def local_timm_weights(timm_name: str) -> Path | None:
    """The timm weights of ``timm_name`` if already on this machine, else ``None`` (never downloads).

    Looks in the Hugging Face hub cache (``hf_hub_id``: ``model.safetensors``, ``open_clip_pytorch_model.bin``
    or ``pytorch_model.bin``) and in torch hub's checkpoint folder (the file named by the legacy ``url``).
    """
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        for fname in (cfg.hf_hub_filename, "model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            if fname:
                hit = try_to_load_from_cache(repo, fname)
                if isinstance(hit, str) and Path(hit).is_file():
                    return Path(hit)
    if cfg.url:
        hit = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if hit.is_file():
            return hit
    return None


def weights_path(timm_name: str, pretrained: bool | str, loud: bool = False) -> Path | None:
    """Where ``pretrained`` says the weights of a timm model are: a given file, the local caches, or nowhere.

    Raises:
        ConfigError: a given file does not exist.
    """
    if isinstance(pretrained, (str, os.PathLike)) and not isinstance(pretrained, bool):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: pretrained weights file not found")
        return path
    if not pretrained:
        return None
    path = local_timm_weights(timm_name)
    if path is None:
        msg = (f"no local pretrained weights for {timm_name} in the Hugging Face or torch hub cache; random "
               f"initialisation (fetch them once with timm.create_model('{timm_name}', pretrained=True), or give "
               "a weights file)")
        if loud:
            msg = "RANDOM WEIGHTS — " + msg + ": results will mean nothing"
        log.warning(msg)
    return path


def timm_backbone(timm_name: str, pretrained: bool | str, loud: bool = False, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0`` unless given); weights from a given file or the local
    caches only (timm's checkpoint filters convert e.g. OpenAI CLIP / open_clip state dicts).

    Raises:
        ConfigError: a given weights file does not exist.
    """
    import timm

    kwargs.setdefault("num_classes", 0)
    path = weights_path(timm_name, pretrained, loud)
    if path is None:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    overlay = {"file": str(path)}
    if kwargs.get("num_classes"):  # a head that is part of the weights (CLIP's projection): keep it
        overlay["num_classes"] = kwargs["num_classes"]
    return timm.create_model(timm_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)


def freeze(module: nn.Module) -> nn.Module:
    """No gradients for ``module``'s parameters, and its batch-norm layers kept in eval mode (running statistics
    fixed: a real linear probe, not a backbone whose BN statistics drift with the new data)."""
    for p in module.parameters():
        p.requires_grad_(False)
    module._facepipe_frozen = True
    return module


def keep_frozen_in_eval(model: nn.Module) -> None:
    """Call at the end of ``train()``: put modules marked by :func:`freeze` back in eval mode."""
    for m in model.modules():
        if getattr(m, "_facepipe_frozen", False):
            m.eval()


class FrozenAwareModule(nn.Module):
    """Base for zoo models: ``train()`` keeps frozen sub-networks (see :func:`freeze`) in eval mode."""

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            keep_frozen_in_eval(self)
        return self


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module ``name`` of ``model``; numeric parts may be negative (``blocks.-1`` = the last block); a name
    that is not a full path may be the unique ending of one (``layer4`` = ``backbone.layer4``).

    Raises:
        ConfigError: no such module (lists the top-level ones), or an ending that several modules share.
    """
    if name and "-" not in name and name not in dict(model.named_modules()):
        ends = [n for n, _ in model.named_modules() if n.endswith("." + name)]
        if len(ends) > 1:
            raise ConfigError(f"layer '{name}' is ambiguous: {', '.join(ends[:6])}")
        if ends:
            name = ends[0]
    m = model
    for part in name.split("."):
        try:
            if part.lstrip("-").isdigit() and isinstance(m, (nn.Sequential, nn.ModuleList)):
                m = m[int(part)]
            else:
                m = getattr(m, part) if not isinstance(m, nn.ModuleDict) else m[part]
        except (AttributeError, IndexError, KeyError):
            top = [n for n, _ in model.named_children()]
            raise ConfigError(f"model has no layer '{name}' (top-level modules: {top})") from None
        if not isinstance(m, nn.Module):
            raise ConfigError(f"'{name}' is not a module of the model")
    return m


def logits_of(out) -> torch.Tensor:
    """A model output's (B,) logits, from a tensor or from the ``{"logit": ...}`` form."""
    return out["logit"] if isinstance(out, dict) else out


__all__ = ["FrozenAwareModule", "HALF", "IMAGENET_MEAN", "IMAGENET_STD", "ModelSpec", "OPENAI_CLIP_MEAN",
           "OPENAI_CLIP_STD", "create_model", "freeze", "get_layer", "get_spec", "import_model_file",
           "keep_frozen_in_eval",
           "list_models", "local_timm_weights", "logits_of", "register_model", "timm_backbone", "weights_path"]
