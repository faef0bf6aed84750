"""Shard sets: :func:`read_index`, the one reader of a shard set's ``index.json``, and :func:`resolve_shards`,
which turns an index, a brace pattern or a list of URLs into the shard URLs of one split.

Every problem with an index is one :class:`~facepipe.errors.ShardIndexError` naming the path and what is wrong
(missing, unreadable, not JSON, another schema version, missing keys). Indexes are read from local paths and
folders, ``s3://`` (and ``gs://``) URLs through :mod:`facepipe.data.storage`, and whatever else
``webdataset.gopen`` opens (``http(s)://``, ``pipe:``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from facepipe.data import storage
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import InputError, ShardIndexError
from facepipe.ids import FACE_LABEL_NAMES

INDEX_NAME = "index.json"
_SPLIT_KEYS = ("samples", "shards")
_SHARD_KEYS = ("url", "samples", "cells")


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs of one split and what the index says about them (counts are ``None`` without an index)."""

    urls: tuple[str, ...]
    samples: int | None
    cells: dict[tuple[str, int], int] | None  # (dataset, label) -> samples
    views: tuple[str, ...]
    view_params: dict | None = None  # the freq parameters the stored views were computed with
    crop_size: int | None = None
    image_format: str | None = None  # png | jpg | mixed (None: not recorded)
    sample_kind: str | None = None  # frame | clip (None: not recorded, e.g. a list of URLs)
    clip_length: int | None = None  # clip sets: frames per clip, and source frames between them
    frame_step: int | None = None
    crop_landmarks: int | None = None  # points of every sample's crop_landmarks (68 / 81), None when not all have them
    shard_cells: tuple[dict[tuple[str, int], int], ...] | None = None  # per URL: (dataset, label) -> samples
    version: str | None = None  # the index's set version (``set-…``); None without an index

    def cell_of_shard(self) -> tuple[tuple[str, int], ...] | None:
        """Each shard's one (dataset, label) cell when every shard holds a single cell (``shard.layout: cells``),
        else ``None`` (a ``mixed`` set, or no index)."""
        if self.shard_cells is None or any(len(c) != 1 for c in self.shard_cells):
            return None
        return tuple(next(iter(c)) for c in self.shard_cells)


def index_location(source: str | os.PathLike) -> str:
    """The ``index.json`` that ``source`` names: a local folder's or an ``s3://`` prefix's, else ``source`` itself."""
    src = str(source)
    if os.path.isdir(src):
        return os.path.join(src, INDEX_NAME)
    if storage.is_remote(src) and "{" not in src and not src.endswith((".json", ".tar")):
        return storage.join(src, INDEX_NAME)  # s3://bucket/prefix: the shard folder's index
    return src


def _read_text(url: str) -> str:
    if storage.is_remote(url):
        return storage.read_text(url)
    import webdataset as wds

    with wds.gopen(url, "rb") as f:
        return f.read().decode()


def _missing_keys(index: dict) -> list[str]:
    splits = index.get("splits")
    if not isinstance(splits, dict):
        return ["splits"]
    missing = []
    for name, info in splits.items():
        if not isinstance(info, dict):
            missing.append(f"splits.{name}")
            continue
        missing += [f"splits.{name}.{k}" for k in _SPLIT_KEYS if k not in info]
        shards = info.get("shards")
        for i, sh in enumerate(shards if isinstance(shards, list) else []):
            missing += [f"splits.{name}.shards[{i}].{k}" for k in _SHARD_KEYS if not isinstance(sh, dict) or k not in sh]
    return missing


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _bad_url(url: object) -> str | None:
    """Why a shard's ``url`` cannot be used, or ``None``: a path below the index's folder, as the shard stage writes
    it (``<set>/<split>-....tar``); it is joined to that folder, so nothing absolute, no ``..``, no scheme."""
    if not isinstance(url, str) or not url.strip():
        return "not a path"
    if url.startswith("/") or "\\" in url or ":" in url or ".." in url.split("/"):
        return "not a path inside the shard folder"
    return None


