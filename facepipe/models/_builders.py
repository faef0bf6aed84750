"""Shared builder helpers of the zoo (after timm's ``_builder``/``_manipulate``): timm backbones with weights from
a given file or the local caches only, freezing that keeps batch-norm statistics fixed, and the two accessors the
training and explanation code use on any model (:func:`get_layer`, :func:`logits_of`)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from facepipe.errors import ConfigError

log = logging.getLogger(__name__)


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


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")


def timm_backbone(timm_name: str, pretrained: bool | str, loud: bool = False, **kwargs) -> nn.Module:
    """A timm model without classifier (``num_classes=0`` unless given); weights from a given file or the local
    caches only (timm's checkpoint filters convert e.g. OpenAI CLIP / open_clip state dicts).

    ``kwargs`` a zoo model forwards from its options go to ``timm.create_model``, whose model classes are not
    known before the call: a ``TypeError`` there that names one of ``kwargs`` as an unexpected keyword is
    reported as a bad option; any other error propagates as it is.

    Raises:
        ConfigError: a given weights file does not exist, or timm's model takes no option named in ``kwargs``.
    """
    import timm

    kwargs.setdefault("num_classes", 0)
    path = weights_path(timm_name, pretrained, loud)
    overlay = {}
    if path is not None:
        overlay = {"pretrained_cfg_overlay": {"file": str(path)}}
        if kwargs.get("num_classes"):  # a head that is part of the weights (CLIP's projection): keep it
            overlay["pretrained_cfg_overlay"]["num_classes"] = kwargs["num_classes"]
    try:
        return timm.create_model(timm_name, pretrained=path is not None, **overlay, **kwargs)
    except TypeError as e:
        hit = _UNEXPECTED.search(str(e))
        if hit and hit.group(1) in kwargs:
            raise ConfigError(f"bad options: timm model '{timm_name}' takes no option '{hit.group(1)}' "
                              f"({e})") from None
        raise


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


__all__ = ["FrozenAwareModule", "freeze", "get_layer", "keep_frozen_in_eval", "local_timm_weights", "logits_of",
           "timm_backbone", "weights_path"]
