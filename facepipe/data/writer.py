"""The ``shard`` stage: extract (+ freq) outputs of one or more datasets -> WebDataset tar shards per split.

Layout of ``OUT``::

    train-000000.tar ...   val-000000.tar ...   test-000000.tar ...
    index.json             every shard with its samples, bytes, and counts by dataset, label, method
                           and by (dataset, label) cell ("ffpp:fake")
    _meta.json             schema version, facepipe version, the parameters and inputs that made them
    stats.json, counts.csv samples, videos, fake share and bytes per sample per split (DVC metrics) and
                           samples per split/dataset/label (DVC plot data)

Deterministic: the same inputs and parameters give byte-identical tars (samples sorted by key, then
shuffled with the seed; tar members with mtime 0, fixed owner and mode), so DVC's cache works. The
new set is written to a staging folder and moved into place only when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe import __version__
from facepipe.config import ShardConfig, ShardInput
from facepipe.data.schema import LABEL_NAMES, SCHEMA_VERSION, SPLITS, encode_sample, sample_key
from facepipe.errors import InputError
from facepipe.manifest import check_leakage, read_manifest

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
META_NAME = "_meta.json"
STATS_NAME = "stats.json"
COUNTS_NAME = "counts.csv"


def collect_samples(inp: ShardInput, views: tuple[str, ...] | None) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Join one dataset's faces with its manifest (and stored views).

    Returns:
        (one row per face with label, split, method, source ids, crop path and npz member; the views
        that will be stored).

    Raises:
        InputError: missing tables, faces of videos the manifest does not list, or views asked for
            that the freq output lacks.
    """
    ex = Path(inp.extract)
    fp = ex / "faces.parquet"
    if not fp.is_file():
        raise InputError(f"{fp}: not found (run 'facepipe extract' first)")
    faces = pl.read_parquet(fp)
    man = read_manifest(inp.manifest, dataset=inp.dataset).filter(pl.col("dataset") == inp.dataset)
    rows = faces.join(man.drop("path"), on="video_id", how="left")
    unlabelled = rows.filter(pl.col("label").is_null())["video_id"].unique().sort().to_list()
    if unlabelled:
        raise InputError(f"{inp.manifest}: no manifest row for {len(unlabelled)} extracted video(s) of "
                         f"'{inp.dataset}', e.g. {unlabelled[:3]}")
    rows = rows.with_columns(pl.lit(str(ex.resolve())).alias("_root"))
    stored: tuple[str, ...] = ()
    if inp.freq:
        vp = Path(inp.freq) / "views.parquet"
        if not vp.is_file():
            raise InputError(f"{vp}: not found (run 'facepipe freq' first)")
        vt = pl.read_parquet(vp)
        have = set(vt["views"][0]) if vt.height else set()
        want = tuple(sorted(have)) if views is None else views
        lacking = [v for v in want if v not in have]
        if lacking:
            raise InputError(f"{vp}: views {lacking} asked for but the freq stage stored {sorted(have)}")
        stored = want
        rows = rows.join(vt.select("video_id", "frame_index", "track_id", "npz", "member"),
                         on=["video_id", "frame_index", "track_id"], how="left")
        missing = rows.filter(pl.col("npz").is_null())
        if missing.height and stored:
            raise InputError(f"{vp}: no views for {missing.height} crop(s), e.g. {missing['crop_path'][0]}; "
                             "rerun 'facepipe freq'")
        rows = rows.with_columns(pl.lit(str(Path(inp.freq).resolve())).alias("_freq"))
    elif views:
        raise InputError(f"dataset '{inp.dataset}': views {list(views)} asked for but no freq output given")
    rows = rows.with_columns(pl.lit(inp.dataset).alias("dataset"))
    return rows, stored


@dataclass
class ShardSummary:
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0


