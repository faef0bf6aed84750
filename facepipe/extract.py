"""The ``extract`` stage: a folder of videos -> aligned face crops + ``faces.parquet`` + ``videos.parquet``.

Layout of ``OUT``::

    faces/<video_id>/<frame:06d>_<track>.png   crops (or .jpg)
    faces.parquet                              one row per face   (FACE_COLUMNS)
    videos.parquet                             one row per input  (VIDEO_COLUMNS)
    _parts/<video_id>.json / .parquet          per-video results: the unit of resume

Work is per video and incremental: a video is redone only when its file (size + mtime, or sha256)
or the stage parameters changed. Each video's crops are written to a temporary folder and renamed
into place, then its part files are written (temp name, then rename), so a run killed at any point
leaves every finished video intact and no half-written crop or row. The two tables are rebuilt from
the parts at the end of every run (temp name, then rename).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe import __version__
from facepipe._io import atomic_path, atomic_write_bytes
from facepipe.config import ExtractConfig
from facepipe.errors import InputError, VideoError

log = logging.getLogger(__name__)

STAGE_VERSION = 1
"""Bumped when the stage's output for the same input and parameters changes."""

STATUSES = ("ok", "no_face", "decode_error", "unsupported")

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
}
"""``faces.parquet``: ``box`` x1,y1,x2,y2 and ``landmarks`` (5, 2) x,y in upright source-frame pixels;
``affine`` the (2, 3) source->crop matrix (``cv2.warpAffine(frame, affine, (crop_size, crop_size))``
regenerates the crop); ``face_size_px`` the box's longer side; ``crop_path`` relative to ``OUT``."""

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
    "file_size": pl.Int64,
    "file_mtime_ns": pl.Int64,
    "file_sha256": pl.String,
    "params_hash": pl.String,
    "detector": pl.String,
    "seconds": pl.Float64,
}
"""``videos.parquet``: ``path`` relative to ``--video-dir``; ``status`` one of :data:`STATUSES`;
``frames_decoded`` frames that really decode (can be fewer than ``frames_header``); ``width``/``height``
displayed size after ``rotation`` (degrees, FFmpeg's sign convention)."""

_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def video_id_for(rel_path: str) -> str:
    """Stable, WebDataset-safe id for a video from its path relative to the video folder.

    Folder separators become ``-``, the extension is dropped, any other character outside
    ``[A-Za-z0-9_-]`` (dots included) becomes ``_`` and runs of ``_`` are collapsed so the id never
    contains ``__`` (the sample-key separator). When that changed anything beyond separators and
    extension, 8 hex characters of the path's sha1 are appended so distinct paths stay distinct.

    >>> video_id_for("ffpp/original_634.mp4")
    'ffpp-original_634'
    """
    rel = rel_path.replace(os.sep, "/")
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    plain = stem.replace("/", "-")
    clean = re.sub(r"_{2,}", "_", _ID_BAD.sub("_", plain)).strip("_-") or "video"
    if clean != plain:
        clean = f"{clean}-{hashlib.sha1(rel.encode()).hexdigest()[:8]}"
    return clean


@dataclass(frozen=True)
class VideoJob:
    """One input file. ``path`` absolute; ``rel`` relative to the video folder (``/`` separated)."""

    path: str
    rel: str
    video_id: str
    size: int
    mtime_ns: int