def _bad_shard(where: str, sh: dict) -> list[str]:
    bad = []
    why = _bad_url(sh["url"])
    if why:
        bad.append(f"{where}.url ({sh['url']!r}: {why})")
    if not _is_count(sh["samples"]):
        bad.append(f"{where}.samples ({sh['samples']!r}: not a count)")
    cells = sh["cells"]
    if not isinstance(cells, dict):
        return bad + [f"{where}.cells ({type(cells).__name__}: not an object)"]
    names = set(FACE_LABEL_NAMES.values())
    for cell, n in cells.items():
        d, _, lab = cell.rpartition(":")
        if not d or lab not in names or not _is_count(n):
            bad.append(f"{where}.cells[{cell!r}] ({n!r}: not <dataset>:<{'|'.join(sorted(names))}> with a count)")
    if not bad and sum(cells.values()) != sh["samples"]:
        bad.append(f"{where}.cells (they count {sum(cells.values())} samples, the shard {sh['samples']})")
    return bad


def _bad_values(index: dict) -> list[str]:
    """Values of the keys the readers use that they cannot use (the keys are all present): counts that are not
    non-negative integers or do not add up, shard URLs outside the index's folder, cells that name no label."""
    bad = []
    for name, info in index["splits"].items():
        if not _is_count(info["samples"]):
            bad.append(f"splits.{name}.samples ({info['samples']!r}: not a count)")
        if not isinstance(info["shards"], list):
            bad.append(f"splits.{name}.shards ({type(info['shards']).__name__}: not a list)")
            continue
        here = [b for i, sh in enumerate(info["shards"]) for b in _bad_shard(f"splits.{name}.shards[{i}]", sh)]
        bad += here
        if not here and _is_count(info["samples"]) and sum(sh["samples"] for sh in info["shards"]) != info["samples"]:
            bad.append(f"splits.{name}.samples ({info['samples']}: its shards hold "
                       f"{sum(sh['samples'] for sh in info['shards'])})")
    views = index.get("views", [])
    if not isinstance(views, list) or not all(isinstance(v, str) for v in views):
        bad.append(f"views ({views!r}: not a list of names)")
    if index.get("sample_kind", "frame") not in ("frame", "clip"):
        bad.append(f"sample_kind ({index['sample_kind']!r}: not frame or clip)")
    elif index.get("sample_kind") == "clip" and not index.get("clip_length"):
        bad.append(f"clip_length ({index.get('clip_length')!r}: a clip set needs its frames per clip)")
    for k in ("crop_size", "clip_length", "frame_step", "crop_landmarks", "total"):
        if index.get(k) is not None and not _is_count(index[k]):
            bad.append(f"{k} ({index[k]!r}: not a count)")
    if index.get("videos") is not None and _bad_url(index["videos"]):
        bad.append(f"videos ({index['videos']!r}: {_bad_url(index['videos'])})")
    return bad


def check_index(index: object, where: str) -> dict:
    """``index`` if it is a shard index of this schema version with every key the readers use, holding values they
    can use.

    Raises:
        ShardIndexError: naming ``where``: not a JSON object, another schema version, missing keys, or wrong values
            (counts that are not non-negative integers or do not add up: a split's samples are its shards', a
            shard's are its cells'; shard URLs that are not paths inside the index's folder; cells that name no
            ``<dataset>:<label>``; ``views``, ``sample_kind`` and the sizes of another type).
    """
    if not isinstance(index, dict):
        raise ShardIndexError(f"{where}: shard index is not a JSON object (got {type(index).__name__})")
    if index.get("schema_version") != SCHEMA_VERSION:
        raise ShardIndexError(f"{where}: shards have schema version {index.get('schema_version')}, this facepipe "
                              f"reads {SCHEMA_VERSION}; rebuild them with 'facepipe shard'")
    missing = _missing_keys(index)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ShardIndexError(f"{where}: shard index lacks {', '.join(missing[:5])}{more}; rebuild it with "
                              "'facepipe shard'")
    bad = _bad_values(index)
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ShardIndexError(f"{where}: shard index has wrong values: {'; '.join(bad[:5])}{more}; rebuild it with "
                              "'facepipe shard'")
    return index