def run_shard(out_dir: str | Path, cfg: ShardConfig, progress: bool = True) -> ShardSummary:
    """Write the shard set for ``cfg.inputs`` into ``out_dir`` (replacing an earlier set there).

    Raises:
        InputError: no inputs, bad inputs (see :func:`collect_samples`), duplicate datasets, a video in
            two splits, or no face at all.
    """
    import webdataset as wds

    t0 = time.perf_counter()
    if not cfg.inputs:
        raise InputError("shard: no inputs (give at least one dataset=NAME,extract=DIR,manifest=FILE)")
    names = [i.dataset for i in cfg.inputs]
    if len(set(names)) != len(names):
        raise InputError(f"shard: dataset names must be unique, got {names}")
    parts, stored_sets = [], []
    for inp in cfg.inputs:
        rows, stored = collect_samples(inp, cfg.views)
        parts.append(rows)
        stored_sets.append(stored)
    if len(set(stored_sets)) > 1:
        raise InputError(f"shard: datasets store different views {dict(zip(names, stored_sets))}; "
                         "pick common ones with shard.views")
    stored = stored_sets[0]
    allrows = pl.concat(parts, how="diagonal_relaxed")
    if allrows.height == 0:
        raise InputError("shard: the inputs hold no faces")
    check_leakage(allrows.unique(["dataset", "video_id"]).select("dataset", "video_id", "split", "source_ids"),
                  "shard inputs")
    allrows = allrows.with_columns(
        pl.struct("dataset", "video_id", "frame_index", "track_id")
        .map_elements(lambda r: sample_key(r["dataset"], r["video_id"], r["frame_index"], r["track_id"]),
                      return_dtype=pl.String).alias("key")).sort("key")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    index = {"schema_version": SCHEMA_VERSION, "total": 0, "views": list(stored), "splits": {}}
    summary = ShardSummary()
    # Open npz files are cached for this run only: a later freq run may rewrite them under the same names.
    npz = lru_cache(maxsize=64)(lambda path: np.load(path, allow_pickle=False))
    bar = tqdm(total=allrows.height, unit="sample", desc="shard", disable=not progress)
    for s_i, split in enumerate(SPLITS):
        rows = allrows.filter(pl.col("split") == split)
        shards: list[dict] = []
        if rows.height:
            order = np.random.default_rng([cfg.seed, s_i]).permutation(rows.height)
            rows = rows[order.tolist()]
            stats: dict[str, dict] = {}
            with wds.ShardWriter(str(stage / f"{split}-%06d.tar"), maxcount=cfg.max_samples,
                                 maxsize=cfg.max_bytes, verbose=0, mtime=0, user="facepipe",
                                 group="facepipe", mode=0o444) as sink:
                for r in rows.iter_rows(named=True):
                    sink.write(_sample(r, stored, npz))
                    st = stats.setdefault(sink.fname, {"samples": 0, "datasets": Counter(), "labels": Counter(),
                                                       "methods": Counter(), "cells": Counter()})
                    st["samples"] += 1
                    st["datasets"][r["dataset"]] += 1
                    st["labels"][LABEL_NAMES[r["label"]]] += 1
                    st["methods"][r["method"] or "unknown"] += 1
                    st["cells"][f"{r['dataset']}:{LABEL_NAMES[r['label']]}"] += 1
                    bar.update(1)
            for fname, st in stats.items():
                shards.append({"url": Path(fname).name, "samples": st["samples"],
                               "bytes": Path(fname).stat().st_size,
                               **{k: dict(sorted(st[k].items())) for k in ("datasets", "labels", "methods", "cells")}})
        index["splits"][split] = {"samples": rows.height, "shards": shards}
        index["total"] += rows.height
        summary.samples[split] = rows.height
        summary.shards[split] = len(shards)
        summary.bytes += sum(s["bytes"] for s in shards)
    bar.close()
    npz.cache_clear()
    meta = {"schema_version": SCHEMA_VERSION, "facepipe_version": __version__, "params": cfg.model_dump(),
            "views": list(stored)}
    (stage / INDEX_NAME).write_text(json.dumps(index, indent=1, sort_keys=True))
    (stage / META_NAME).write_text(json.dumps(meta, indent=1, sort_keys=True))
    _write_stats(stage, index, allrows)
    # Swap the complete new set in.
    for old in list(out.glob("*.tar")) + [out / n for n in (INDEX_NAME, META_NAME, STATS_NAME, COUNTS_NAME)]:
        if old.exists():
            old.unlink()
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
    stage.rmdir()
    summary.seconds = time.perf_counter() - t0
    return summary


def _write_stats(folder: Path, index: dict, rows: pl.DataFrame) -> None:
    """``stats.json`` (DVC metrics: samples, videos, fake share, bytes per sample, per split) and
    ``counts.csv`` (DVC plot data: samples per split, dataset and label)."""
    stats: dict = {"samples": index["total"], "splits": {}}
    for split, info in index["splits"].items():
        r = rows.filter(pl.col("split") == split)
        n = info["samples"]
        stats["splits"][split] = {
            "samples": n,
            "videos": r.select("dataset", "video_id").unique().height,
            "fake_share": round(float((r["label"] == 1).mean()), 4) if n else 0.0,
            "bytes_per_sample": round(sum(s["bytes"] for s in info["shards"]) / n) if n else 0,
        }
    (folder / STATS_NAME).write_text(json.dumps(stats, indent=1, sort_keys=True))
    counts = (rows.with_columns(pl.col("label").replace_strict(LABEL_NAMES, return_dtype=pl.String).alias("label"))
              .group_by("split", "dataset", "label").len().rename({"len": "samples"})
              .with_columns(pl.concat_str("split", "dataset", "label", separator="/").alias("group"))
              .sort("split", "dataset", "label"))
    counts.select("group", "split", "dataset", "label", "samples").write_csv(folder / COUNTS_NAME)


def _sample(r: dict, views: tuple[str, ...], npz) -> dict:
    crop = Path(r["_root"]) / r["crop_path"]
    try:
        image = crop.read_bytes()
    except OSError as e:
        raise InputError(f"{crop}: cannot read crop: {e.strerror}") from None
    arrays = {}
    if views:
        z = npz(str(Path(r["_freq"]) / r["npz"]))
        for v in views:
            arrays[v] = z[f"{r['member']}/{v}"]
    meta = {
        "label": int(r["label"]), "label_name": LABEL_NAMES[int(r["label"])], "dataset": r["dataset"],
        "method": r["method"], "split": r["split"], "video_id": r["video_id"],
        "source_ids": list(r["source_ids"] or []), "frame_index": int(r["frame_index"]),
        "timestamp_s": float(r["timestamp_s"]), "track_id": int(r["track_id"]), "box": list(r["box"]),
        "landmarks": [list(p) for p in r["landmarks"]], "affine": [list(p) for p in r["affine"]],
        "crop_size": int(r["crop_size"]), "crop_mode": r["crop_mode"], "detector": r["detector"],
        "detector_version": r["detector_version"],
    }
    ext = crop.suffix.lstrip(".").lower()
    return encode_sample(r["key"], image, "jpg" if ext == "jpeg" else ext, meta, arrays)
