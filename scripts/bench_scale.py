#!/usr/bin/env python
"""Scale benchmark of facepipe's table paths on synthetic datasets of n videos (issue 26 item 3).

Usage: python scripts/bench_scale.py --sizes 1000,10000,100000 [--out DIR] [--work DIR] [--faces 32]
                                     [--tar-max 10000] [--ci 1000] [--stages manifest,leakage,...]
                                     [--max-stage-seconds 1200] [--timeout 2400] [--keep] [--profile]

Per size n it generates (untimed) a realistic mix over three datasets (shares 50/30/20 %): originals with 1-5 fakes
each, fakes naming their target original first and, for face-swap methods, the original of a paired person as face
donor; people with one or two originals, shared with every fake made from them; ``--faces`` faces per video. On disk:
per dataset a CSV input (``path,label,method,source_ids,identity_ids``, no split) with empty video files, a
leak-free ``manifest.parquet`` (splits by person pair), an extract output with the per-video part files
(``_parts/<video_id>.json`` + ``.parquet`` in the real ``VIDEO_SCHEMA`` / ``FACE_SCHEMA``) and its consolidated
tables; at n <= ``--tar-max`` tiny PNG crops (hard links to a pool of 64 ``--crop-size`` PNGs); a predictions table
(one row per face, every split) and a synthetic ``index.json`` shaped as the shard stage writes it.

Each stage then runs in a fresh subprocess calling facepipe's own code, timed after its imports and setup; peak
memory is the process's high-water RSS during the timed part (``/proc/self/clear_refs`` resets it first), and
"delta" is that peak minus the RSS when timing began:

  manifest      the manifest stage (``facepipe.stages.manifest.run`` with adapter ``csv``, ``split_mode: group``):
                CSV scan, file checks, components + StratifiedGroupKFold group split, leakage checks, parquet write
  leakage       ``read_manifest`` of every manifest (source resolution, original leakage) + ``check_leakage`` of
                all of them with identities, within and across datasets (as shard does)
  consolidate   extract's ``consolidate(out, jobs)`` of every dataset from its part files
  shard         ``facepipe.stages.shard.run`` writing real tars (n <= --tar-max only)
  shard-tables  shard's table part without tars: ``_gather`` (streamed reads + checks + joins + leakage + the key
                order), each split's cells shuffled as ``_write_splits`` does and every row gathered in write order
                as ``_write_group`` reads it (``Samples.rows_at``, no sample encoded), ``_video_table``,
                ``_describe``, ``_write_stats``, ``_inputs_hash`` (every n)
  loader        ``read_index`` + ``resolve_shards`` of every split + ``make_loader`` construction (plain and
                ``class_balance``) on the synthetic index (every n; nothing iterated). Read-only stages that take
                under 0.2 s are run again, up to ~1 s, and their median run reported (``runs`` in the result)
  loader-real   ``make_loader`` on the real set written by ``shard`` + 4 batches iterated (n <= --tar-max)
  evaluate      ``metric_table`` with ``--ci`` bootstrap resamples, ``video_scores``, ``roc_points``, and the training
                footprint + overlap check on the predictions table (one row per face)

Printed and written to ``OUT/bench_scale.json`` and ``OUT/bench_scale.md``: seconds, peak and delta MB per stage and
n, sub-timings of the main functions (inclusive), and the growth exponents log(t2/t1)/log(n2/n1) between the two
largest sizes measured. A stage whose extrapolation (from the largest size measured, exponent >= 1) exceeds
``--max-stage-seconds`` is skipped and its extrapolated time reported. ``--profile`` adds cProfile listings
(``OUT/profile/``; the times measured under it are inflated).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASETS = (("dsa", 0.5, ("deepfakes", "faceswap", "face2face", "neuraltextures", "faceshifter")),
            ("dsb", 0.3, ("swap", "reenact", "lipsync")),
            ("dsc", 0.2, ("simswap", "inswap", "uniface", "e4s")))
"""(name, share of the videos, fake methods)."""
SWAP_METHODS = {"deepfakes", "faceswap", "faceshifter", "swap", "simswap", "inswap", "uniface", "e4s"}
"""Methods whose fakes name a face donor (a second original) after their target."""
STAGES = ("manifest", "leakage", "consolidate", "shard", "shard-tables", "loader", "loader-real", "evaluate")
TAR_STAGES = ("shard", "loader-real")
REPEATABLE = ("leakage", "loader", "loader-real")
"""Stages that only read: when one run takes under :data:`SHORT_S` it is run again (at most 50 runs, ~1 s in all)
and the median run is reported, so a 10 ms stage's exponent is not the timer's noise."""
SHORT_S = 0.2
SPLIT_SHARES = (0.8, 0.1, 0.1)
MAX_SAMPLES = 2000  # ShardConfig.max_samples' default: the synthetic index's shard size
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------------------------------- data


def paths(work: Path, n: int) -> dict:
    """Where the generated data of size ``n`` lives."""
    base = work / f"n{n}"
    return {"base": base, "marker": base / "generated.json", "predictions": base / "predictions.parquet",
            "videos": base / "video_table.parquet", "index": base / "index-synth", "shards": base / "shards",
            "stage_out": base / "stage-out", "pool": base / "crop-pool",
            **{f"root:{d}": base / f"videos-{d}" for d, _, _ in DATASETS},
            **{f"manifest:{d}": base / f"manifest-{d}.parquet" for d, _, _ in DATASETS},
            **{f"extract:{d}": base / f"extract-{d}" for d, _, _ in DATASETS}}


def dataset_sizes(n: int) -> list[int]:
    """Videos per dataset (the shares of :data:`DATASETS`, summing to ``n``)."""
    sizes = [int(round(n * share)) for _, share, _ in DATASETS]
    sizes[0] += n - sum(sizes)
    return sizes


def gen_videos(ds: str, n_ds: int, methods: tuple[str, ...], rng: np.random.Generator):
    """``n_ds`` manifest rows of one dataset: originals with 1-5 fakes each, people with 1-2 originals, paired people
    (face donors of each other's swaps); split by person pair (leak-free). Columns: path, video_id, label, method,
    split, sources (paths), source_ids, identity_ids."""
    import polars as pl

    from facepipe.ids import SPLITS, video_id_for

    k = rng.integers(1, 6, size=n_ds)
    total = np.cumsum(1 + k)
    m = int(np.searchsorted(total, n_ds)) + 1
    k = k[:m].copy()
    k[-1] -= int(total[m - 1] - n_ds)
    person = np.repeat(np.arange(m), rng.choice([1, 2], p=[0.7, 0.3], size=m))[:m]
    n_people = int(person[-1]) + 1
    first_of = np.searchsorted(person, np.arange(n_people + 1))
    partner = person ^ 1
    donor_of = np.where(partner < n_people, first_of[np.minimum(partner, n_people)], -1)
    split_of_pair = rng.choice(len(SPLITS), p=SPLIT_SHARES, size=n_people // 2 + 1)
    tgt = np.repeat(np.arange(m), k)
    within = np.arange(len(tgt)) - np.repeat(np.cumsum(k) - k, k)
    meth = np.array(methods)[(tgt + within) % len(methods)]
    swap = np.isin(meth, list(SWAP_METHODS))
    donor = np.where(swap, donor_of[tgt], -1)
    orig_paths = [f"real/o{i:07d}.mp4" for i in range(m)]
    fake_paths = [f"fake/{mt}/f{i:07d}.mp4" for i, mt in enumerate(meth.tolist())]
    ids = {p: video_id_for(p) for p in orig_paths + fake_paths}
    people = [f"{ds}-p{p:07d}" for p in range(n_people)]
    rows = {
        "path": orig_paths + fake_paths,
        "label": [0] * m + [1] * len(tgt),
        "method": ["original"] * m + meth.tolist(),
        "split": [SPLITS[s] for s in split_of_pair[np.concatenate([person, person[tgt]]) // 2]],
        "sources": [[] for _ in range(m)] + [[orig_paths[t]] + ([orig_paths[d]] if d >= 0 else [])
                                             for t, d in zip(tgt.tolist(), donor.tolist())],
        "identity_ids": [[people[p]] for p in person.tolist()]
        + [[people[person[t]]] + ([people[person[d]]] if d >= 0 else []) for t, d in zip(tgt.tolist(), donor.tolist())],
    }
    df = pl.DataFrame(rows, schema_overrides={"label": pl.Int8})
    return df.with_columns(pl.col("path").replace_strict(ids).alias("video_id"),
                           pl.col("sources").list.eval(pl.element().replace_strict(ids)).alias("source_ids"))


def write_inputs(ds: str, videos, root: Path, manifest: Path) -> None:
    """The CSV input of the manifest stage (no split: grouped) with an empty file per video, and the leak-free
    manifest the later stages read (``MANIFEST_SCHEMA``)."""
    import polars as pl

    from facepipe.manifest import MANIFEST_SCHEMA

    root.mkdir(parents=True, exist_ok=True)
    for d in {str(Path(p).parent) for p in videos["path"].to_list()}:
        (root / d).mkdir(parents=True, exist_ok=True)
    for p in videos["path"].to_list():
        (root / p).touch()
    videos.select("path", "label", "method", pl.col("sources").list.join(";").alias("source_ids"),
                  pl.col("identity_ids").list.join(";")).write_csv(root / "manifest.csv")
    man = videos.with_columns(pl.lit(ds).alias("dataset"), pl.lit("c23").alias("compression"),
                              pl.lit(None, dtype=pl.String).alias("mask_path"),
                              pl.lit(None, dtype=pl.String).alias("protocol_note"))
    man.select([pl.col(c).cast(t) for c, t in MANIFEST_SCHEMA.items()]).sort("video_id").write_parquet(manifest)


def gen_faces(videos, faces: int, crop_size: int, rng: np.random.Generator):
    """``faces`` face rows per video in extract's ``FACE_SCHEMA`` (one track, every 8th frame; fakes' faces mostly
    fake, 5 % uncertain, 5 % real bystanders)."""
    import polars as pl

    from facepipe.stages.extract.tables import FACE_SCHEMA

    n_v = videos.height
    n = n_v * faces
    per = np.repeat(np.arange(n_v), faces)
    vlab = videos["label"].to_numpy()[per]
    u = rng.random(n)
    label = np.where(vlab == 1, np.where(u < 0.05, -1, np.where(u < 0.10, 0, 1)), 0).astype(np.int8)
    x = rng.uniform(100, 900, n).astype(np.float32)
    y = rng.uniform(50, 400, n).astype(np.float32)
    side = rng.uniform(80, 300, n).astype(np.float32)
    frame = np.tile(np.arange(faces, dtype=np.int64) * 8, n_v)
    df = pl.DataFrame({
        "video_id": videos["video_id"].gather(per), "frame_index": frame, "timestamp_s": frame / 25.0,
        "track_id": np.zeros(n, np.int32), "box": np.stack([x, y, x + side, y + side], 1),
        "landmarks": rng.uniform(0, 1000, (n, 5, 2)).astype(np.float32),
        "score": rng.uniform(0.9, 1.0, n).astype(np.float32), "face_size_px": side,
        "affine": rng.normal(size=(n, 2, 3)), "label": label, "video_label": vlab.astype(np.int8),
        "manipulation_score": np.where(vlab == 1, rng.random(n), np.nan).astype(np.float32),
    })
    src = (pl.when(pl.col("video_label") == 0).then(pl.lit("video"))
           .when(pl.col("label") == -1).then(pl.lit("original_diff_uncertain")).otherwise(pl.lit("original_diff")))
    crop = pl.concat_str([pl.lit("faces/"), pl.col("video_id"), pl.lit("/"),
                          pl.col("frame_index").cast(pl.String).str.zfill(6), pl.lit("_0.png")])
    df = df.with_columns(src.alias("label_source"), crop.alias("crop_path"), pl.lit("align").alias("crop_mode"),
                         pl.lit(crop_size).alias("crop_size"), pl.lit("scrfd").alias("detector"),
                         pl.lit("scrfd_10g_bnkps").alias("detector_version"), pl.lit(False).alias("gap"),
                         pl.col("manipulation_score").fill_nan(None))
    return df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c) for c, t in FACE_SCHEMA.items()])


def video_rows(videos, faces):
    """One ``VIDEO_SCHEMA`` row per video (status ok, counts from its faces)."""
    import polars as pl

    from facepipe.stages.extract.tables import VIDEO_SCHEMA

    counts = faces.group_by("video_id").agg(pl.len().alias("n_faces"), (pl.col("label") == 1).sum().alias("n_faces_fake"),
                                            (pl.col("label") == 0).sum().alias("n_faces_real"))
    df = videos.join(counts, on="video_id", how="left").with_columns(
        pl.lit("ok").alias("status"), pl.lit(25.0).alias("fps"), pl.lit(300).alias("frames_header"),
        pl.lit(300).alias("frames_decoded"), pl.col("n_faces").alias("frames_sampled"), pl.lit(1280).alias("width"),
        pl.lit(720).alias("height"), pl.lit(0).alias("rotation"), pl.lit(12.0).alias("duration_s"),
        pl.lit("h264").alias("codec"), pl.lit(1).alias("n_tracks"), pl.lit(0).alias("n_tracks_dropped"),
        pl.lit(0).alias("n_faces_dropped"), pl.col("label").alias("video_label"),
        pl.when(pl.col("label") == 1).then(pl.lit("original_diff")).otherwise(pl.lit("video")).alias("label_source"),
        pl.col("source_ids").list.first().alias("original_id"), pl.lit(1.5).alias("background_diff"),
        (pl.col("video_id").hash(1) % 1_000_000 + 2_000_000).cast(pl.Int64).alias("file_size"),  # not by label
        pl.lit(1_700_000_000_000_000_000).alias("file_mtime_ns"), pl.lit("bench").alias("item_key"),
        pl.lit("scrfd").alias("detector"))
    return df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
                      for c, t in VIDEO_SCHEMA.items()])


def write_extract(ex: Path, faces, vrows, pool: list[Path] | None, desc: str) -> None:
    """Per-video part files, the consolidated tables (as consolidate writes them) and, with ``pool``, crops as hard
    links to the pool's PNGs."""
    from tqdm import tqdm

    from facepipe import __version__
    from facepipe.stages.extract.config import STAGE_VERSION

    parts = ex / "_parts"
    parts.mkdir(parents=True, exist_ok=True)
    by_video = {r["video_id"]: r for r in vrows.to_dicts()}
    groups = faces.partition_by("video_id", as_dict=True, maintain_order=True)
    k = 0
    for (vid,), part in tqdm(groups.items(), desc=desc, unit="video", leave=False):
        part.write_parquet(parts / f"{vid}.parquet")
        (parts / f"{vid}.json").write_text(json.dumps({**by_video[vid], "_seconds": 1.0, "_version": __version__}))
        if pool is not None:
            (ex / "faces" / vid).mkdir(parents=True, exist_ok=True)
            for c in part["crop_path"].to_list():
                os.link(pool[k % len(pool)], ex / c)
                k += 1
    meta = {"facepipe_version": __version__, "stage_version": str(STAGE_VERSION)}
    vrows.sort("video_id").write_parquet(ex / "videos.parquet", metadata=meta)
    faces.sort(["video_id", "frame_index", "track_id", "clip_id"], nulls_last=False).write_parquet(
        ex / "faces.parquet", metadata=meta)