def read_index(source: str | os.PathLike | dict) -> dict:
    """A shard set's ``index.json``, read and checked (:func:`check_index`).

    Args:
        source: the index (local path or URL), the folder holding it (local, or an ``s3://`` prefix), or an
            already loaded index (checked only).

    Returns:
        The index as a dict (``schema_version``, ``splits`` -> ``{samples, shards: [{url, samples, cells, ...}]}``,
        ``views``, ``crop_size``, ...).

    Raises:
        ShardIndexError: naming the path: missing, unreadable, not JSON (nested too deep included), another schema
            version, missing keys, wrong values.
    """
    if isinstance(source, dict):
        return check_index(source, "shard index")
    url = index_location(source)
    try:
        text = _read_text(url)
    except FileNotFoundError:
        raise ShardIndexError(f"{url}: shard index not found (run 'facepipe shard' first)") from None
    except (OSError, InputError, ValueError) as e:
        raise ShardIndexError(f"{url}: cannot read shard index: {e}") from None
    try:
        index = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: arrays or objects nested thousands deep
        raise ShardIndexError(f"{url}: shard index is not JSON: {e}") from None
    return check_index(index, url)


def _from_index(src: str, split: str | None) -> ShardSet:
    index = read_index(src)
    if split not in index["splits"]:
        raise InputError(f"{src}: no split '{split}' (have {sorted(index['splits'])})")
    info = index["splits"][split]
    if not info["shards"]:
        raise InputError(f"{src}: split '{split}' has no shards (0 samples)")
    base = src.rsplit("/", 1)[0] if "/" in src else "."
    urls = tuple(f"{base}/{s['url']}" for s in info["shards"])
    cells: Counter = Counter()
    label_of = {name: lab for lab, name in FACE_LABEL_NAMES.items()}  # real 0, fake 1, uncertain -1
    per_shard = []
    for s in info["shards"]:
        here = {}
        for cell, n in s["cells"].items():
            d, lab = cell.rsplit(":", 1)
            here[(d, label_of[lab])] = int(n)
            cells[(d, label_of[lab])] += n
        per_shard.append(here)
    return ShardSet(urls, int(info["samples"]), dict(cells), tuple(index.get("views", ())),
                    index.get("view_params"), index.get("crop_size"), index.get("image_format"),
                    index.get("sample_kind", "frame"), index.get("clip_length"), index.get("frame_step"),
                    index.get("crop_landmarks"), tuple(per_shard), index.get("version"))


def resolve_shards(source: str | os.PathLike | Sequence[str], split: str | None = "train") -> ShardSet:
    """Turn an index (file, folder or URL), a brace pattern or a list of URLs into a :class:`ShardSet`.

    Raises:
        ShardIndexError: the index is missing, unreadable or not a shard index of this schema version (an
            ``InputError`` and a ``SchemaError``).
        InputError: the split is unknown or has no shards, or the source names no shard at all.
    """
    import braceexpand

    if isinstance(source, (list, tuple)):
        urls = tuple(str(u) for u in source)
        if not urls:
            raise InputError("make_loader: empty list of shard URLs")
        return ShardSet(urls, None, None, ())
    src = index_location(source)
    if src.endswith(".json"):
        return _from_index(src, split)
    remote = "://" in src or src.startswith("pipe:")
    if not remote and "{" not in src and not os.path.exists(src):
        raise InputError(f"{src}: no such shard, shard folder or index")
    return ShardSet(tuple(braceexpand.braceexpand(src)), None, None, ())


__all__ = ["INDEX_NAME", "ShardSet", "check_index", "index_location", "read_index", "resolve_shards"]
