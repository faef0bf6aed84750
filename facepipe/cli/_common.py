"""What every command shares: one path from --params, named options and -S to a stage's model; small parsers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from facepipe.config import field_paths, load_params, parse_sets, set_dotted, validate_section
from facepipe.errors import FacepipeError

SET_HELP = ("KEY=VALUE: set any parameter of this stage (repeatable; dvc exp run -S's convention: a dotted key "
            "of the params.yaml section, e.g. -S align.size=128 or -S extract.align.size=128; VALUE is YAML). "
            "Applied after --params and the named options.")


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