def crop_pool(folder: Path, size: int, k: int = 64) -> list[Path]:
    """``k`` distinct ``size`` x ``size`` noise PNGs to hard-link crops to (ext4 allows 65000 links per file)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(k):
        p = folder / f"{i}.png"
        cv2.imwrite(str(p), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        out.append(p)
    return out


def synthetic_index(folder: Path, slim) -> None:
    """An ``index.json`` shaped as the shard stage writes it (``layout: cells``, ``max_samples`` per shard) for the
    faces of ``slim``; its tars do not exist."""
    import polars as pl

    from facepipe.data.schema import SCHEMA_VERSION
    from facepipe.ids import FACE_LABEL_NAMES, SPLITS

    version = "set-synthetic"
    index = {"schema_version": SCHEMA_VERSION, "version": version, "total": slim.height, "views": [], "masks": True,
             "splits": {}, "sample_kind": "frame", "view_params": None, "crop_size": 16, "image_format": "png",
             "preset": None, "crop_landmarks": None, "extract": {}}
    cells = slim.group_by("split", "dataset", "label").len().sort("split", "dataset", "label")
    for split in SPLITS:
        shards = []
        for _, d, lab, count in cells.filter(pl.col("split") == split).iter_rows():
            name = FACE_LABEL_NAMES[lab]
            for i, start in enumerate(range(0, count, MAX_SAMPLES)):
                c = min(MAX_SAMPLES, count - start)
                shards.append({"url": f"{version}/{split}-{d}-{name}-{i:06d}.tar", "samples": c, "bytes": c * 3500,
                               "datasets": {d: c}, "labels": {name: c}, "cells": {f"{d}:{name}": c},
                               "methods": {}, "label_sources": {}})
        index["splits"][split] = {"samples": sum(s["samples"] for s in shards), "shards": shards}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))


def generate(work: Path, n: int, args) -> float:
    """Write every input of size ``n`` (kept when ``generated.json`` records the same parameters); returns seconds."""
    import polars as pl

    from facepipe.data.footprint import VIDEO_TABLE_SCHEMA

    p = paths(work, n)
    want = {"n": n, "faces": args.faces, "crop_size": args.crop_size, "crops": n <= args.tar_max, "v": 3}
    if p["marker"].is_file() and json.loads(p["marker"].read_text()) == want:
        return 0.0
    t0 = time.perf_counter()
    shutil.rmtree(p["base"], ignore_errors=True)
    p["base"].mkdir(parents=True)
    rng = np.random.default_rng(n)
    pool = crop_pool(p["pool"], args.crop_size) if want["crops"] else None
    slims, tables = [], []
    for (ds, _, methods), n_ds in zip(DATASETS, dataset_sizes(n)):
        videos = gen_videos(ds, n_ds, methods, rng)
        write_inputs(ds, videos, p[f"root:{ds}"], p[f"manifest:{ds}"])
        faces = gen_faces(videos, args.faces, args.crop_size, rng)
        write_extract(p[f"extract:{ds}"], faces, video_rows(videos, faces), pool, f"n={n} {ds} parts")
        slims.append(faces.select("video_id", "frame_index", "label", "video_label", "label_source")
                     .join(videos.select("video_id", "method", "split"), on="video_id")
                     .with_columns(pl.lit(ds).alias("dataset")))
        tables.append(videos.with_columns(pl.lit(ds).alias("dataset"), pl.lit(args.faces).alias("faces")))
        del faces
    slim = pl.concat(slims)
    z = rng.normal(size=slim.height) + 1.2 * (slim["label"].to_numpy() == 1)
    slim.with_columns(pl.Series("score", 1 / (1 + np.exp(-z)))).write_parquet(p["predictions"])
    synthetic_index(p["index"], slim)
    vt = pl.concat(tables)
    vt.select([pl.col(c).cast(t) for c, t in VIDEO_TABLE_SCHEMA.items()]).write_parquet(p["videos"])
    p["marker"].write_text(json.dumps(want))
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------- child


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    """Reset the high-water RSS (Linux ``clear_refs`` 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def instrument(parts: dict, module, *names: str) -> None:
    """Replace ``module.<name>`` by a wrapper adding its inclusive seconds (and the high-water RSS after it) to
    ``parts``; calls that resolve the name through ``module`` are counted."""
    short = module.__name__.rsplit(".", 1)[-1]
    for name in names:
        fn = getattr(module, name)

        def wrapped(*a, _fn=fn, _key=f"{short}.{name}", **kw):
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                e = parts.setdefault(_key, {"s": 0.0, "calls": 0, "hwm_mb": 0.0})
                e["s"] += time.perf_counter() - t
                e["calls"] += 1
                e["hwm_mb"] = round(max(e["hwm_mb"], _status_mb("VmHWM")), 1)

        setattr(module, name, wrapped)


def setup_manifest(p: dict, args, parts: dict):
    import sklearn.model_selection  # noqa: F401  imported by group_split on first use: kept out of the timing

    from facepipe.datasets import ManifestConfig, base
    from facepipe.stages import manifest as mstage

    instrument(parts, base, "_scan", "_present_rows", "components", "group_split", "_manifest_table",
               "_check_manifest", "check_leakage")
    out = p["stage_out"]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = ManifestConfig(split_mode="group", options={"file": "manifest.csv"})

    def run():
        return {ds: mstage.run("csv", p[f"root:{ds}"], ds, cfg, out / f"manifest-{ds}.parquet").report
                for ds, _, _ in DATASETS}
    return run


def setup_leakage(p: dict, args, parts: dict):
    import polars as pl

    from facepipe import manifest

    instrument(parts, manifest, "_read_table", "_with_ids", "resolve_sources", "find_leaks")

    def run():
        mans = [manifest.read_manifest(p[f"manifest:{ds}"], dataset=ds) for ds, _, _ in DATASETS]
        allman = pl.concat(mans, how="vertical_relaxed")
        within = manifest.check_leakage(allman, "bench", identities=False, scope="within")
        across = manifest.check_leakage(allman, "bench", identities=True, scope="across")
        every = manifest.find_leaks(allman, identities=True, scope="all")
        return {"videos": allman.height, "leaks": [len(x.originals) + len(x.identities) for x in (within, across, every)]}
    return run


def setup_consolidate(p: dict, args, parts: dict):
    import polars as pl

    from facepipe.stages.extract import tables
    from facepipe.stages.extract.inputs import VideoJob

    jobs = {}
    for ds, _, _ in DATASETS:
        man = pl.read_parquet(p[f"manifest:{ds}"], columns=["video_id", "path", "label", "method"])
        jobs[ds] = [VideoJob(str(p[f"root:{ds}"] / rel), rel, vid, 0, 0, lab, meth)
                    for vid, rel, lab, meth in man.iter_rows()]

    def run():
        return {ds: len(tables.consolidate(p[f"extract:{ds}"], jobs[ds])) for ds, _, _ in DATASETS}
    return run


def shard_config(p: dict):
    from facepipe.stages.shard import ShardConfig, ShardInput

    return ShardConfig(inputs=tuple(ShardInput(dataset=ds, extract=str(p[f"extract:{ds}"]),
                                               manifest=str(p[f"manifest:{ds}"])) for ds, _, _ in DATASETS),
                       grace_hours=0)


def _instrument_shard(parts: dict) -> None:
    """Time shard's steps; import what it imports on first use (webdataset pulls torch in; the shortcut probe
    sklearn) so that imports stay out of the timing."""
    import cv2  # noqa: F401
    import sklearn.impute  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401
    import webdataset  # noqa: F401

    import facepipe.data.bias  # noqa: F401
    from facepipe.data import card
    from facepipe.stages import shard

    instrument(parts, shard, "collect_samples", "_by_status", "_check_labels", "read_manifest", "check_leakage",
               "_gather", "_one_chunk", "_ordered", "_inputs_hash", "_write_set", "_write_videos", "_describe",
               "_write_card", "_write_stats", "_probe", "video_table")
    instrument(parts, card, "render")


def setup_shard(p: dict, args, parts: dict):
    from facepipe.stages import shard

    _instrument_shard(parts)
    shutil.rmtree(p["shards"], ignore_errors=True)
    cfg = shard_config(p)

    def run():
        s = shard.run(p["shards"], cfg, progress=sys.stderr.isatty())
        return {"samples": s.samples, "shards": s.shards, "bytes": s.bytes}
    return run


def setup_shard_tables(p: dict, args, parts: dict):
    from facepipe.data.schema import SPLITS
    from facepipe.stages import shard

    _instrument_shard(parts)
    cfg = shard_config(p)
    tmp = Path(tempfile.mkdtemp(prefix="bench-shard-tables-"))

    def gather_all(samples, positions) -> int:
        """Every row at ``positions`` read as ``_write_group`` reads them (timed as ``Samples.rows_at``)."""
        t, n = time.perf_counter(), 0
        for i in range(0, len(positions), shard._CHUNK):
            n += samples.rows_at(positions[i:i + shard._CHUNK]).height
        e = parts.setdefault("shard.Samples.rows_at", {"s": 0.0, "calls": 0, "hwm_mb": 0.0})
        e["s"] += time.perf_counter() - t
        e["calls"] += -(-len(positions) // shard._CHUNK)
        e["hwm_mb"] = round(max(e["hwm_mb"], _status_mb("VmHWM")), 1)
        return n

    def run():
        samples, _, _, _ = shard._gather(cfg)
        index: dict = {"total": samples.height, "splits": {}}
        cells = read = 0
        for s_i, split in enumerate(SPLITS):  # what _write_splits does around the tars: cells shuffled, rows read
            n = 0
            for g_i, (_, positions) in enumerate(shard._groups(samples, s_i, cfg.layout)):
                order = np.random.default_rng([cfg.seed, s_i, g_i])
                positions = positions[order.permutation(len(positions))]
                read += gather_all(samples, positions)
                n += len(positions)
                cells += 1
            index["splits"][split] = {"samples": n, "shards": []}
        shard._video_table(samples)
        shard._describe(index, samples.rows, None, cfg)
        shard._write_stats(tmp, index, samples.rows)
        shard._inputs_hash(cfg)
        shutil.rmtree(tmp, ignore_errors=True)
        return {"samples": samples.height, "cells": cells, "rows_read": read, "note": "tables only: no tar written"}
    return run


def setup_loader(p: dict, args, parts: dict):
    from facepipe.data import index as idx
    from facepipe.data import loader

    instrument(parts, idx, "read_index", "resolve_shards", "check_index")
    instrument(parts, loader, "make_dataset")
    src = str(p["index"])

    def run():
        index = idx.read_index(src)
        sets = {s: len(idx.resolve_shards(src, s).urls) for s in index["splits"]}
        plain = loader.make_loader(src, "train", num_workers=0)
        balanced = loader.make_loader(src, "train", num_workers=0, class_balance=True)
        return {"shards": sets, "epoch_batches": [plain.epoch_batches, balanced.epoch_batches]}
    return run


def setup_loader_real(p: dict, args, parts: dict):
    from facepipe.data import index as idx
    from facepipe.data import loader

    instrument(parts, idx, "read_index", "resolve_shards", "check_index")
    instrument(parts, loader, "make_dataset")
    src = str(p["shards"])
    if not (p["shards"] / "index.json").is_file():
        raise SystemExit(f"{src}: no shard set (run the shard stage first)")

    def run():
        ld = loader.make_loader(src, "train", batch_size=32, num_workers=0)
        seen = 0
        for i, b in enumerate(ld):
            seen += len(b["key"])
            if i == 3:
                break
        return {"shards": len(ld.shardset.urls), "samples_read": seen}
    return run


def setup_evaluate(p: dict, args, parts: dict):
    import polars as pl

    from facepipe import metrics
    from facepipe.data import footprint

    instrument(parts, metrics, "with_references", "video_scores", "binary_metrics", "auc_ci", "_groups", "roc_points")
    instrument(parts, footprint, "footprint", "overlaps")
    preds = pl.read_parquet(p["predictions"])
    videos = pl.read_parquet(p["videos"])

    def run():
        table = metrics.metric_table(preds, "mean", 5, {}, args.ci, 0)
        v = metrics.video_scores(preds)
        # evaluate.run passes every face to roc_points; faces of undecided label (-1) make that multiclass, so the
        # decided ones are passed here (see the report)
        fr = metrics._frame_rows(preds)
        metrics.roc_points(fr["label"], fr["score"])
        metrics.roc_points(v["label"], v["score"])
        fp = footprint.footprint(videos)
        found = footprint.overlaps(fp, videos.filter(pl.col("split") == "test"))
        return {"faces": preds.height, "videos": v.height, "auc": round(table["frame"]["auc"], 4),
                "per_method": len(table["per_method"]), "overlaps": found.height, "ci": args.ci}
    return run


SETUPS = {"manifest": setup_manifest, "leakage": setup_leakage, "consolidate": setup_consolidate,
          "shard": setup_shard, "shard-tables": setup_shard_tables, "loader": setup_loader,
          "loader-real": setup_loader_real, "evaluate": setup_evaluate}


def child(args) -> None:
    """Run one stage, timed after its imports and setup; print its result as one tagged JSON line."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    p = paths(Path(args.work), args.n)
    parts: dict = {}
    run = SETUPS[args.child](p, args, parts)
    base_mb = _status_mb("VmRSS")
    reset = _reset_peak()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    info = run()
    times = [time.perf_counter() - t0]
    while args.child in REPEATABLE and times[0] < SHORT_S and sum(times) < 1.0 and len(times) < 50:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times))
    if len(times) > 1:  # the sub-timings per run
        for v in parts.values():
            v["s"] /= len(times)
            v["calls"] = round(v["calls"] / len(times))
        info = {**info, "runs": len(times)}
    if prof is not None:
        prof.disable()
        _write_profile(prof, Path(args.out) / "profile" / f"{args.child}-n{args.n}.txt")
    peak = _status_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    parts = {k: {**v, "s": round(v["s"], 3)} for k, v in parts.items()}
    print(RESULT_TAG + json.dumps({"seconds": round(seconds, 6), "peak_mb": round(peak, 1),
                                   "base_mb": round(base_mb, 1), "delta_mb": round(peak - base_mb, 1),
                                   "peak_exact": reset, "parts": parts, "info": info}, default=str), flush=True)


def _write_profile(prof, dest: Path) -> None:
    import io
    import pstats

    dest.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    for key in ("cumulative", "tottime"):
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(35)
    dest.write_text(buf.getvalue())


# ----------------------------------------------------------------------------------------------------- parent


def exponent(n1: int, t1: float, n2: int, t2: float) -> float | None:
    """log(t2/t1)/log(n2/n1); None where a value is missing or not positive."""
    if not all(isinstance(v, (int, float)) and v > 0 for v in (t1, t2)) or n1 == n2:
        return None
    return math.log(t2 / t1) / math.log(n2 / n1)


def extrapolate(results: dict, stage: str, n: int) -> float | None:
    """Seconds predicted for ``stage`` at ``n`` from the largest size measured (exponent of the two largest, at
    least 1); None before any measurement."""
    done = sorted((m, r["seconds"]) for m, r in results.get(stage, {}).items() if r.get("seconds"))
    if not done:
        return None
    e = 1.0
    if len(done) > 1:
        e = max(1.0, exponent(done[-2][0], done[-2][1], done[-1][0], done[-1][1]) or 1.0)
    return done[-1][1] * (n / done[-1][0]) ** e


def run_child(stage: str, n: int, args) -> dict:
    """One stage in a fresh interpreter; its result, or ``{"error": ...}``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--n", str(n), "--work", str(args.work),
           "--out", str(args.out), "--ci", str(args.ci)] + (["--profile"] if args.profile else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return {**json.loads(line[len(RESULT_TAG):]), "wall_s": round(time.perf_counter() - t0, 1)}
    return {"error": f"exit {proc.returncode}: {proc.stdout[-500:]}"}


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import polars as pl

    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}")


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if "skipped" in r:
        return f"skipped ({r['skipped']})"
    if "error" in r:
        return f"error: {r['error'][:60]}"
    t = f"{r['seconds'] * 1000:.1f} ms" if r["seconds"] < 0.1 else f"{r['seconds']:.2f} s"
    return f"{t} / {r['peak_mb']:.0f} MB (+{r['delta_mb']:.0f})"


def growth(results: dict, stage: str) -> tuple[str, str, str]:
    """Time and memory-delta exponents between the two largest sizes measured, and the sizes."""
    done = sorted((m, r) for m, r in results.get(stage, {}).items() if r.get("seconds"))
    if len(done) < 2:
        return "-", "-", "-"
    (n1, a), (n2, b) = done[-2], done[-1]
    et = exponent(n1, a["seconds"], n2, b["seconds"])
    em = exponent(n1, max(a["delta_mb"], 1.0), n2, max(b["delta_mb"], 1.0))
    return (f"{et:.2f}" if et is not None else "-", f"{em:.2f}" if em is not None else "-", f"{n1}->{n2}")


def report(results: dict, sizes: list[int], meta: dict) -> str:
    """The markdown table (and the flags: exponent > 1.1, peak > 2 GB at >= 100k videos)."""
    lines = [f"# bench_scale ({time.strftime('%Y-%m-%d %H:%M')})", "", f"Machine: {meta['machine']}", "",
             f"Faces per video: {meta['faces']}; bootstrap resamples: {meta['ci']}; tars at n <= {meta['tar_max']}.",
             "Cells: seconds / peak RSS MB during the timed part (+ delta over the RSS when timing began).", "",
             "| stage | " + " | ".join(f"n={n:,}" for n in sizes) + " | time exp. | mem exp. | between |",
             "|---|" + "---|" * (len(sizes) + 3)]
    flags = []
    for stage in STAGES:
        if stage not in results:
            continue
        et, em, between = growth(results, stage)
        lines.append(f"| {stage} | " + " | ".join(_cell(results[stage].get(n)) for n in sizes)
                     + f" | {et} | {em} | {between} |")
        if et != "-" and float(et) > 1.1:
            flags.append(f"{stage}: time grows with exponent {et} ({between})")
        if em != "-" and float(em) > 1.1:
            flags.append(f"{stage}: memory grows with exponent {em} ({between})")
        for n, r in results[stage].items():
            if n >= 100_000 and r.get("peak_mb", 0) > 2048:
                flags.append(f"{stage}: peak {r['peak_mb']:.0f} MB at n={n:,} (> 2 GB)")
    lines += ["", "Flags: " + ("; ".join(flags) if flags else "none"), ""] + _shard_outlook(results) + [
        "## Sub-timings (inclusive seconds, calls, high-water RSS MB after the call)", ""]
    for stage, per in results.items():
        for n, r in sorted(per.items()):
            if "seconds" not in r:
                continue
            top = sorted(r.get("parts", {}).items(), key=lambda kv: -kv[1]["s"])
            lines.append(f"- {stage} n={n:,} ({r['seconds']:.2f} s, RSS {r['base_mb']:.0f} MB when timing began): "
                         + (", ".join(f"{k} {v['s']:.2f} s x{v['calls']} ({v['hwm_mb']:.0f})" for k, v in top) or "-"))
            if r.get("info"):
                lines.append(f"  - result: {json.dumps(r['info'], default=str)[:300]}")
    lines += ["", "## Per size", ""] + [f"- n={n:,}: {json.dumps(v)}" for n, v in meta["per_size"].items()]
    return "\n".join(lines) + "\n"


def _shard_outlook(results: dict, target: int = 150_000) -> list[str]:
    """The issue's rule for parallel shard writing: the tar-writing time extrapolated to ``target`` videos."""
    guess = extrapolate(results, "shard", target)
    if guess is None:
        return []
    verdict = "over an hour: write shards in parallel" if guess > 3600 else "under an hour"
    return [f"Shard writing (tars) extrapolated to {target:,} videos: {guess / 60:.0f} min ({verdict}).", ""]


def save(out: Path, results: dict, sizes: list[int], meta: dict) -> str:
    out.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "results": {s: {str(n): r for n, r in per.items()} for s, per in results.items()}}
    (out / "bench_scale.json").write_text(json.dumps(data, indent=1, default=str))
    md = report(results, sizes, meta)
    (out / "bench_scale.md").write_text(md)
    return md


