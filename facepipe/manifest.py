"""The manifest: one row per labelled video, the link between a dataset's labels/splits and extract outputs.

Columns (``MANIFEST_SCHEMA``):

- ``dataset``; ``video_id`` (as :func:`facepipe.ids.video_id_for` derives it from ``path``); ``path``
  (relative to the dataset's video folder, or absolute for inputs outside it);
- ``label`` (0 real, 1 fake); ``method`` (manipulation method; ``original`` for real videos);
  ``split`` (train/val/test);
- ``source_ids``: the originals a fake was made from, **first the target** (the video whose frames the
  fake modifies, compared with it for per-face labels; FF++ names fakes ``target_source``), then any
  face donors. A bare id names a video of the same dataset, ``<dataset>:<video_id>`` one of another
  dataset (checked by the shard stage when both are combined);
- ``compression``; ``identity_ids`` (people shown, where known); ``mask_path`` (manipulation mask video,
  FF++);
- ``protocol_note``: set by an adapter on a row whose official protocol knowingly crosses splits (e.g. a
  Celeb-DF official test fake whose original is in train); the leakage check accepts and reports it.

:func:`read_manifest` reads a parquet file in that schema or a CSV with at least ``path,label,split``
(``label`` 0/1 or real/fake; optional ``method``, ``source_ids`` separated by ``;`` — video ids, paths of
other rows, or ``dataset:video_id`` — ``dataset``, ``video_id``, ``compression``, ``identity_ids``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from facepipe.errors import InputError
from facepipe.ids import SPLITS, IdError, check_name, qualify, unique_video_ids

log = logging.getLogger(__name__)

MANIFEST_SCHEMA = {
    "dataset": pl.String, "video_id": pl.String, "path": pl.String, "label": pl.Int8, "method": pl.String,
    "split": pl.String, "source_ids": pl.List(pl.String), "compression": pl.String,
    "identity_ids": pl.List(pl.String), "mask_path": pl.String, "protocol_note": pl.String,
}


_NAMES = ("dataset", "video_id", "label", "method", "split", "compression", "protocol_note")
"""Text columns read without surrounding spaces (``path`` and ``mask_path`` are kept as written)."""
_LISTS = ("source_ids", "identity_ids")


def _list_col(df: pl.DataFrame, name: str) -> pl.Expr:
    if name not in df.columns:
        return pl.lit([], dtype=pl.List(pl.String)).alias(name)
    col = pl.col(name) if df.schema[name] == pl.List(pl.String) else \
        pl.col(name).cast(pl.String).fill_null("").str.split(";")
    # strip, then drop the blanks: inside one eval, filter's pl.element() is the entry before stripping
    return (col.list.eval(pl.element().str.strip_chars())
            .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != ""))).alias(name))


def _rows_named(df: pl.DataFrame, n: int = 5) -> str:
    paths = df["path"].to_list()
    return ", ".join(str(p) for p in paths[:n]) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def resolve_sources(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """Turn every ``source_ids`` entry into a video id (same dataset) or ``dataset:video_id``.

    An entry may be a video id of a row, the ``path`` of a row (as the csv layout documents), or a
    qualified ``dataset:video_id`` (another dataset: kept as is).

    Raises:
        InputError: an entry names no row, or a ``dataset:video_id`` entry that cannot be part of a sample
            key (names ``where``, the row and the entry).
    """
    ids = {(d, v) for d, v in df.select("dataset", "video_id").iter_rows()}
    by_path = {(d, p): v for d, p, v in df.select("dataset", "path", "video_id").iter_rows()}
    out = []
    for d, path, srcs in df.select("dataset", "path", "source_ids").iter_rows():
        resolved = []
        for s in srcs or []:
            if (d, s) in by_path:
                resolved.append(by_path[(d, s)])
            elif (d, s) in ids:
                resolved.append(s)
            elif ":" in s and qualify(d, s)[0] != d:
                od, ov = qualify(d, s)
                try:
                    check_name("dataset", od)
                    check_name("video_id", ov)
                except IdError as e:
                    raise InputError(f"{where}: source '{s}' of {path}: {e}") from None
                resolved.append(f"{od}:{ov}")
            else:
                raise InputError(f"{where}: source '{s}' of {path} names no video of the manifest (give a "
                                 "video id, the path of another row, or dataset:video_id)")
        out.append(resolved)
    return df.with_columns(pl.Series("source_ids", out, dtype=pl.List(pl.String)))


def _read_table(p: Path) -> pl.DataFrame:
    """The manifest's rows as read: blank lines (rows without any value) dropped, the columns of
    :data:`MANIFEST_SCHEMA` as text (lists as lists of text), ``path``, ``label`` and ``split`` present and no
    blank path."""
    if not p.is_file():
        raise InputError(f"{p}: manifest not found")
    try:
        df = pl.read_parquet(p) if p.suffix.lower() == ".parquet" else pl.read_csv(p, infer_schema=False)
    except Exception as e:  # noqa: BLE001  polars raises several error types for unreadable files
        raise InputError(f"{p}: cannot read manifest: {e}") from None
    for col in ("path", "label", "split"):
        if col not in df.columns:
            raise InputError(f"{p}: manifest lacks column '{col}' (columns: {df.columns})")
    try:
        df = df.with_columns([pl.col(c).cast(pl.List(pl.String) if c in _LISTS and isinstance(df.schema[c], pl.List)
                                             else pl.String) for c in df.columns if c in MANIFEST_SCHEMA])
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{p}: manifest columns cannot be read as text: {e}") from None
    df = df.filter(~pl.all_horizontal(pl.all().is_null()))
    # a blank cell is "not given" whether the CSV writer quoted it ("") or not (polars reads null)
    df = df.with_columns([pl.col(c).str.strip_chars().replace("", None) for c in _NAMES if c in df.columns]
                         + [pl.col(c).replace("", None) for c in ("path", "mask_path") if c in df.columns])
    blank = df.filter(pl.col("path").is_null() | (pl.col("path").str.strip_chars() == ""))
    if blank.height:
        raise InputError(f"{p}: blank path in {blank.height} row(s) (every row names a video file or folder)")
    return df


def _with_ids(df: pl.DataFrame, p: Path, dataset: str | None) -> pl.DataFrame:
    """``dataset`` filled in (the argument for blank cells) and checked; ``video_id`` as given (checked) or, where
    blank, derived from the path (:func:`~facepipe.ids.unique_video_ids` over each dataset's paths)."""
    if "dataset" not in df.columns:
        if dataset is None:
            raise InputError(f"{p}: manifest has no 'dataset' column; give the dataset name")
        df = df.with_columns(pl.lit(dataset, dtype=pl.String).alias("dataset"))
    df = df.with_columns(pl.col("dataset").str.strip_chars().replace("", None))
    if dataset is not None:
        df = df.with_columns(pl.col("dataset").fill_null(dataset))
    blank = df.filter(pl.col("dataset").is_null())
    if blank.height:
        raise InputError(f"{p}: blank dataset for {blank.height} row(s): {_rows_named(blank)}; give the dataset name")
    paths: dict[str, list[str]] = {}
    for d, path in df.select("dataset", "path").iter_rows():
        paths.setdefault(d, []).append(path)
    try:
        for d in paths:
            check_name("dataset", d)
        derived = {d: unique_video_ids(ps) for d, ps in paths.items()}
    except IdError as e:
        raise InputError(f"{p}: {e}") from None
    given = (df["video_id"].str.strip_chars().replace("", None).to_list() if "video_id" in df.columns
             else [None] * df.height)
    ids = [v if v is not None else derived[d][path]
           for v, d, path in zip(given, df["dataset"].to_list(), df["path"].to_list())]
    for v, path in zip(ids, df["path"].to_list()):
        try:
            check_name("video_id", v)
        except IdError as e:
            raise InputError(f"{p}: row {path}: {e}") from None
    return df.with_columns(pl.Series("video_id", ids, dtype=pl.String))


def read_manifest(path: str | Path, dataset: str | None = None) -> pl.DataFrame:
    """Read and validate a manifest (parquet, or CSV with ``path,label,split[,...]``).

    Paths are kept as written (surrounding spaces included); labels, splits, datasets, video ids and list
    entries are read without surrounding spaces. Blank lines are skipped. A row without ``video_id`` gets the
    id of its path (:func:`~facepipe.ids.unique_video_ids` over its dataset's paths: ``x.mp4`` and ``x.avi``
    are two videos).

    Args:
        path: the file.
        dataset: dataset name for rows without one (required when the file has no ``dataset`` column).

    Returns:
        A DataFrame in :data:`MANIFEST_SCHEMA`.

    Raises:
        InputError: naming the file: unreadable file, missing columns, a blank path, unknown labels, a blank
            or unknown split (naming the rows), a blank dataset, a dataset name or video id that cannot be part
            of a sample key, duplicate (dataset, video_id), a source that names no video, or a fake whose
            original sits in another split (leakage).
    """
    p = Path(path)
    df = _read_table(p)
    labels = pl.col("label").str.strip_chars().str.to_lowercase()
    df = df.with_columns(
        pl.when(labels.is_in(["0", "real"])).then(0).when(labels.is_in(["1", "fake"])).then(1)
        .otherwise(None).cast(pl.Int8).alias("_label"), labels.alias("_raw"))
    bad = df.filter(pl.col("_label").is_null())
    if bad.height:
        raise InputError(f"{p}: unknown label {bad['_raw'][0]!r} for {_rows_named(bad)} (use 0/1 or real/fake)")
    df = df.with_columns(pl.col("_label").alias("label")).drop("_label", "_raw")
    df = df.with_columns(pl.col("split").str.strip_chars())
    blank = df.filter(pl.col("split").is_null() | (pl.col("split") == ""))
    if blank.height:
        raise InputError(f"{p}: blank split for {blank.height} row(s): {_rows_named(blank)}; every row needs "
                         f"{', '.join(SPLITS)} (the manifest stage assigns leak-free splits)")
    bad = df.filter(~pl.col("split").is_in(list(SPLITS)))
    if bad.height:
        raise InputError(f"{p}: unknown split {bad['split'][0]!r} for {bad.height} row(s): {_rows_named(bad)} "
                         f"(use {', '.join(SPLITS)})")
    df = _with_ids(df, p, dataset)
    if "method" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("method"))
    df = df.with_columns(pl.when(pl.col("method").is_null() & (pl.col("label") == 0)).then(pl.lit("original"))
                         .otherwise(pl.col("method")).alias("method"))
    for col in ("compression", "mask_path", "protocol_note"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    df = df.with_columns(_list_col(df, "source_ids"), _list_col(df, "identity_ids"))
    df = df.select([pl.col(c).cast(t) for c, t in MANIFEST_SCHEMA.items()])
    dup = df.group_by("dataset", "video_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputError(f"{p}: video '{dup['video_id'][0]}' of dataset '{dup['dataset'][0]}' is listed "
                         f"{dup['len'][0]} times")
    df = resolve_sources(df, str(p))
    check_leakage(df, str(p), identities=False)  # identity policy is the manifest stage's decision
    return df


@dataclass
class Leaks:
    """What :func:`find_leaks` found.

    Attributes:
        originals: fakes whose original (a ``source_ids`` entry) sits in another split.
        identities: identities seen in two splits.
        accepted: crossings an adapter marked as a property of the official protocol (``protocol_note``).
    """

    originals: list[str] = field(default_factory=list)
    identities: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)


