"""Evaluation protocols as data: which datasets a model trains on and, per test column, which videos are scored
against which reals (``facepipe protocols`` lists them; ``facepipe benchmark --protocol NAME`` runs one).

A protocol is a YAML file (the shipped ones live beside this module; any path works too)::

    name: deepfakebench
    title: DeepfakeBench cross-dataset table
    citation: Yan et al., "DeepfakeBench ...", NeurIPS 2023 Datasets and Benchmarks
    train: [ffpp]                      # the datasets the model is trained on (checked against the checkpoint)
    video_aggregation: deepfakebench   # facepipe.metrics.VIDEO_AGGREGATIONS
    columns:
      - name: CDF-v2                   # the column's title in the table
        dataset: celebdf_v2            # dataset name in the shard sets (an adapter's name by default)
        split: test
        methods: null                  # fakes of these methods only (null = every fake of the dataset)
        video_id_regex: null           # and only videos whose id matches (DF40's domain: '^simswap-ff-')
        reference_reals: null          # dataset whose reals (same split) the fakes are scored against
                                       # (null = the column dataset's own reals, filtered like its fakes)
        note: null

Dataset names are the adapters' names (``ffpp``, ``celebdf_v2``, ``dfdc`` ...); ``benchmark --alias
NAME=DATASET`` maps a protocol's name onto the name a shard set uses.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Optional

import yaml
from pydantic import field_validator

from facepipe.config import Section, validate_section
from facepipe.errors import InputError
from facepipe.metrics import VIDEO_AGGREGATIONS


class Column(Section):
    """One test column of a protocol (see the module docstring)."""

    name: str
    dataset: str
    split: str = "test"
    methods: Optional[tuple[str, ...]] = None
    video_id_regex: Optional[str] = None
    reference_reals: Optional[str] = None
    note: Optional[str] = None

    @field_validator("video_id_regex")
    @classmethod
    def _regex(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return v


class Protocol(Section):
    """A published evaluation protocol: training datasets, columns, video aggregation and its citation."""

    name: str
    title: str
    citation: str
    train: tuple[str, ...]
    video_aggregation: str = "mean"
    notes: str = ""
    columns: tuple[Column, ...]

    @field_validator("video_aggregation")
    @classmethod
    def _agg(cls, v: str) -> str:
        if v not in VIDEO_AGGREGATIONS:
            raise ValueError(f"must be one of {', '.join(VIDEO_AGGREGATIONS)}")
        return v

    @field_validator("columns")
    @classmethod
    def _unique(cls, v: tuple[Column, ...]) -> tuple[Column, ...]:
        names = [c.name for c in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"column names must be unique, repeated: {dup}")
        if not v:
            raise ValueError("a protocol needs at least one column")
        return v

    def aliased(self, aliases: dict[str, str]) -> "Protocol":
        """The protocol with dataset names mapped through ``aliases`` (protocol name -> shard set name)."""
        def a(name: Optional[str]) -> Optional[str]:
            return aliases.get(name, name) if name is not None else None

        cols = tuple(c.model_copy(update={"dataset": a(c.dataset), "reference_reals": a(c.reference_reals)})
                     for c in self.columns)
        return self.model_copy(update={"train": tuple(a(t) for t in self.train), "columns": cols})


def _shipped() -> dict[str, Path]:
    here = resources.files(__name__)
    return {Path(str(p)).stem: Path(str(p)) for p in here.iterdir() if str(p).endswith(".yaml")}


def list_protocols() -> list[Protocol]:
    """The shipped protocols, by name."""
    return [load_protocol(n) for n in sorted(_shipped())]


def load_protocol(name_or_path: str | Path) -> Protocol:
    """A shipped protocol by name, or a protocol YAML file.

    Raises:
        InputError: unknown name (close matches listed) or unreadable file.
        ConfigError: an invalid protocol (the file and key named).
    """
    shipped = _shipped()
    p = Path(name_or_path)
    if str(name_or_path) in shipped:
        p = shipped[str(name_or_path)]
    elif not p.is_file():
        close = difflib.get_close_matches(str(name_or_path), list(shipped), n=3)
        raise InputError(f"unknown protocol '{name_or_path}' (shipped: {', '.join(sorted(shipped))}; or a YAML "
                         "file)" + (f"; did you mean {', '.join(close)}?" if close else ""))
    try:
        doc = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{p}: cannot read protocol: {e}") from None
    return validate_section(Protocol, doc or {}, f"{p}")


__all__ = ["Column", "Protocol", "list_protocols", "load_protocol"]
