"""The manifest: one row per labelled video, the link between a dataset's labels/splits and extract outputs.

Columns (``MANIFEST_SCHEMA``): ``dataset``, ``video_id`` (as :func:`facepipe.extract.video_id_for`
derives it from ``path``), ``path`` (relative to the dataset's video folder), ``label`` (0 real, 1 fake),
``method`` (manipulation method; ``original`` for real videos), ``split`` (train/val/test),
``source_ids`` (video ids of the original(s) a fake was made from), ``compression``,
``identity_ids`` (people shown, where known) and ``mask_path`` (manipulation mask video, FF++).

:func:`read_manifest` reads a parquet file in that schema or a CSV with at least ``path,label``
(``label`` 0/1 or real/fake; optional ``split``, ``method``, ``source_ids`` separated by ``;``,
``dataset``, ``video_id``, ``compression``, ``identity_ids``).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from facepipe.data.schema import SPLITS, check_name
from facepipe.errors import InputError

MANIFEST_SCHEMA = {
    "dataset": pl.String, "video_id": pl.String, "path": pl.String, "label": pl.Int8, "method": pl.String,
    "split": pl.String, "source_ids": pl.List(pl.String), "compression": pl.String,
    "identity_ids": pl.List(pl.String), "mask_path": pl.String,
}


def _list_col(df: pl.DataFrame, name: str) -> pl.Expr:
    if name not in df.columns:
        return pl.lit([], dtype=pl.List(pl.String)).alias(name)
    if df.schema[name] == pl.List(pl.String):
        return pl.col(name)
    return (pl.col(name).cast(pl.String).fill_null("").str.split(";")
            .list.eval(pl.element().str.strip_chars().filter(pl.element() != "")).alias(name))


def read_manifest(path: str | Path, dataset: str | None = None) -> pl.DataFrame:
    """Read and validate a manifest (parquet, or CSV with ``path,label[,...]``).

    Args:
        path: the file.
        dataset: dataset name for rows without one (required when the file has no ``dataset`` column).

    Returns:
        A DataFrame in :data:`MANIFEST_SCHEMA`.

    Raises:
        InputError: unreadable file, missing columns, unknown labels or splits, duplicate
            (dataset, video_id), or a fake whose listed original sits in another split (leakage).
    """
    from facepipe.extract import video_id_for

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: manifest not found")
    try:
        df = pl.read_parquet(p) if p.suffix == ".parquet" else pl.read_csv(p, infer_schema=False)
    except Exception as e:  # polars raises several error types for unreadable files
        raise InputError(f"{p}: cannot read manifest: {e}") from None
    for col in ("path", "label"):
        if col not in df.columns:
            raise InputError(f"{p}: manifest lacks column '{col}' (columns: {df.columns})")
    if "dataset" not in df.columns:
        if dataset is None:
            raise InputError(f"{p}: manifest has no 'dataset' column; give the dataset name")
        df = df.with_columns(pl.lit(dataset).alias("dataset"))
    elif dataset is not None:
        df = df.with_columns(pl.col("dataset").fill_null(dataset))
    labels = pl.col("label").cast(pl.String).str.to_lowercase()
    df = df.with_columns(
        pl.when(labels.is_in(["0", "real"])).then(0).when(labels.is_in(["1", "fake"])).then(1)
        .otherwise(None).cast(pl.Int8).alias("_label"), labels.alias("_raw"))
    bad = df.filter(pl.col("_label").is_null())
    if bad.height:
        raise InputError(f"{p}: unknown label {bad['_raw'][0]!r} for {bad['path'][0]} (use 0/1 or real/fake)")
    df = df.with_columns(pl.col("_label").alias("label")).drop("_label", "_raw")
    if "video_id" not in df.columns:
        df = df.with_columns(pl.col("path").map_elements(video_id_for, return_dtype=pl.String).alias("video_id"))
    if "split" not in df.columns:
        raise InputError(f"{p}: manifest lacks column 'split' (train/val/test)")
    bad = df.filter(~pl.col("split").is_in(list(SPLITS)))
    if bad.height:
        raise InputError(f"{p}: unknown split {bad['split'][0]!r} for {bad['path'][0]} (use {', '.join(SPLITS)})")
    if "method" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("method"))
    df = df.with_columns(pl.when(pl.col("method").is_null() & (pl.col("label") == 0)).then(pl.lit("original"))
                         .otherwise(pl.col("method")).alias("method"))
    for col in ("compression", "mask_path"):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype=pl.String).alias(col))
    df = df.with_columns(_list_col(df, "source_ids"), _list_col(df, "identity_ids"))
    df = df.select([pl.col(c).cast(t) for c, t in MANIFEST_SCHEMA.items()])
    for name in df["dataset"].unique().to_list():
        check_name("dataset", name)
    dup = df.group_by("dataset", "video_id").len().filter(pl.col("len") > 1)
    if dup.height:
        raise InputError(f"{p}: video '{dup['video_id'][0]}' of dataset '{dup['dataset'][0]}' is listed "
                         f"{dup['len'][0]} times")
    check_leakage(df, str(p), identities=False)  # identity policy is the manifest stage's decision
    return df


def find_leaks(df: pl.DataFrame, identities: bool = True) -> list[str]:
    """Describe every fake whose original sits in another split, and every identity seen in two splits."""
    split_of = {(d, v): s for d, v, s in df.select("dataset", "video_id", "split").iter_rows()}
    bad = []
    for d, v, s, srcs in df.select("dataset", "video_id", "split", "source_ids").iter_rows():
        for src in srcs or []:
            other = split_of.get((d, src))
            if other is not None and other != s:
                bad.append(f"{v} ({s}) from {src} ({other})")
    if identities and "identity_ids" in df.columns:
        where: dict[tuple[str, str], set[str]] = {}
        for d, s, ids in df.select("dataset", "split", "identity_ids").iter_rows():
            for i in ids or []:
                where.setdefault((d, i), set()).add(s)
        bad += [f"identity {i} in {', '.join(sorted(ss))}" for (_, i), ss in sorted(where.items()) if len(ss) > 1]
    return bad


def check_leakage(df: pl.DataFrame, where: str, identities: bool = True, mode: str = "error") -> list[str]:
    """Fail (``mode="error"``) or warn when originals or identities cross splits.

    Returns:
        The offenders (empty when clean).

    Raises:
        InputError: ``mode="error"`` and leaks exist, naming up to 10 offenders.
    """
    import logging

    bad = find_leaks(df, identities)
    if bad:
        msg = (f"{where}: originals or identities cross splits (leakage): " + "; ".join(bad[:10])
               + (f"; and {len(bad) - 10} more" if len(bad) > 10 else ""))
        if mode == "error":
            raise InputError(msg)
        logging.getLogger(__name__).warning(msg)
    return bad
