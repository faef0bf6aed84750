"""The extract stage's tables: ``faces.parquet`` and ``videos.parquet`` schemas, the per-video part files
(``_parts/<video_id>.json`` / ``.parquet``: the unit of resume) and their consolidation into the two tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from facepipe import __version__
from facepipe._io import atomic_path, atomic_write_bytes
from facepipe.stages.extract.config import STAGE_VERSION
from facepipe.stages.extract.inputs import VideoJob

log = logging.getLogger(__name__)

FACE_SCHEMA = {
    "video_id": pl.String,
    "frame_index": pl.Int64,
    "timestamp_s": pl.Float64,
    "track_id": pl.Int32,
    "box": pl.Array(pl.Float32, 4),
    "landmarks": pl.Array(pl.Float32, (5, 2)),
    "score": pl.Float32,
    "face_size_px": pl.Float32,
    "affine": pl.Array(pl.Float64, (2, 3)),
    "crop_path": pl.String,
    "crop_mode": pl.String,
    "crop_size": pl.Int32,
    "detector": pl.String,
    "detector_version": pl.String,
    "label": pl.Int8,
    "video_label": pl.Int8,
    "label_source": pl.String,
    "manipulation_score": pl.Float32,
    "mask_path": pl.String,
    "preset": pl.String,
    "crop_landmarks": pl.List(pl.Array(pl.Float32, 2)),
    "clip_id": pl.Int32,
    "clip_start": pl.Int64,
    "gap": pl.Boolean,
}
"""``faces.parquet``: ``box`` x1,y1,x2,y2 and ``landmarks`` (5, 2) x,y in upright source-frame pixels;
``affine`` the (2, 3) source->crop matrix (``cv2.warpAffine(frame, affine, (crop_size, crop_size))``
regenerates the crop); ``face_size_px`` the box's longer side; ``crop_path`` and ``mask_path`` relative to
``OUT``. ``label`` is the face's own label (0 real, 1 fake; what training and evaluation use),
``video_label`` the manifest's label of its video, ``label_source`` how the face label was decided
(``original_diff`` | ``policy`` | ``video``; null without a manifest), ``manipulation_score`` the share of
the face box that differs from the original beyond the frame's background difference (null without an
original), ``mask_path`` that difference warped like the crop (fakes compared with their original). ``preset`` the
alignment preset (``deepfakebench`` with DeepfakeBench's 81-point predictor, ``deepfakebench-68`` with the 68-point
stand-in, or null); ``crop_landmarks`` (preset ``deepfakebench``) dlib's 81 (or 68) landmarks
re-detected on the crop, crop pixels (integers, as DeepfakeBench saves them), or (``extract.landmarks68``) dlib's
68 landmarks of the crop, else null. Clip mode
(``sampling.mode: clips``): ``clip_id`` the clip (0, 1, ... in the video's clip plan), ``clip_start`` its first
source frame, ``track_id`` the track within the clip (0 = its largest), ``gap`` true on a frame where the track had
no detection (box and landmarks interpolated, ``score`` null); ``frame_index`` and ``timestamp_s`` stay the
source frame's. In frame mode ``clip_id`` and ``clip_start`` are null and ``gap`` false."""

VIDEO_SCHEMA = {
    "video_id": pl.String,
    "path": pl.String,
    "status": pl.String,
    "message": pl.String,
    "fps": pl.Float64,
    "frames_header": pl.Int64,
    "frames_decoded": pl.Int64,
    "frames_sampled": pl.Int64,
    "width": pl.Int32,
    "height": pl.Int32,
    "rotation": pl.Int32,
    "duration_s": pl.Float64,
    "codec": pl.String,
    "n_faces": pl.Int64,
    "n_tracks": pl.Int32,
    "n_tracks_dropped": pl.Int32,
    "n_faces_dropped": pl.Int64,
    "video_label": pl.Int8,
    "label_source": pl.String,
    "original_id": pl.String,
    "pair_check": pl.String,
    "background_diff": pl.Float64,
    "n_faces_fake": pl.Int64,
    "n_faces_real": pl.Int64,
    "file_size": pl.Int64,
    "file_mtime_ns": pl.Int64,
    "file_sha256": pl.String,
    "item_key": pl.String,
    "detector": pl.String,
    "n_clips": pl.Int32,
    "n_clips_dropped": pl.Int32,
}
"""``videos.parquet``: ``path`` relative to ``--video-dir``; ``status`` one of :data:`STATUSES`;
``frames_decoded`` frames that really decode (can be fewer than ``frames_header``); ``width``/``height``
displayed size after ``rotation`` (degrees, FFmpeg's sign convention); ``n_tracks_dropped`` /
``n_faces_dropped`` removed by track quality or the label policy; ``label_source`` how this video's face
labels were decided; ``original_id`` the original compared with; ``pair_check`` why the pair was or was
not compared; ``background_diff`` the median background difference of the pair (grey levels);
``item_key`` the cache key the row was made under (with the stage fingerprint inside); ``n_clips`` /
``n_clips_dropped`` (clip mode, else null) the (track, clip) pairs kept and dropped."""


def new_video_row(job: VideoJob, key: str, sha: str | None, detector_id: str) -> dict:
    """A video's row before any work: every :data:`VIDEO_SCHEMA` column, counts zero, the file and cache key."""
    row = {k: None for k in VIDEO_SCHEMA}
    row.update(video_id=job.video_id, path=job.rel, file_size=job.size, file_mtime_ns=job.mtime_ns, file_sha256=sha,
               item_key=key, detector=detector_id, n_faces=0, n_tracks=0, n_tracks_dropped=0, n_faces_dropped=0,
               frames_sampled=0, video_label=job.label, n_faces_fake=0, n_faces_real=0)
    return row


def error_row(job: VideoJob, key: str, sha: str | None, detector_id: str, message: str) -> dict:
    """The row of a video whose task did not return (status ``error``: never cached)."""
    row = new_video_row(job, key, sha, detector_id)
    row.update(status="error", message=message)
    return row


def write_part(out: Path, row: dict, face_rows: list[dict], seconds: float) -> None:
    """A finished video's part files: the face rows first (sorted by :data:`FACE_ORDER`, so that
    :func:`consolidate` only concatenates), then the video row (which marks the video done)."""
    parts = out / "_parts"
    with atomic_path(parts / f"{row['video_id']}.parquet") as tmp:
        pl.DataFrame(face_rows, schema=FACE_SCHEMA).sort(FACE_ORDER, nulls_last=False).write_parquet(tmp)
    atomic_write_bytes(parts / f"{row['video_id']}.json", json.dumps({**row, "_seconds": round(seconds, 3),
                                                                      "_version": __version__}).encode())


def write_error_part(out: Path, job: VideoJob, row: dict) -> None:
    """The part files of a video whose task did not return (its error row, no faces); a failure to write them is
    logged, not raised."""
    try:
        atomic_write_bytes(out / "_parts" / f"{job.video_id}.json", json.dumps(row).encode())
        with atomic_path(out / "_parts" / f"{job.video_id}.parquet") as tmp:
            pl.DataFrame([], schema=FACE_SCHEMA).write_parquet(tmp)
    except OSError as e:
        log.error("%s: cannot record the error row: %s", job.rel, e)


def is_done(part_json: Path, key: str, out: Path, video_id: str) -> bool:
    """Whether a video's parts were made under ``key`` and are complete (status not ``error``, crops present)."""
    try:
        prev = json.loads(part_json.read_text())
    except (OSError, ValueError):
        return False
    if prev.get("item_key") != key or prev.get("status") == "error":
        return False
    if prev.get("n_faces") and not (out / "faces" / video_id).is_dir():
        return False
    return part_json.with_suffix(".parquet").is_file()


def part_has_key(out: Path, job: VideoJob, key: str) -> bool:
    """Whether a video's row was written under ``key`` with a status other than ``error``."""
    try:
        prev = json.loads((out / "_parts" / f"{job.video_id}.json").read_text())
    except (OSError, ValueError):
        return False
    return prev.get("item_key") == key and prev.get("status") != "error"


FACE_ORDER = ["video_id", "frame_index", "track_id", "clip_id"]
"""The order of ``faces.parquet`` (and of every part file's rows)."""


def consolidate(out: Path, jobs: list[VideoJob]) -> list[dict]:
    """Rebuild ``videos.parquet`` and ``faces.parquet`` from the part files of ``jobs`` (temp name, then rename).

    Parts of videos no longer in the input are left on disk but not listed. Both tables are sorted and
    hold no timing, so the same inputs, parameters and code give byte-identical tables. Each part's rows are
    already in :data:`FACE_ORDER` (:func:`write_part`), so the face table is the parts read in one scan in
    ``video_id`` order and streamed to disk, without a global sort (``scripts/bench_scale.py``: reading every part
    and sorting took 74 s and 2.5 GB at 100k videos, 3.2M faces).

    Returns:
        The video rows.
    """
    parts = out / "_parts"
    rows, face_files = [], []
    for j in sorted(jobs, key=lambda j: j.video_id):
        p = parts / f"{j.video_id}.json"
        if not p.is_file():
            continue
        r = json.loads(p.read_text())
        rows.append({k: r.get(k) for k in VIDEO_SCHEMA})
        fp = p.with_suffix(".parquet")
        if r.get("n_faces") and fp.is_file():
            face_files.append(fp)
    videos = pl.DataFrame(rows, schema=VIDEO_SCHEMA).sort("video_id") if rows else pl.DataFrame(schema=VIDEO_SCHEMA)
    meta = {"facepipe_version": __version__, "stage_version": str(STAGE_VERSION)}
    with atomic_path(out / "videos.parquet") as tmp:
        videos.write_parquet(tmp, metadata=meta)
    with atomic_path(out / "faces.parquet") as tmp:
        if not face_files:
            pl.DataFrame(schema=FACE_SCHEMA).write_parquet(tmp, metadata=meta)
        else:  # streamed: the parts are never all in memory
            _sink(pl.scan_parquet(face_files), tmp, meta)
    return rows


def _sink(lf: pl.LazyFrame, path: Path, meta: dict) -> None:
    """``lf`` written to ``path`` by polars' streaming engine, in order, with key-value ``meta``; collected first on a
    polars whose ``sink_parquet`` takes no metadata."""
    try:
        lf.sink_parquet(path, metadata=meta, maintain_order=True)
    except TypeError:
        lf.collect().write_parquet(path, metadata=meta)
