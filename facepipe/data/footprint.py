"""What a model was trained on, and whether a test set overlaps it.

A shard set carries ``videos.parquet`` (named by ``index.json``'s ``videos``): one row per video with its dataset,
``video_id``, split, video label, method, ``source_ids`` (originals, ``dataset:video_id`` for another dataset's)
and ``identity_ids``. Training records a :func:`footprint` of its train and val videos in the checkpoint: salted
hashes, not names, of

- every ``dataset:video_id`` it read,
- every original those videos were made from (with the datasets whose videos name it),
- every person shown (with the datasets showing them).

:func:`overlaps` then lists the test videos that a model has seen in some form, across datasets and shard sets
(DeeperForensics' test reals are FF++ originals; DF40's fakes are made from FF++ and Celeb-DF videos):

``training video``       the same ``dataset:video_id`` was a training video;
``made from training``   one of its originals in another dataset was a training video;
``source of training``   a training video of another dataset was made from it;
``person in training``   a person it shows appears in another dataset's training videos.

Relations inside one dataset other than the first are its manifest's business (its official protocol decides,
e.g. Celeb-DF's test fakes of train originals): they are not reported here.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import polars as pl

from facepipe.data import storage
from facepipe.data.index import read_index
from facepipe.errors import InputError
from facepipe.ids import qualify

VIDEOS_NAME = "videos.parquet"
VIDEO_TABLE_SCHEMA = {"dataset": pl.String, "video_id": pl.String, "split": pl.String, "label": pl.Int8,
                      "method": pl.String, "source_ids": pl.List(pl.String), "identity_ids": pl.List(pl.String),
                      "faces": pl.UInt32}
"""Columns of a shard set's ``videos.parquet``."""

_SALT = "facepipe-footprint-v1:"


def _h(text: str) -> str:
    return hashlib.sha1((_SALT + text).encode()).hexdigest()[:16]


def video_table(rows: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, video_id) of a shard set's per-face rows, in :data:`VIDEO_TABLE_SCHEMA`, sorted."""
    label = "video_label" if "video_label" in rows.columns else "label"
    lists = [(pl.col(c).first() if c in rows.columns else pl.lit([], dtype=pl.List(pl.String))).alias(c)
             for c in ("source_ids", "identity_ids")]
    return (rows.group_by("dataset", "video_id")
            .agg(pl.col("split").first(), pl.col(label).first().alias("label"), pl.col("method").first(),
                 *lists, pl.len().alias("faces"))
            .select([pl.col(c).cast(t) for c, t in VIDEO_TABLE_SCHEMA.items()])
            .sort("dataset", "video_id"))


def _index_url(shards: str | Path) -> tuple[str, str]:
    s = str(shards)
    if storage.is_remote(s):
        base = s[: -len("/index.json")] if s.endswith("/index.json") else s.rstrip("/")
        return storage.join(base, "index.json"), base
    p = Path(s)
    return (str(p / "index.json"), str(p)) if p.is_dir() else (str(p), str(p.parent))


def read_video_table(shards: str | Path) -> pl.DataFrame | None:
    """The ``videos.parquet`` of a shard set (folder, ``index.json`` or ``s3://`` prefix); ``None`` for a set
    written before it existed.

    Raises:
        InputError: no index or not a shard index (:class:`~facepipe.errors.ShardIndexError`), or an index
            naming a video table that cannot be read.
    """
    url, base = _index_url(shards)
    name = read_index(url).get("videos")
    if not name:
        return None
    target = storage.join(base, name) if storage.is_remote(base) else str(Path(base) / name)
    try:
        if storage.is_remote(target):
            with storage.open_read(target) as f:
                return pl.read_parquet(io.BytesIO(f.read()))
        return pl.read_parquet(target)
    except Exception as e:  # noqa: BLE001  polars and fsspec raise several error types
        raise InputError(f"{target}: video table of {url} not readable ({e})") from None


def footprint(videos: pl.DataFrame, splits: tuple[str, ...] = ("train", "val")) -> dict:
    """The hashed footprint of the videos of ``splits`` (see the module docstring); JSON-able.

    Returns:
        ``{"videos": [h], "sources": {h: [datasets]}, "identities": {h: [datasets]}, "datasets": [names],
        "n_videos": n}``.
    """
    seen = videos.filter(pl.col("split").is_in(list(splits)))
    vids, sources, people = set(), {}, {}
    for ds, vid, srcs, ids in seen.select("dataset", "video_id", "source_ids", "identity_ids").iter_rows():
        vids.add(_h(f"{ds}:{vid}"))
        for s in srcs or []:
            sources.setdefault(_h(":".join(qualify(ds, s))), set()).add(ds)
        for i in ids or []:
            people.setdefault(_h(i), set()).add(ds)
    return {"videos": sorted(vids), "sources": {k: sorted(v) for k, v in sorted(sources.items())},
            "identities": {k: sorted(v) for k, v in sorted(people.items())},
            "datasets": sorted(set(seen["dataset"].to_list())), "n_videos": seen.height}


def overlaps(fp: dict, videos: pl.DataFrame) -> pl.DataFrame:
    """Videos of ``videos`` that the footprint ``fp`` has seen, one row per video with its first reason.

    Returns:
        Columns ``dataset, video_id, label, reason`` (empty when nothing overlaps).
    """
    own, sources, people = set(fp.get("videos", ())), fp.get("sources", {}), fp.get("identities", {})
    out = []
    for ds, vid, label, srcs, ids in videos.select("dataset", "video_id", "label", "source_ids",
                                                   "identity_ids").iter_rows():
        reason = None
        if _h(f"{ds}:{vid}") in own:
            reason = "training video"
        if reason is None:
            for s in srcs or []:
                ref = qualify(ds, s)
                if ref[0] != ds and _h(":".join(ref)) in own:
                    reason = f"made from training video {ref[0]}:{ref[1]}"
                    break
        if reason is None and any(d != ds for d in sources.get(_h(f"{ds}:{vid}"), ())):
            reason = f"source of training videos of {', '.join(d for d in sources[_h(f'{ds}:{vid}')] if d != ds)}"
        if reason is None:
            for i in ids or []:
                other = [d for d in people.get(_h(i), ()) if d != ds]
                if other:
                    reason = f"person {i} in training videos of {', '.join(other)}"
                    break
        if reason is not None:
            out.append((ds, vid, label, reason))
    return pl.DataFrame(out, schema={"dataset": pl.String, "video_id": pl.String, "label": pl.Int8,
                                     "reason": pl.String}, orient="row")


def describe(found: pl.DataFrame, n: int = 3) -> str:
    """``"12 test videos (4 real, 8 fake) overlap the training data: ffpp-c23-001 (person yt001 in ...), ..."``."""
    real = int((found["label"] == 0).sum())
    ex = "; ".join(f"{d}:{v} ({r})" for d, v, r in found.select("dataset", "video_id", "reason").head(n).iter_rows())
    return (f"{found.height} test video(s) ({real} real, {found.height - real} fake) overlap the checkpoint's "
            f"training data, e.g. {ex}")


__all__ = ["VIDEOS_NAME", "VIDEO_TABLE_SCHEMA", "describe", "footprint", "overlaps", "read_video_table",
           "video_table"]
