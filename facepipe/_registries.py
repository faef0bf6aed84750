"""The one rule every registry of facepipe follows (models, dataset adapters, face detectors): a name is
registered once. Registering another object under a taken name is an error naming both registrants; the same
definition registered again (its module imported or executed again: the same ``--import`` file, a reload) replaces
the entry, as a re-import would."""

from __future__ import annotations

from typing import Any

from facepipe.errors import ConfigError


def registrant(obj: Any) -> str:
    """``module.qualname`` of a registered object, with its source file when there is one."""
    name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    code = getattr(obj, "__code__", None)
    return f"{name} ({code.co_filename}:{code.co_firstlineno})" if code is not None else name


def _definition(obj: Any) -> tuple:
    return (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None),
            getattr(getattr(obj, "__code__", None), "co_filename", None))


def _same_definition(a: Any, b: Any) -> bool:
    return a is b or (None not in _definition(a)[:2] and _definition(a) == _definition(b))


def check_unique(kind: str, name: str, new: Any, old: Any | None) -> None:
    """Refuse to register ``new`` as ``kind`` ``name`` when ``old`` (another definition) holds the name.

    Raises:
        ConfigError: ``name`` is taken by another registrant (both named).
    """
    if old is not None and not _same_definition(old, new):
        raise ConfigError(f"{kind} '{name}' is registered twice: by {registrant(old)} and by {registrant(new)}; "
                          "pick another name")


__all__ = ["check_unique", "registrant"]
