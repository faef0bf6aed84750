"""Reading ``params.yaml``: the pydantic base of every stage's parameters, validation with clear errors,
and the ``datasets`` mapping.

Each stage's parameter model lives beside the code it configures (``facepipe.stages.<stage>``, and the
sub-sections in ``facepipe.video``, ``facepipe.faces.config``, ``facepipe.freq.config``), so a stage's code
fingerprint covers exactly its own parameters. ``load_params(path, section, model)`` reads one section;
every problem is reported as one :class:`~facepipe.errors.ConfigError` naming the file, the key and what
is wrong.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from facepipe.errors import ConfigError


class Section(BaseModel):
    """Base of every parameter section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


class DatasetEntry(Section):
    """One entry of the ``datasets`` mapping in params.yaml: which adapter reads which root.

    ``root`` is the dataset in its published layout (and the folder ``extract`` reads videos from);
    ``options`` are adapter settings (e.g. ``file`` for ``csv``, ``splits_dir`` for ``ffpp``).
    """

    adapter: str
    root: str
    options: dict[str, str] = {}


def load_dataset_entry(path: str | Path, key: str) -> DatasetEntry:
    """``datasets.<key>`` of a params file.

    Raises:
        ConfigError: missing file, no ``datasets`` mapping, unknown key, or an invalid entry.
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read params: {e}") from None
    ds = doc.get("datasets") or {}
    if key not in ds:
        raise ConfigError(f"{p}: no dataset '{key}' under 'datasets' (have: {', '.join(ds) or 'none'})")
    return validate_section(DatasetEntry, ds[key], f"{p} [datasets.{key}]")


def dataset_keys(path: str | Path) -> list[str]:
    """Keys of the ``datasets`` mapping of a params file (empty when absent)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    return list((doc.get("datasets") or {}).keys())


def _format_validation(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(section)"
        parts.append(f"{loc}: {e['msg']}")
    return f"{where}: invalid parameters: " + "; ".join(parts)


def validate_section(model: type[M], data: dict | None, where: str) -> M:
    """Validate a mapping against ``model``.

    Raises:
        ConfigError: naming ``where`` and every offending key.
    """
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None


def load_params(path: str | Path, section: str, model: type[M]) -> M:
    """Read ``section`` of a YAML params file and validate it with ``model``.

    A missing section gives the model's defaults.

    Raises:
        ConfigError: the file is missing, is not YAML, or the section does not validate.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    return validate_section(model, doc.get(section), f"{p} [{section}]")


def _parse_value(text: str):
    """A ``-S`` value as YAML (``dvc exp run -S``'s convention): ``3`` int, ``0.1`` float, ``true`` bool,
    ``null`` None, ``[a, b]`` list, ``{a: 1}`` mapping, anything else a string."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str] | tuple[str, ...] | None,
               sections: tuple[str, ...]) -> dict[str, list[tuple[str, object]]]:
    """Parse repeated ``-S/--set KEY=VALUE`` options, the ``dvc exp run -S`` convention.

    ``KEY`` is a dotted path into a stage's parameters, with or without its section name
    (``align.size=128`` and ``extract.align.size=128`` are the same for ``facepipe extract``; a
    ``params.yaml:`` prefix is accepted too). Without a section name the key belongs to ``sections[0]``.
    ``VALUE`` is parsed as YAML.

    Args:
        items: the option's values, in the order given (later ones win).
        sections: the sections the command reads, its own first.

    Returns:
        ``{section: [(dotted key within the section, value), ...]}``.

    Raises:
        ConfigError: an item without ``=`` or with an empty key (names the item).
    """
    out: dict[str, list[tuple[str, object]]] = {s: [] for s in sections}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if key.startswith("params.yaml:"):
            key = key[len("params.yaml:"):]
        if not sep or not key or key.startswith(".") or key.endswith(".") or ".." in key:
            raise ConfigError(f"-S '{item}': expected KEY=VALUE with a dotted KEY (e.g. align.size=128)")
        head, _, rest = key.partition(".")
        section, sub = (head, rest) if head in sections and rest else (sections[0], key)
        out[section].append((sub, _parse_value(value)))
    return out


def set_dotted(data: dict, dotted: str, value) -> None:
    """``data[a][b][c] = value`` for ``dotted = "a.b.c"`` (missing mappings are created)."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        nxt = data.get(p)
        if not isinstance(nxt, dict):
            nxt = data[p] = {}
        data = nxt
    data[leaf] = value


def field_paths(model: type[BaseModel]) -> set[str]:
    """Every dotted field path of a parameter model, nested models included (``align``, ``align.size``, ...)."""
    out: set[str] = set()
    for name, f in model.model_fields.items():
        out.add(name)
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out |= {f"{name}.{p}" for p in field_paths(ann)}
    return out