def run_size(n: int, args, results: dict, meta: dict) -> None:
    """Generate size ``n``, then every stage in its own process (skipping what the extrapolation rules out)."""
    t0 = time.perf_counter()
    print(f"== n={n:,}: generating ({args.faces} faces per video{', crops' if n <= args.tar_max else ''}) ...",
          flush=True)
    gen_s = generate(Path(args.work), n, args)
    print(f"   generated in {gen_s:.0f} s", flush=True)
    for stage in args.stages:
        per = results.setdefault(stage, {})
        if stage in TAR_STAGES and n > args.tar_max:
            per[n] = {"skipped": f"no tars above n={args.tar_max:,}"}
            continue
        guess = extrapolate(results, stage, n)
        if guess is not None and guess > args.max_stage_seconds:
            per[n] = {"skipped": f"extrapolated {guess:.0f} s > {args.max_stage_seconds:.0f} s"}
            print(f"   {stage}: skipped, extrapolated {guess:.0f} s", flush=True)
            continue
        r = run_child(stage, n, args)
        per[n] = r
        print(f"   {stage}: {_cell(r)}", flush=True)
    meta["per_size"][n] = {"generate_s": round(gen_s, 1), "stages_s": round(time.perf_counter() - t0 - gen_s, 1)}
    if not args.keep:
        shutil.rmtree(paths(Path(args.work), n)["base"], ignore_errors=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="videos per synthetic set, comma-separated")
    ap.add_argument("--out", default=None, help="where bench_scale.json / .md go (default: the work folder)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "facepipe-bench-scale"))
    ap.add_argument("--faces", type=int, default=32, help="faces per video")
    ap.add_argument("--crop-size", type=int, default=16, help="side of the PNG crops (tar stages)")
    ap.add_argument("--tar-max", type=int, default=10000, help="largest n whose shards are written as tars")
    ap.add_argument("--ci", type=int, default=1000, help="bootstrap resamples per AUC (evaluate's default)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--max-stage-seconds", type=float, default=1200.0)
    ap.add_argument("--timeout", type=float, default=2400.0, help="seconds before a stage's process is killed")
    ap.add_argument("--keep", action="store_true", help="keep the generated data (default: removed after each n)")
    ap.add_argument("--profile", action="store_true", help="cProfile listings in OUT/profile/ (times inflated)")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.out = args.out or args.work
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        child(args)
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    free = shutil.disk_usage(Path(args.work).parent if not Path(args.work).exists() else args.work).free / 2**30
    print(f"work {args.work} ({free:.0f} GiB free), results {args.out}", flush=True)
    meta = {"machine": machine(), "faces": args.faces, "ci": args.ci, "tar_max": args.tar_max, "per_size": {}}
    results: dict = {}
    for n in sizes:
        run_size(n, args, results, meta)
        print(save(Path(args.out), results, sizes, meta), flush=True)


if __name__ == "__main__":
    main()
