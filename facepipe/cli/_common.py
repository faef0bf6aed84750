"""What every command shares: one path from --params, named options and -S to a stage's model; small parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from facepipe.config import field_paths, load_params, parse_sets, set_dotted, validate_section
from facepipe.errors import FacepipeError

SET_HELP = ("KEY=VALUE: set any parameter of this stage (repeatable; dvc exp run -S's convention: a dotted key "
            "of the params.yaml section, e.g. -S align.size=128 or -S extract.align.size=128; VALUE is YAML). "
            "Applied after --params and the named options.")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 video``, ``2 videos`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def model_default(model, dotted: str):
    """The built-in default of a parameter model's dotted key (``align.size`` -> 256)."""
    value = model().model_dump(mode="json")
    for part in dotted.split("."):
        value = value[part]
    return value


def _shown(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "none"
    return str(v)


HEAVY_DEFAULTS = {"facepipe.stages.train:TrainConfig": {"model": "resnet18", "steps": 1000, "batch_size": 32,
                                                         "lr": 0.0001}}
"""Built-in defaults of parameter models whose module imports torch (seconds of start-up for every ``facepipe``
command, ``--help`` included): written out here, checked against the model by the CLI tests."""


def help_defaults(model, mapping: dict[str, str]):
    """Decorator for a command whose named options default to ``None`` (so ``--params`` values win): append each
    option's built-in default, read from ``model`` (``mapping``: parameter name -> dotted key), to its ``--help``
    text as ``[default: X]``. Options without a mapping keep their own help. ``model`` may be a
    ``"module:Class"`` name of :data:`HEAVY_DEFAULTS` (not imported)."""
    import inspect

    def default(key: str):
        return HEAVY_DEFAULTS[model][key] if isinstance(model, str) else model_default(model, key)

    def deco(fn):
        for name, par in inspect.signature(fn).parameters.items():
            info = par.default
            if name in mapping and getattr(info, "default", 0) is None and "[default:" not in (info.help or ""):
                info.help = f"{(info.help or '').rstrip()} [default: {_shown(default(mapping[name]))}]"
        return fn

    return deco


def _params_data(params: Optional[Path], section: str, model) -> dict:
    """A stage's parameters as a plain dict: its params.yaml section (validated), or the defaults."""
    return (load_params(params, section, model) if params else model()).model_dump()


def _configure(model, data: dict, overrides: dict, section: str, sets: Optional[list] = None):
    """The one path from the command line to a stage's parameter model: ``data`` (``--params`` or the
    defaults), then the named options that were given (``None`` = not given; dotted keys reach nested
    sections), then the ``-S`` items of this section (:func:`facepipe.config.parse_sets`), then validation;
    errors name the key.

    Every named option's key must be a field of ``model`` (checked whether or not the option was given, so a
    stale flag fails on any run of its command and in the CLI tests)."""
    unknown = sorted(set(overrides) - field_paths(model))
    if unknown:
        raise FacepipeError(f"facepipe {section}: options mapped to no parameter of {model.__name__}: "
                            f"{', '.join(unknown)} (a bug in facepipe/cli.py)")
    for k, v in overrides.items():
        if v is not None:
            set_dotted(data, k, v)
    for k, v in sets or ():
        set_dotted(data, k, v)
    return validate_section(model, data, f"{section} options")


def _sets(items: Optional[list[str]], *sections: str) -> dict:
    """``-S`` items of a command reading ``sections`` (its own first), per section."""
    return parse_sets(items, sections)


def key_values(items, option: str, form: str = "KEY=VALUE", sep: str | None = None) -> dict[str, str]:
    """The one parser of ``KEY=VALUE`` options (``--option``, ``--alias``, ``--adapter``, ``--method-map``,
    ``--dataset-name``, the fields of ``--input``): every item (or, with ``sep``, every ``sep``-separated part of
    one item) must have a non-empty key and value; surrounding spaces are stripped; later keys win.

    Raises:
        InputError: naming the option, the expected form and the offending text.
    """
    from facepipe.errors import InputError

    out: dict[str, str] = {}
    texts = [p for t in (items or ()) for p in (t.split(sep) if sep else [t])]
    for t in texts:
        k, eq, v = t.partition("=")
        if not eq or not k.strip() or not v.strip():
            raise InputError(f"{option} '{t}': expected {form}")
        out[k.strip()] = v.strip()
    return out


def _csv_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


def _auc_text(m: dict) -> str:
    """``0.9100 [0.8500, 0.9600]`` (the AUC and its 95 % bootstrap interval), or ``n/a``."""
    a = m.get("auc")
    if a is None or a != a:
        return "n/a"
    ci = m.get("auc_ci")
    return f"{a:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
