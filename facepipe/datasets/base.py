"""Adapter base: rows from a dataset's own layout -> a validated, leakage-checked manifest.

An adapter is one decorated function ``scan(root, opts) -> list[Row]`` registered under the dataset's
name with its expected layout (``facepipe datasets`` prints them). Rows carry the official label and,
where the dataset publishes one, the official split; rows without a split are assigned by
:func:`group_split`, which keeps every fake with its originals and every identity in one split.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import polars as pl
from pydantic import Field

from facepipe.config import _Section
from facepipe.data.schema import SPLITS, check_name
from facepipe.errors import InputError
from facepipe.manifest import MANIFEST_SCHEMA, check_leakage

log = logging.getLogger(__name__)


class ManifestConfig(_Section):
    """Parameters of the ``manifest`` stage (section ``manifest``).

    ``split_mode``: ``official`` uses a dataset's published split and groups the rest; ``group``
    ignores published splits and re-splits everything leak-free. ``fractions``: train/val/test shares
    for grouped videos. ``compression``: FF++/DFD folder (``raw``, ``c23``, ``c40``). ``methods``:
    manipulation methods to include (``None`` = the adapter's default set). ``identity_leakage``:
    ``error`` fails when a person appears in two splits; ``warn`` accepts it (some official protocols,
    e.g. Celeb-DF's test list, share identities with the rest). Fakes whose original is in another
    split always fail. ``missing_originals``: a fake whose listed original is absent -> ``error`` or
    ``warn``. ``check_files``: every listed file must exist. ``options``: adapter-specific settings.
    """

    split_mode: str = Field("official", pattern="^(official|group)$")
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    compression: str = "c23"
    methods: Optional[tuple[str, ...]] = None
    identity_leakage: str = Field("error", pattern="^(error|warn)$")
    missing_originals: str = Field("error", pattern="^(error|warn)$")
    check_files: bool = True
    options: dict[str, str] = {}


@dataclass
class Row:
    """One labelled video (or image-sequence folder) of a dataset; ``path`` relative to the root."""

    path: str
    label: int
    method: str
    split: Optional[str] = None
    sources: list[str] = field(default_factory=list)  # paths (relative to root) of the originals
    identities: list[str] = field(default_factory=list)
    compression: Optional[str] = None
    mask_path: Optional[str] = None


@dataclass(frozen=True)
class Adapter:
    name: str
    layout: str
    scan: Callable[[Path, ManifestConfig], list[Row]]


_ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str, layout: str):
    """Decorator registering ``scan(root, cfg) -> list[Row]`` for dataset ``name``."""

    def deco(fn):
        _ADAPTERS[name] = Adapter(name, layout.strip("\n"), fn)
        return fn

    return deco


def list_adapters() -> list[Adapter]:
    """Registered adapters by name."""
    return [_ADAPTERS[k] for k in sorted(_ADAPTERS)]


def get_adapter(name: str) -> Adapter:
    """The adapter called ``name``.

    Raises:
        InputError: unknown name, listing the known ones and close matches.
    """
    if name not in _ADAPTERS:
        close = difflib.get_close_matches(name, list(_ADAPTERS), n=3)
        raise InputError(f"unknown dataset adapter '{name}' (known: {', '.join(sorted(_ADAPTERS))})"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    return _ADAPTERS[name]


def layout_error(adapter: str, root: Path, problem: str) -> InputError:
    """An error naming the root, what is wrong, and the layout the adapter expects."""
    return InputError(f"{root}: not a {adapter} layout: {problem}\nexpected:\n{_ADAPTERS[adapter].layout}")


def group_split(groups: list[list[int]], fixed: dict[int, str], n: int, fractions: tuple[float, float, float],
                seed: int) -> list[str]:
    """Assign splits to ``n`` items given connected groups that must stay together.

    Groups containing an item with a ``fixed`` split take that split (the leakage check reports groups
    with two). Free groups are placed, largest first (seeded order among equals), into the split
    furthest below its target share.

    Returns:
        The split of every item.
    """
    out = [""] * n
    rng = np.random.default_rng(seed)
    target = np.array(fractions, dtype=np.float64) / sum(fractions) * n
    filled = np.zeros(3)
    free = []
    for g in groups:
        fixed_splits = {fixed[i] for i in g if i in fixed}
        if fixed_splits:
            s = sorted(fixed_splits)[0]
            for i in g:
                out[i] = fixed.get(i, s)
            filled[SPLITS.index(s)] += len(g)
        else:
            free.append(g)
    order = sorted(range(len(free)), key=lambda k: (-len(free[k]), rng.random()))
    for k in order:
        g = free[k]
        s = int(np.argmax(target - filled))
        for i in g:
            out[i] = SPLITS[s]
        filled[s] += len(g)
    return out


def _components(rows: list[Row]) -> list[list[int]]:
    """Connected groups: fakes with their originals, and videos sharing an identity (union-find)."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[ra] = rb

    by_path = {r.path: i for i, r in enumerate(rows)}
    first_with: dict[str, int] = {}
    for i, r in enumerate(rows):
        for src in r.sources:
            if src in by_path:
                union(i, by_path[src])
        for ident in r.identities:
            if ident in first_with:
                union(i, first_with[ident])
            else:
                first_with[ident] = i
    comps: dict[int, list[int]] = {}
    for i in range(len(rows)):
        comps.setdefault(find(i), []).append(i)
    return list(comps.values())


def build_manifest(adapter: str, root: str | Path, dataset: str, cfg: ManifestConfig) -> pl.DataFrame:
    """Scan ``root`` with ``adapter`` and return the validated manifest (:data:`MANIFEST_SCHEMA`).

    Raises:
        InputError: unknown adapter, wrong root or layout (the expected one is shown), a missing
            split file, a listed file that does not exist, conflicting labels for one file, a fake
            whose original is missing (``missing_originals: error``), or originals/identities
            crossing splits.
    """
    from facepipe.extract import video_id_for

    ad = get_adapter(adapter)
    check_name("dataset", dataset)
    root = Path(root)
    if not root.is_dir():
        raise layout_error(adapter, root, "folder does not exist")
    rows = ad.scan(root, cfg)
    if not rows:
        raise layout_error(adapter, root, "no videos found")
    # conflicting labels / duplicates
    seen: dict[str, Row] = {}
    for r in rows:
        if r.path in seen:
            if seen[r.path].label != r.label:
                raise InputError(f"{root / r.path}: conflicting labels ({seen[r.path].label} and {r.label}) "
                                 f"for one file in the {adapter} layout")
            raise InputError(f"{root / r.path}: listed twice by the {adapter} adapter")
        seen[r.path] = r
    if cfg.check_files:
        missing = [r.path for r in rows if not (root / r.path).exists()]
        if missing:
            raise InputError(f"{root / missing[0]}: listed but missing ({len(missing)} missing files)")
    orphans = [(r.path, s) for r in rows for s in r.sources if s not in seen]
    if orphans:
        msg = (f"{root / orphans[0][0]}: fake whose original {orphans[0][1]} is missing "
               f"({len(orphans)} such fakes)")
        if cfg.missing_originals == "error":
            raise InputError(msg + "; set manifest.missing_originals: warn to keep them")
        log.warning(msg)
    if cfg.split_mode == "group":
        for r in rows:
            r.split = None
    fixed = {i: r.split for i, r in enumerate(rows) if r.split is not None}
    bad = {s for s in fixed.values() if s not in SPLITS}
    if bad:
        raise InputError(f"{root}: unknown split(s) {sorted(bad)} from the {adapter} layout")
    splits = group_split(_components(rows), fixed, len(rows), cfg.fractions, cfg.seed)
    df = pl.DataFrame({
        "dataset": [dataset] * len(rows),
        "video_id": [video_id_for(r.path) for r in rows],
        "path": [r.path for r in rows],
        "label": [r.label for r in rows],
        "method": [r.method for r in rows],
        "split": splits,
        "source_ids": [[video_id_for(s) for s in r.sources if s in seen] for r in rows],
        "compression": [r.compression for r in rows],
        "identity_ids": [sorted(set(r.identities)) for r in rows],
        "mask_path": [r.mask_path for r in rows],
    }, schema=MANIFEST_SCHEMA).sort("path")
    dup = df.group_by("video_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputError(f"{root}: two files map to video id '{dup['video_id'][0]}'")
    check_leakage(df, f"{root} ({adapter})", identities=False, mode="error")
    check_leakage(df, f"{root} ({adapter})", identities=True, mode=cfg.identity_leakage)
    return df


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key`` (for deterministic choices that do not depend on the set)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2**32
