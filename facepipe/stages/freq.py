"""The ``freq`` stage: frequency views of every extracted crop, stored as float16, incremental per video.

Layout of ``OUT``::

    views/<video_id>.npz     arrays ``<frame:06d>_<track>/<view>`` float16, channel-first
    views.parquet            one row per crop: video_id, frame_index, track_id, npz (relative), views
    _parts/<video_id>.json   what a video's npz was made from (its cache key)
    .lock                    held while a run writes OUT

Nothing is stored by default (``freq.views: []``): the loader computes views on the fly after
augmentation, identically. Store a view only when computing it is the bottleneck of your training
machine; each full-size view costs ``2 * C * H * W`` bytes per crop (384 KB at 256 px for 3 channels).

A video is redone when its crops (path, size, mtime) or the stage fingerprint (the ``freq`` parameters,
stage version and the code of every module this stage imports) changed; files are written under a temp
name and renamed.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe._io import atomic_path, atomic_write_bytes
from facepipe.errors import InputError, Interrupted
from facepipe.freq import compute_view
from facepipe.freq.config import FreqConfig
from facepipe.freq.functional import to_chw01
from facepipe.stages import contract

log = logging.getLogger(__name__)

STAGE = "freq"
STAGE_VERSION = 2

VIEWS_SCHEMA = {"video_id": pl.String, "frame_index": pl.Int64, "track_id": pl.Int32, "npz": pl.String,
                "member": pl.String, "views": pl.List(pl.String)}


def member_name(frame_index: int, track_id: int, view: str) -> str:
    """Name of one crop's view inside its video's npz."""
    return f"{frame_index:06d}_{track_id}/{view}"


def fingerprint(cfg: FreqConfig) -> str:
    """Parameters, stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, cfg.model_dump(), __name__)


def _crops_fingerprint(extract_dir: Path, rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        st = (extract_dir / r["crop_path"]).stat()
        h.update(f"{r['crop_path']}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _video_views(extract_dir: str, out_dir: str, video_id: str, rows: list[dict], cfg: FreqConfig,
                 key: str) -> int:
    """Compute and write one video's views; returns the number of crops."""
    arrays = {}
    for r in rows:
        path = Path(extract_dir) / r["crop_path"]
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"{path}: crop does not decode (listed in faces.parquet)")
        x = to_chw01(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        for v in cfg.views:
            arrays[member_name(r["frame_index"], r["track_id"], v)] = compute_view(v, x, cfg).astype(np.float16)
    out = Path(out_dir)
    with atomic_path(out / "views" / f"{video_id}.npz") as tmp:
        np.savez(tmp, **arrays)
    atomic_write_bytes(out / "_parts" / f"{video_id}.json",
                       json.dumps({"video_id": video_id, "item_key": key, "n": len(rows),
                                   "views": list(cfg.views)}).encode())
    return len(rows)


def _clear_stale(out: Path) -> None:
    """Remove the temporary files of videos a killed or interrupted run abandoned."""
    for stale in [*(out / "views").glob(".*.tmp-*"), *(out / "_parts").glob(".*.tmp-*"), *out.glob(".*.tmp-*")]:
        stale.unlink(missing_ok=True)


def _compute(ex: Path, out: Path, jobs: list, cfg: FreqConfig, workers: int, summary: "FreqSummary", bar) -> None:
    """Every job's views, in a ``pebble`` pool of spawned processes (``workers`` > 0) or here. An interrupt stops
    the pool's processes at once (a ``concurrent.futures`` pool would wait for the videos under way)."""
    if not (workers and len(jobs) > 1):
        for vid, rows, key in jobs:
            summary.crops += _video_views(str(ex), str(out), vid, rows, cfg, key)
            summary.processed += 1
            bar.update(1)
        return
    from pebble import ProcessPool

    pool = ProcessPool(max_workers=workers, context=mp.get_context("spawn"))
    try:
        futs = [pool.schedule(_video_views, args=(str(ex), str(out), vid, rows, cfg, key)) for vid, rows, key in jobs]
        for f in cf.as_completed(futs):
            summary.crops += f.result()
            summary.processed += 1
            bar.update(1)
        pool.close()
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.join()


@dataclass
class FreqSummary:
    processed: int = 0
    skipped: int = 0
    crops: int = 0
    seconds: float = 0.0


def run(extract_dir: str | Path, out_dir: str | Path, cfg: FreqConfig, workers: int = 2,
        progress: bool = True) -> FreqSummary:
    """Compute the configured views for every crop listed in ``extract_dir/faces.parquet``.

    Args:
        extract_dir: an ``extract`` stage output folder.
        out_dir: output folder (created).
        cfg: views and their parameters.
        workers: processes (0 = this process).
        progress: tqdm bar over videos.

    Raises:
        InputError: ``faces.parquet`` is missing, or a listed crop is missing or does not decode.
        StageBusy: another run holds ``out_dir``.
    """
    t0 = time.perf_counter()
    ex = Path(extract_dir)
    faces_path = ex / "faces.parquet"
    if not faces_path.is_file():
        raise InputError(f"{faces_path}: not found (run 'facepipe extract' first)")
    faces = pl.read_parquet(faces_path, columns=["video_id", "frame_index", "track_id", "crop_path"])
    out = Path(out_dir)
    stage_fp = fingerprint(cfg)
    summary = FreqSummary()
    with contract.stage_lock(out, STAGE):
        (out / "views").mkdir(parents=True, exist_ok=True)
        (out / "_parts").mkdir(parents=True, exist_ok=True)
        _clear_stale(out)
        jobs = []
        groups = faces.sort(["video_id", "frame_index", "track_id"]).group_by(["video_id"], maintain_order=True)
        for (vid,), g in groups if cfg.views else ():
            rows = g.to_dicts()
            missing = [r["crop_path"] for r in rows if not (ex / r["crop_path"]).is_file()]
            if missing:
                raise InputError(f"{ex / missing[0]}: crop listed in faces.parquet is missing "
                                 f"({len(missing)} missing for video {vid})")
            key = contract.item_key(stage_fp, _crops_fingerprint(ex, rows))
            try:
                prev = json.loads((out / "_parts" / f"{vid}.json").read_text())
            except (OSError, ValueError):
                prev = {}
            if prev.get("item_key") == key and (out / "views" / f"{vid}.npz").is_file():
                summary.skipped += 1
                continue
            jobs.append((vid, rows, key))
        bar = tqdm(total=len(jobs), unit="video", desc="freq", disable=not progress or not jobs)
        try:
            _compute(ex, out, jobs, cfg, workers, summary, bar)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
            bar.close()
            _clear_stale(out)
            raise Interrupted(f"freq: interrupted after {summary.processed} of {len(jobs)} videos "
                              f"({summary.skipped} done before); the finished ones are kept, views.parquet is not "
                              "updated: rerun the same command to resume") from None
        bar.close()
        table = faces.select(
            "video_id", "frame_index", "track_id",
            pl.format("views/{}.npz", "video_id").alias("npz"),
            pl.format("{}_{}", pl.col("frame_index").cast(pl.String).str.zfill(6),
                      pl.col("track_id").cast(pl.String)).alias("member"),
            pl.lit(list(cfg.views), dtype=pl.List(pl.String)).alias("views"),
        ).sort(["video_id", "frame_index", "track_id"])
        with atomic_path(out / "views.parquet") as tmp:
            table.write_parquet(tmp, metadata={"facepipe_stage_fingerprint": stage_fp,
                                               "facepipe_freq_params": json.dumps(cfg.view_params(), sort_keys=True)})
    summary.seconds = time.perf_counter() - t0
    return summary