def discover_videos(video_dir: str | Path, extensions: tuple[str, ...]) -> list[VideoJob]:
    """List the video files below ``video_dir`` (recursive, hidden entries skipped), sorted by path.

    Ids colliding after :func:`video_id_for` (e.g. ``a.mp4`` and ``a.avi``) get the path hash
    appended.

    Raises:
        InputError: ``video_dir`` is missing, not a folder, or holds no file with a video extension.
    """
    root = Path(video_dir)
    if not root.exists():
        raise InputError(f"{root}: video folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    exts = {e.lower() for e in extensions}
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in exts:
                continue
            rels.append(Path(dirpath, name).relative_to(root).as_posix())
    if not rels:
        raise InputError(f"{root}: no video files (looked for {', '.join(sorted(exts))})")
    rels.sort()
    ids = {r: video_id_for(r) for r in rels}
    counts: dict[str, int] = {}
    for v in ids.values():
        counts[v] = counts.get(v, 0) + 1
    jobs = []
    for r in rels:
        vid = ids[r]
        if counts[vid] > 1:
            vid = f"{vid}-{hashlib.sha1(r.encode()).hexdigest()[:8]}"
        st = (root / r).stat()
        jobs.append(VideoJob(str((root / r).resolve()), r, vid, st.st_size, st.st_mtime_ns))
    return jobs


def jobs_from_manifest(video_dir: str | Path, manifest: "pl.DataFrame") -> list[VideoJob]:
    """Inputs listed in a manifest (``path`` relative to ``video_dir``; ``video_id`` as the manifest says).

    Paths may be video files or image-sequence folders. Listed paths that do not exist are still
    returned (``size`` -1) so the stage records them as ``decode_error`` instead of silently skipping.

    Raises:
        InputError: ``video_dir`` is missing or the manifest lists nothing.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"{root}: video folder does not exist")
    if manifest.height == 0:
        raise InputError("the manifest lists no videos")
    jobs = []
    for rel, vid in manifest.select("path", "video_id").sort("path").iter_rows():
        p = root / rel
        try:
            st = p.stat()
            size = _tree_size(p) if p.is_dir() else st.st_size
            mtime = st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        jobs.append(VideoJob(str(p.resolve()), rel, vid, size, mtime))
    return jobs


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Per-video work (runs in worker processes)

_WORKER: dict = {}


def _init_worker(cfg: ExtractConfig, threads: int, log_level: int) -> None:
    from facepipe.faces import create_detector

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    cv2.setNumThreads(1)
    _WORKER["detector"] = create_detector(cfg.detector, threads=threads)
    _WORKER["cfg"] = cfg


def _encode(crop_rgb: np.ndarray, fmt: str, quality: int) -> bytes:
    bgr = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2BGR)
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {crop_rgb.shape} crop as {fmt}")
    return buf.tobytes()


def process_video(job: VideoJob, out_dir: str, params_hash: str, sha256: str | None,
                  cfg: ExtractConfig | None = None, detector=None) -> tuple[dict, int]:
    """Extract one video's faces and write its crops and part files under ``out_dir``.

    Uses the worker's detector and config unless given. Never raises for a bad video: the
    problem is recorded in the returned video row's ``status`` and ``message``.

    Returns:
        (video row as in :data:`VIDEO_SCHEMA`, number of faces written).
    """
    from facepipe.faces.align import face_matrix, warp_crop
    from facepipe.faces.track import link_tracks
    from facepipe.video import FrameSampler, probe

    cfg = cfg or _WORKER["cfg"]
    detector = detector or _WORKER["detector"]
    out = Path(out_dir)
    t0 = time.perf_counter()
    row = {k: None for k in VIDEO_SCHEMA}
    row.update(video_id=job.video_id, path=job.rel, file_size=job.size, file_mtime_ns=job.mtime_ns,
               file_sha256=sha256, params_hash=params_hash, detector=detector.id, n_faces=0, n_tracks=0,
               frames_sampled=0)
    face_rows: list[dict] = []
    final_dir = out / "faces" / job.video_id
    tmp_dir = out / "faces" / f".{job.video_id}.tmp-{os.getpid()}"
    ext = cfg.output.format
    try:
        info = probe(job.path)
        row.update(fps=info.fps, frames_header=info.frames_header, width=info.width, height=info.height,
                   rotation=info.rotation, duration_s=info.duration_s, codec=info.codec)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        # Stream chunks of frames: detect, crop and write each face under a provisional name; track
        # ids are known only once every sampled frame has been seen.
        sampler = FrameSampler(job.path, info, cfg.sampling)
        per_frame: list[list] = []  # per sampled frame: [(face, matrix, provisional name)]
        frame_meta: list[tuple[int, float]] = []
        for chunk in sampler:
            for frame, fidx, ts, ffaces in zip(chunk.frames, chunk.indices, chunk.timestamps_s,
                                               detector.detect(chunk.frames)):
                kept = []
                for k, face in enumerate(ffaces):
                    try:
                        m = face_matrix(face.box, face.landmarks, cfg.align)
                    except ValueError as e:
                        log.warning("%s frame %d: face skipped: %s", job.rel, fidx, e)
                        continue
                    name = f"{int(fidx):06d}_f{k}.{ext}"
                    crop = warp_crop(frame, m, cfg.align.size)
                    (tmp_dir / name).write_bytes(_encode(crop, ext, cfg.output.jpeg_quality))
                    kept.append((face, m, name))
                per_frame.append(kept)
                frame_meta.append((int(fidx), float(ts)))
        row.update(frames_decoded=sampler.frames_decodable, frames_sampled=sampler.n_sampled)
        tracks = link_tracks([[f for f, _, _ in kept] for kept in per_frame], cfg.track)
        for (fidx, ts), kept, tids in zip(frame_meta, per_frame, tracks):
            for (face, m, tmp_name), tid in zip(kept, tids):
                if cfg.track.select == "largest" and tid != 0:
                    (tmp_dir / tmp_name).unlink()
                    continue
                name = f"{fidx:06d}_{tid}.{ext}"
                os.replace(tmp_dir / tmp_name, tmp_dir / name)
                face_rows.append({
                    "video_id": job.video_id, "frame_index": fidx, "timestamp_s": ts,
                    "track_id": int(tid), "box": face.box.tolist(), "landmarks": face.landmarks.tolist(),
                    "score": face.score, "face_size_px": face.size_px, "affine": m.tolist(),
                    "crop_path": f"faces/{job.video_id}/{name}", "crop_mode": cfg.align.mode,
                    "crop_size": cfg.align.size, "detector": detector.name,
                    "detector_version": detector.version,
                })
        row.update(n_faces=len(face_rows), n_tracks=len({r["track_id"] for r in face_rows}))
        if sampler.decode_error:
            row.update(status="decode_error", message=sampler.decode_error + "; faces taken from the "
                       "decodable frames")
        elif face_rows:
            msg = None
            if info.frames_header and sampler.frames_decodable != info.frames_header:
                msg = (f"header says {info.frames_header} frames, {sampler.frames_decodable} decode; "
                       "sampled from the decodable ones")
            row.update(status="ok", message=msg)
        else:
            row.update(status="no_face", message=f"no face scoring >= {detector.min_score} in "
                       f"{sampler.n_sampled} sampled frames")
    except VideoError as e:
        row.update(status=e.status, message=str(e))
    except Exception as e:  # a bug or an unforeseen file: keep the run going, say so loudly
        log.error("%s: unexpected error:\n%s", job.rel, traceback.format_exc())
        row.update(status="decode_error", message=f"unexpected error: {type(e).__name__}: {e}",
                   n_faces=0, n_tracks=0)
        face_rows = []  # publish nothing half-done for this video
    row["seconds"] = time.perf_counter() - t0

    # Publish: crops folder first (rename), then the face rows, then the video row (marks done).
    parts = out / "_parts"
    if face_rows:
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp_dir, final_dir)
    else:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        shutil.rmtree(final_dir, ignore_errors=True)
    with atomic_path(parts / f"{job.video_id}.parquet") as tmp:
        pl.DataFrame(face_rows, schema=FACE_SCHEMA).write_parquet(tmp)
    atomic_write_bytes(parts / f"{job.video_id}.json", json.dumps(row).encode())
    return row, len(face_rows)


def _process_in_worker(job: VideoJob, out_dir: str, params_hash: str, sha256: str | None) -> tuple[dict, int]:
    return process_video(job, out_dir, params_hash, sha256)


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class ExtractSummary:
    """What one run did. ``statuses`` counts every input's status after the run."""

    processed: int = 0
    skipped: int = 0
    faces_written: int = 0
    seconds: float = 0.0
    detector: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""


def _is_done(part_json: Path, job: VideoJob, params_hash: str, fingerprint: str,
             sha: str | None, out: Path) -> bool:
    try:
        prev = json.loads(part_json.read_text())
    except (OSError, ValueError):
        return False
    if prev.get("params_hash") != params_hash:
        return False
    if fingerprint == "sha256":
        same = prev.get("file_sha256") == sha
    else:
        same = prev.get("file_size") == job.size and prev.get("file_mtime_ns") == job.mtime_ns
    if not same:
        return False
    if prev.get("n_faces") and not (out / "faces" / job.video_id).is_dir():
        return False
    return (part_json.with_suffix(".parquet")).is_file()


def run_extract(video_dir: str | Path, out_dir: str | Path, cfg: ExtractConfig, workers: int = 2,
                fingerprint: Literal["stat", "sha256"] = "stat", progress: bool = True,
                manifest: str | Path | None = None) -> ExtractSummary:
    """Run the extract stage.

    Args:
        video_dir: folder searched recursively for files with ``cfg.extensions``.
        out_dir: output folder (created).
        cfg: stage parameters.
        workers: worker processes decoding, detecting and encoding videos in parallel; 0 runs
            everything in this process.
        fingerprint: how a finished video is recognised as unchanged: ``stat`` (size + mtime) or
            ``sha256`` of the content (survives copies that reset mtimes).
        progress: show a tqdm bar over videos with faces/s.
        manifest: process only the videos this manifest lists (paths relative to ``video_dir``,
            ids from the manifest), e.g. one compression level of an FF++ tree; ``None`` = every
            video file under ``video_dir``.

    Returns:
        An :class:`ExtractSummary`.

    Raises:
        InputError: missing or empty ``video_dir`` (nothing is written then).
        DetectorError: the detector cannot be created.
    """
    from facepipe.faces import create_detector

    t0 = time.perf_counter()
    if manifest is not None:
        from facepipe.manifest import read_manifest

        jobs = jobs_from_manifest(video_dir, read_manifest(manifest, dataset="_"))
    else:
        jobs = discover_videos(video_dir, cfg.extensions)
    out = Path(out_dir)
    cpu = os.cpu_count() or 1
    threads = max(1, cpu // max(1, workers)) if workers else 0
    detector = create_detector(cfg.detector, threads=threads)
    params_hash = cfg.params_hash(detector.id)
    log.info("detector %s, params %s, %d videos, %d workers", detector.id, params_hash, len(jobs), workers)
    (out / "faces").mkdir(parents=True, exist_ok=True)
    (out / "_parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "faces").glob(".*.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)

    shas = ({j.video_id: file_sha256(j.path) for j in jobs if Path(j.path).is_file()}
            if fingerprint == "sha256" else {})
    pending = [j for j in jobs if not _is_done(out / "_parts" / f"{j.video_id}.json", j, params_hash,
                                               fingerprint, shas.get(j.video_id), out)]
    summary = ExtractSummary(skipped=len(jobs) - len(pending), detector=detector.id, out_dir=str(out))
    if summary.skipped:
        log.info("%d of %d videos already done with these parameters: skipped", summary.skipped, len(jobs))

    bar = tqdm(total=len(pending), unit="video", desc="extract", disable=not progress or not pending,
               dynamic_ncols=True)
    t_run = time.perf_counter()

    def done(row: dict, n: int) -> None:
        summary.processed += 1
        summary.faces_written += n
        bar.update(1)
        rate = summary.faces_written / max(time.perf_counter() - t_run, 1e-9)
        bar.set_postfix(faces=summary.faces_written, faces_s=f"{rate:.1f}", refresh=False)
        if row["status"] in ("decode_error", "unsupported"):
            tqdm.write(f"{row['path']}: {row['status']}: {row['message']}")

    if pending and workers == 0:
        for j in pending:
            done(*process_video(j, str(out), params_hash, shas.get(j.video_id), cfg, detector))
    elif pending:
        del detector
        _run_pool(pending, out, params_hash, shas, cfg, workers, threads, done)
    bar.close()

    summary.statuses = consolidate(out, jobs)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run_pool(pending: list[VideoJob], out: Path, params_hash: str, shas: dict, cfg: ExtractConfig,
              workers: int, threads: int, done) -> None:
    """Feed jobs to a spawn pool, at most ``workers`` in flight. If a worker dies (a decoder
    segfault), the videos in flight are retried one at a time; one that kills a worker again is
    recorded as ``decode_error``."""
    ctx = mp.get_context("spawn")
    queue = list(pending)
    suspects: list[VideoJob] = []

    def new_pool(n: int) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker,
                                      initargs=(cfg, threads, logging.getLogger().level))

    pool = new_pool(workers)
    try:
        inflight: dict[cf.Future, VideoJob] = {}
        while queue or inflight:
            while queue and len(inflight) < workers:
                j = queue.pop(0)
                inflight[pool.submit(_process_in_worker, j, str(out), params_hash, shas.get(j.video_id))] = j
            finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
            broken = False
            for fut in finished:
                j = inflight.pop(fut)
                try:
                    done(*fut.result())
                except cf.process.BrokenProcessPool:
                    broken = True
                    suspects.append(j)
            if broken:
                suspects.extend(inflight.values())
                inflight.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = new_pool(workers)
                break
        pool.shutdown()
        # Retry the suspects alone: the one that crashes again is the culprit.
        for j in suspects:
            solo = new_pool(1)
            try:
                done(*solo.submit(_process_in_worker, j, str(out), params_hash, shas.get(j.video_id)).result())
            except cf.process.BrokenProcessPool:
                row = {k: None for k in VIDEO_SCHEMA}
                row.update(video_id=j.video_id, path=j.rel, status="decode_error", file_size=j.size,
                           file_mtime_ns=j.mtime_ns, params_hash=None, n_faces=0, n_tracks=0,
                           message="the decoder crashed the worker process on this file")
                atomic_write_bytes(out / "_parts" / f"{j.video_id}.json", json.dumps(row).encode())
                done(row, 0)
            finally:
                solo.shutdown()
        if queue:
            _run_pool(queue, out, params_hash, shas, cfg, workers, threads, done)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def consolidate(out: Path, jobs: list[VideoJob]) -> dict[str, int]:
    """Rebuild ``videos.parquet`` and ``faces.parquet`` from the part files of ``jobs``.

    Parts of videos no longer in the input folder are left on disk but not listed.

    Returns:
        Count of videos per status.
    """
    parts = out / "_parts"
    rows, face_files = [], []
    for j in jobs:
        p = parts / f"{j.video_id}.json"
        if not p.is_file():
            continue
        rows.append(json.loads(p.read_text()))
        fp = p.with_suffix(".parquet")
        if rows[-1].get("n_faces") and fp.is_file():
            face_files.append(fp)
    videos = pl.DataFrame(rows, schema=VIDEO_SCHEMA) if rows else pl.DataFrame(schema=VIDEO_SCHEMA)
    faces = (pl.concat([pl.read_parquet(f) for f in face_files], how="vertical")
             if face_files else pl.DataFrame(schema=FACE_SCHEMA))
    faces = faces.sort(["video_id", "frame_index", "track_id"])
    meta = {"facepipe_version": __version__, "stage_version": str(STAGE_VERSION)}
    for df, name in ((videos, "videos.parquet"), (faces, "faces.parquet")):
        with atomic_path(out / name) as tmp:
            df.write_parquet(tmp, metadata=meta)
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return counts