def find_leaks(df: pl.DataFrame, identities: bool = True, scope: str = "all") -> Leaks:
    """Every fake whose original sits in another split, and (``identities``) every identity seen in two splits.

    Links ``dataset:video_id`` reach other datasets of ``df``; links to datasets not in ``df`` are not
    checkable here. ``scope``: ``all``; ``within`` (links inside one dataset only); ``across`` (only links
    and identities that join two datasets: each dataset's own were checked by its manifest stage under
    its own policy).
    """
    split_of = {(d, v): s for d, v, s in df.select("dataset", "video_id", "split").iter_rows()}
    has_note = "protocol_note" in df.columns
    out = Leaks()
    cols = ["dataset", "video_id", "split", "source_ids"] + (["protocol_note"] if has_note else [])
    for r in df.select(cols).iter_rows(named=True):
        for src in r["source_ids"] or []:
            od, ov = qualify(r["dataset"], src)
            if (scope == "across") == (od == r["dataset"]) and scope != "all":
                continue
            other = split_of.get((od, ov))
            if other is not None and other != r["split"]:
                text = f"{r['dataset']}:{r['video_id']} ({r['split']}) from {od}:{ov} ({other})"
                (out.accepted if has_note and r["protocol_note"] else out.originals).append(text)
    if identities and "identity_ids" in df.columns:
        where: dict[str, set[tuple[str, str]]] = {}
        for d, s, ids in df.select("dataset", "split", "identity_ids").iter_rows():
            for i in ids or []:
                where.setdefault(i, set()).add((d, s))
        for i, places in sorted(where.items()):
            splits = {s for _, s in places}
            if len(splits) < 2:
                continue
            if scope == "across" and len({d for d, _ in places}) < 2:
                continue
            out.identities.append(f"identity {i} in {', '.join(sorted(f'{d}:{s}' for d, s in places))}")
    return out


def check_leakage(df: pl.DataFrame, where: str, identities: bool = True, mode: str = "error",
                  scope: str = "all") -> Leaks:
    """Fail (``mode="error"``) or warn when originals (or, with ``identities``, people) cross splits.

    Crossings an adapter marked with ``protocol_note`` are accepted and reported with their count.

    Returns:
        The :class:`Leaks` found.

    Raises:
        InputError: ``mode="error"`` and leaks exist, naming up to 10 offenders.
    """
    leaks = find_leaks(df, identities, scope)
    bad = leaks.originals + leaks.identities
    if leaks.accepted:
        log.warning("%s: %d fake(s) of the official protocol have their original in another split (accepted, "
                    "see protocol_note), e.g. %s", where, len(leaks.accepted), leaks.accepted[0])
    if bad:
        msg = (f"{where}: originals or identities cross splits (leakage): " + "; ".join(bad[:10])
               + (f"; and {len(bad) - 10} more" if len(bad) > 10 else ""))
        if mode == "error":
            raise InputError(msg)
        log.warning(msg)
    return leaks
