"""Building zoo models (after timm's ``_factory``): ``create_model(name, pretrained, **options)`` resolves a name
(registered, ``timm:<name>`` or ``package.module:factory``), checks the options against the factory's signature
*before* calling it, and builds. A bad option is reported as one (:class:`~facepipe.errors.ConfigError` naming it
and the options there are); a ``TypeError`` raised inside a model's own code propagates as what it is."""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from torch import nn

from facepipe.errors import ConfigError
from facepipe.models._registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, is_model, model_entry, unknown_model
from facepipe.models.baselines import timm_classifier


def _timm_entry(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    import timm

    tname = name[5:]
    if not timm.is_model(tname):
        close = difflib.get_close_matches(tname, timm.list_models(), n=3)
        raise ConfigError(f"timm has no model '{tname}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    cfg = timm.models.get_pretrained_cfg(tname)
    mean = tuple(getattr(cfg, "mean", IMAGENET_MEAN)) if cfg else IMAGENET_MEAN
    std = tuple(getattr(cfg, "std", IMAGENET_STD)) if cfg else IMAGENET_STD
    size = int(cfg.input_size[-1]) if cfg and getattr(cfg, "input_size", None) else 224
    spec = ModelSpec(name, input_size=size, mean=mean, std=std, paper=f"timm {tname}", timm_name=tname,
                     faithful="the timm model with a one-logit head", family="timm")
    return functools.partial(timm_classifier, tname), spec


def _external(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    """``timm:<name>`` or ``package.module:factory``."""
    if name.startswith("timm:"):
        return _timm_entry(name)
    module, _, attr = name.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"model '{name}': cannot import {attr} from {module}: {e}") from None
    spec = getattr(fn, "spec", None) or ModelSpec(name, paper=f"user factory {name}", family="user")
    return fn, replace(spec, name=name)


def resolve(name: str) -> tuple[Callable[..., nn.Module], ModelSpec]:
    """The factory and spec ``name`` stands for: a registered name, ``timm:<name>`` or ``package.module:factory``.

    Raises:
        ConfigError: unknown name (close matches listed), or an external name that does not import.
    """
    if is_model(name):
        return model_entry(name)
    head = name.split(":")[0]
    if name.startswith("timm:") or (":" in name and ("." in head or head.isidentifier())):
        return _external(name)
    raise unknown_model(name)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (registry, ``timm:<name>`` or ``module:factory``).

    Raises:
        ConfigError: unknown name, with close matches.
    """
    return resolve(name)[1]


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError, SyntaxError):  # a builtin, or annotations that do not evaluate
        try:
            return inspect.signature(fn)
        except (TypeError, ValueError):
            return None


def _option_names(sig: inspect.Signature) -> list[str]:
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "pretrained"]


def check_options(name: str, factory: Callable[..., nn.Module], pretrained, options: dict) -> None:
    """Bind ``pretrained`` and ``options`` to ``factory``'s signature without calling it; when the factory takes
    ``**kwargs`` and its return annotation is a class (``-> BackboneClassifier``), the options it does not name
    itself are bound to that class's parameters too. What a class hands on through its own ``**kwargs`` (timm's
    model options) is checked where it is used (:func:`facepipe.models._builders.timm_backbone`).

    Raises:
        ConfigError: an option the factory (or the class it builds) does not take, a missing required one, or a
            factory that takes no ``pretrained``; the message names the options there are.
    """
    sig = _signature(factory)
    if sig is None:
        return
    known = _option_names(sig)
    try:
        bound = sig.bind(pretrained=pretrained, **options)
        var_kw = next((p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD), None)
        built = sig.return_annotation
        forwarded = bound.arguments.get(var_kw, {}) if var_kw else {}
        if forwarded and inspect.isclass(built) and issubclass(built, nn.Module) and built is not nn.Module:
            target = _signature(built)
            if target is not None:
                known += [n for n in _option_names(target) if n not in known]
                target.bind_partial(**forwarded)
    except TypeError as e:
        raise ConfigError(f"model '{name}': bad options {options}: {e} (options: {', '.join(known) or 'none'})") \
            from None


def create_model(name: str, pretrained: bool | str = False, **overrides) -> nn.Module:
    """Build model ``name``; the module gets a ``spec`` attribute.

    Args:
        name: a registered name, ``timm:<name>``, or ``package.module:factory``.
        pretrained: ``False`` (random init), ``True`` (weights from the local Hugging Face / torch hub cache
            only; never downloads — random init with a warning when absent), or a path to a weights file.
        **overrides: factory keyword arguments (e.g. ``freeze_backbone=True``, ``levels=3``).

    Raises:
        ConfigError: unknown name or bad overrides (checked against the factory's signature before the call).
        TypeError: raised inside the model's own code (a bug there, not a bad option): propagates unchanged.
    """
    fn, spec = resolve(name)
    options = {**spec.defaults, **overrides}
    check_options(name, fn, pretrained, options)
    model = fn(pretrained=pretrained, **options)
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


__all__ = ["check_options", "create_model", "get_spec", "import_model_file", "resolve"]
