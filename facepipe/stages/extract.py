"""The ``extract`` stage: videos -> aligned face crops, per-face labels and masks, ``faces.parquet``, ``videos.parquet``.

Layout of ``OUT``::

    faces/<video_id>/<frame:06d>_<track>.png        crops (or .jpg)
    faces/<video_id>/<frame:06d>_<track>_mask.png   difference masks of fake faces compared with their original
    faces.parquet                                   one row per face   (FACE_SCHEMA)
    videos.parquet                                  one row per input  (VIDEO_SCHEMA)
    _parts/<video_id>.json / .parquet               per-video results: the unit of resume
    .lock                                           held while a run writes OUT

Work is per video and incremental. A video's cache key hashes the stage fingerprint (parameters, stage
version, the source of every module this stage imports), the file (size + mtime, or sha256), its
manifest row (label, method, links) and, for a fake, its original's file: a change to any of them redoes
that video. Results with status ``error`` (unexpected failures: a bug, a full disk, a crashed or hung
worker) are recorded but never cached: the next run retries them.

A fake is processed together with its original (``source_ids[0]`` of the manifest, the target video) in
one task, decoding the original once for all its fakes; see :mod:`facepipe.faces.labels`. Tasks run in
``pebble`` worker processes with a per-video timeout; a hung or crashing video is an ``error`` row and the
run goes on. Each video's crops go to a temporary folder renamed into place, then its part files are
written by temp-name-and-rename, so a killed run loses nothing finished and leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import traceback
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import cv2
import numpy as np
import polars as pl
from pydantic import BaseModel, Field, model_validator
from tqdm.auto import tqdm

from facepipe import __version__, _faults
from facepipe._io import atomic_path, atomic_write_bytes
from facepipe.config import Section
from facepipe.errors import InputError, VideoError
from facepipe.faces.config import AlignConfig, DetectorConfig, LabelConfig, TrackConfig
from facepipe.ids import IMAGE_EXTS, VIDEO_EXTS, qualify, video_id_for
from facepipe.stages import contract
from facepipe.video import SamplingConfig

log = logging.getLogger(__name__)

STAGE = "extract"
STAGE_VERSION = 5  # 5: per-pair noise floor, photometric offset, lag test, label -1 (unmanipulated: ignore)
"""Bumped when the stage's output for the same input, parameters and code changes meaning."""

STATUSES = contract.STATUSES

MANIFEST_DATASET = "input"
"""The dataset name given to the rows of a manifest without a ``dataset`` column (``--manifest`` CSVs): only links
within the manifest use it, nothing written carries it. It must pass :func:`facepipe.ids.check_name` (the former
``"_"`` no longer does: key parts may not start or end with ``_``)."""

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
re-detected on the crop, crop pixels (integers, as DeepfakeBench saves them), else null."""

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
}
"""``videos.parquet``: ``path`` relative to ``--video-dir``; ``status`` one of :data:`STATUSES`;
``frames_decoded`` frames that really decode (can be fewer than ``frames_header``); ``width``/``height``
displayed size after ``rotation`` (degrees, FFmpeg's sign convention); ``n_tracks_dropped`` /
``n_faces_dropped`` removed by track quality or the label policy; ``label_source`` how this video's face
labels were decided; ``original_id`` the original compared with; ``pair_check`` why the pair was or was
not compared; ``background_diff`` the median background difference of the pair (grey levels);
``item_key`` the cache key the row was made under (with the stage fingerprint inside)."""


class OutputConfig(Section):
    """Crop encoding: lossless ``png`` (default) or ``jpg`` at ``jpeg_quality`` with chroma subsampling
    ``jpeg_subsampling`` (``444`` = none, as ICPR 2020's FF++ crops at q95 4:4:4; ``420`` = the usual web JPEG).

    JPEG crops are 3x smaller and 3x faster to decode (README: loader benchmark), but re-compression is a
    confound for forensic detectors: it rewrites the high-frequency content they learn from (on the shared real
    crops at q95 4:4:4: PSNR 49 dB, yet +15 % luma high-band DCT energy from 8x8 block quantisation), on top of
    whatever compression real and fake sources already differ by. Keep ``png`` unless storage or decoding bounds
    training, and then state it with your results."""

    format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    jpeg_subsampling: Literal["444", "422", "420"] = "444"


DEEPFAKEBENCH_PRESET = {
    "sampling": {"strategy": "uniform", "frame_count": "header"},
    "detector": {"name": "dlib_hog", "max_side": 100_000, "min_score": 0.0, "rotations": False},
    "align": {"mode": "arcface", "size": 256, "margin": 1.3},
    "track": {"select": "largest", "min_share": 0.0, "min_mean_score": 0.0},
}
"""What ``align.preset: deepfakebench`` sets (``sampling.num_frames`` stays yours; DeepfakeBench's default is 32):
DeepfakeBench's ``preprocess.py`` draws its indices from the header's frame count, detects with dlib on the full
frame without a score threshold, aligns at 256 px with margin 1.3, and keeps the largest face of every frame
without tracking (see :class:`~facepipe.faces.config.AlignConfig`). Its 81-point shape predictor is not
shipped: ``detector.dlib_81`` names it, else the 68-point model stands in (:func:`preset_label`)."""


def preset_label(cfg: "ExtractConfig", detector) -> str | None:
    """The ``preset`` recorded on face rows (and so shard samples): ``deepfakebench`` when the crops came from
    DeepfakeBench's 81-point predictor, ``deepfakebench-68`` from the 68-point stand-in; other presets as
    configured."""
    if cfg.preset != "deepfakebench":
        return cfg.preset
    return getattr(detector, "preset_name", "deepfakebench-68")


def _plain(v, set_only: bool = False):
    return v.model_dump(exclude_unset=set_only) if isinstance(v, BaseModel) else dict(v or {})


class ExtractConfig(Section):
    """Parameters of the ``extract`` stage (``params.yaml`` section ``extract``).

    ``workers`` (processes; 0 = in this process), ``timeout_s`` (per video; a task holding an original
    and its fakes gets it once per video), ``file_fingerprint`` (``stat`` = size + mtime, ``sha256`` =
    content), ``extensions`` (what ``--video-dir`` discovery picks up), ``engine`` and ``ray_address`` are run
    settings: they are not part of the stage fingerprint, and neither is ``detector.device``.

    ``engine``: ``local`` runs the per-video work in ``workers`` processes of this machine; ``ray`` runs it as Ray
    actors on the cluster at ``ray_address`` (``None``: ``RAY_ADDRESS`` or a Ray instance started for the run), one
    actor per ``workers`` (0: one per CPU of the cluster), with the same outputs, statuses and resume (see
    :func:`_run_ray`).
    """

    sampling: SamplingConfig = SamplingConfig()
    detector: DetectorConfig = DetectorConfig()
    align: AlignConfig = AlignConfig()
    track: TrackConfig = TrackConfig()
    labels: LabelConfig = LabelConfig()
    output: OutputConfig = OutputConfig()
    extensions: tuple[str, ...] = VIDEO_EXTS + IMAGE_EXTS
    workers: int = Field(2, ge=0)
    timeout_s: Optional[float] = Field(900.0, gt=0)
    file_fingerprint: Literal["stat", "sha256"] = "stat"
    engine: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """``align.preset`` overrides the sections it defines (:data:`DEEPFAKEBENCH_PRESET`); a value set otherwise
        is logged as overridden."""
        if not isinstance(data, dict):
            return data
        align = _plain(data.get("align"))
        if align.get("preset") != "deepfakebench":
            return data
        data = dict(data)
        for section, values in DEEPFAKEBENCH_PRESET.items():
            given = _plain(data.get(section))
            explicit = _plain(data.get(section), set_only=True)
            default = cls.model_fields[section].default.model_dump()
            changed = {k: explicit[k] for k, v in values.items()
                       if k in explicit and explicit[k] not in (v, default[k])}
            if changed:
                log.warning("extract.align.preset deepfakebench overrides extract.%s %s", section, changed)
            data[section] = {**given, **values}
        return data

    @property
    def preset(self) -> str | None:
        """The alignment preset in force (``deepfakebench``) or ``None``."""
        return self.align.preset

    def result_params(self) -> dict:
        """The parameters that change results (run settings left out)."""
        return self.model_dump(exclude={"extensions": True, "workers": True, "timeout_s": True,
                                        "file_fingerprint": True, "engine": True, "ray_address": True,
                                        "detector": {"device", "dlib_81"}})


def fingerprint(cfg: ExtractConfig, detector_id: str) -> str:
    """The stage fingerprint: parameters, resolved detector (``name@version``), stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.result_params(), "_detector": detector_id}, __name__)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class VideoJob:
    """One input. ``path`` absolute; ``rel`` relative to the video folder (``/`` separated).

    ``label``/``method``/``sources`` come from the manifest (``None``/empty without one); ``original`` is
    the video id of the original this run compares the fake with (``None``: none available);
    ``original_note`` says why not, when the manifest names one.
    """

    path: str
    rel: str
    video_id: str
    size: int
    mtime_ns: int
    label: int | None = None
    method: str | None = None
    sources: tuple[str, ...] = ()
    original: str | None = None
    original_note: str | None = None


def discover_videos(video_dir: str | Path, extensions: tuple[str, ...]) -> list[VideoJob]:
    """List the video files below ``video_dir`` (recursive, hidden entries skipped), sorted by path.

    Ids colliding after :func:`~facepipe.ids.video_id_for` (e.g. ``a.mp4`` and ``a.avi``) get the path
    hash appended.

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


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def jobs_from_manifest(video_dir: str | Path, manifest: pl.DataFrame) -> list[VideoJob]:
    """Inputs listed in a manifest (``path`` relative to ``video_dir`` or absolute; ids, labels and links as
    the manifest says).

    Paths may be video files or image-sequence folders. Listed paths that do not exist are still returned
    (``size`` -1) so the stage records them as ``decode_error`` instead of silently skipping. A fake's
    original is its first ``source_ids`` entry when that video is listed too.

    Raises:
        InputError: ``video_dir`` is missing or the manifest lists nothing.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"{root}: video folder does not exist")
    if manifest.height == 0:
        raise InputError("the manifest lists no videos")
    listed = set(manifest["video_id"].to_list())
    jobs = []
    cols = manifest.select("dataset", "path", "video_id", "label", "method", "source_ids").sort("path")
    for ds, rel, vid, label, method, sources in cols.iter_rows():
        p = root / rel
        try:
            st = p.stat()
            size = _tree_size(p) if p.is_dir() else st.st_size
            mtime = st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        original = note = None
        if label == 1 and sources:
            d, v = qualify(ds, sources[0])
            if d == ds and v in listed:
                original = v
            else:
                note = f"original {sources[0]} is not among this run's inputs"
        jobs.append(VideoJob(str(p.resolve()), rel, vid, size, mtime, None if label is None else int(label), method,
                             tuple(sources or ()), original, note))
    return jobs


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file (or of an image folder's files in name order), read in 1 MiB blocks."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Per-video work (runs in worker processes)

_WORKER: dict = {}


def _init_worker(cfg: ExtractConfig, threads: int, log_level: int) -> None:
    from facepipe.faces import create_face_detector

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    cv2.setNumThreads(1)
    _WORKER["detector"] = create_face_detector(cfg.detector, threads=threads)
    _WORKER["cfg"] = cfg


_SUBSAMPLING = {"444": "IMWRITE_JPEG_SAMPLING_FACTOR_444", "422": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
                "420": "IMWRITE_JPEG_SAMPLING_FACTOR_420"}


def _encode(image: np.ndarray, fmt: str, quality: int, subsampling: str = "444") -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> PNG/JPEG bytes (JPEG: baseline, ``quality``, chroma ``subsampling``)."""
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    else:
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                             getattr(cv2, _SUBSAMPLING[subsampling])])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


@dataclass
class Task:
    """One unit of worker work: an original (decoded once) and the fakes compared with it.

    ``reference`` is decoded as the fakes' original; it is also processed (crops, rows) when
    ``process_reference``. Without a reference, ``videos`` are processed alone (labels by policy).
    ``keys`` holds each processed video's cache key and ``shas`` the sha256 when computed.
    """

    reference: Optional[VideoJob]
    process_reference: bool
    videos: list[VideoJob]
    keys: dict[str, str]
    shas: dict[str, str]

    def processed(self) -> list[VideoJob]:
        return ([self.reference] if self.reference is not None and self.process_reference else []) + self.videos

    def size(self) -> int:
        return len(self.videos) + (1 if self.reference is not None else 0)


@dataclass
class _Kept:
    face: object
    matrix: np.ndarray
    name: str
    score: float | None = None
    mask: str | None = None
    crop_landmarks: np.ndarray | None = None
    diff: np.ndarray | None = None  # compared with the original: its box's difference values (working pixels)
    diff_crop: np.ndarray | None = None  # and its difference map warped like the crop (masks)
    frame_thr: float = float("nan")  # its frame's background threshold


@dataclass
class _VideoState:
    """A video being processed: its sampler, its faces so far, its row."""

    job: VideoJob
    row: dict
    tmp_dir: Path
    sampler: object = None
    info: object = None
    per_frame: list = field(default_factory=list)
    frame_meta: list = field(default_factory=list)
    compare: bool = False  # fake compared with the reference, frame by frame
    pair_note: str | None = None
    backgrounds: list = field(default_factory=list)
    thresholds: list = field(default_factory=list)  # per compared frame, its background threshold
    probes: list = field(default_factory=list)  # per compared frame (index, working uint8 copy, working boxes,
    # position in per_frame, scale): the lag test and its correction
    probes_thinned: bool = False
    reference: object = None  # the VideoJob of the original compared with
    done: bool = False
    redetect_dropped: int = 0  # preset deepfakebench: faces whose crop had no re-detected face


def _new_row(job: VideoJob, key: str, sha: str | None, detector_id: str) -> dict:
    row = {k: None for k in VIDEO_SCHEMA}
    row.update(video_id=job.video_id, path=job.rel, file_size=job.size, file_mtime_ns=job.mtime_ns, file_sha256=sha,
               item_key=key, detector=detector_id, n_faces=0, n_tracks=0, n_tracks_dropped=0, n_faces_dropped=0,
               frames_sampled=0, video_label=job.label, n_faces_fake=0, n_faces_real=0)
    return row


def _publish(out: Path, st: _VideoState, face_rows: list[dict], seconds: float) -> tuple[dict, int]:
    """Crops folder first (rename), then the face rows, then the video row (marks the video done)."""
    final_dir = out / "faces" / st.job.video_id
    parts = out / "_parts"
    if face_rows:
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(st.tmp_dir, final_dir)
    else:
        shutil.rmtree(st.tmp_dir, ignore_errors=True)
        shutil.rmtree(final_dir, ignore_errors=True)
    with atomic_path(parts / f"{st.job.video_id}.parquet") as tmp:
        pl.DataFrame(face_rows, schema=FACE_SCHEMA).write_parquet(tmp)
    atomic_write_bytes(parts / f"{st.job.video_id}.json", json.dumps({**st.row, "_seconds": round(seconds, 3),
                                                                      "_version": __version__}).encode())
    return st.row, len(face_rows)


def _detect_and_crop(st: _VideoState, chunk, detector, cfg: ExtractConfig, ref_chunk=None, detections=None) -> None:
    """Detect faces in one chunk of sampled frames (or take ``detections``, the detector's result on them), write
    provisional crops (and masks), remember them."""
    from facepipe.faces.align import face_matrix, warp_crop
    from facepipe.faces.labels import frame_evidence

    ext = cfg.output.format
    compare = st.compare and ref_chunk is not None
    if st.compare and not compare:
        st.compare, st.pair_note = False, "the original ended before the fake (frame counts differ)"
    if compare and not np.array_equal(ref_chunk.indices, chunk.indices):
        compare = st.compare = False
        st.pair_note = (f"frame count {chunk.frames_decodable} vs original {ref_chunk.frames_decodable}: "
                        "the sampled frames differ")
    dfb = cfg.preset == "deepfakebench"
    if detections is None:
        detections = detector.detect(chunk.frames)
    for i, (frame, fidx, ts, faces) in enumerate(zip(chunk.frames, chunk.indices, chunk.timestamps_s, detections)):
        kept: list[_Kept] = []
        if dfb:
            faces = faces[:1]  # DeepfakeBench: the largest face of the frame (dlib_hog orders by area)
        for k, face in enumerate(faces):
            try:
                m = face_matrix(face.box, face.landmarks, cfg.align)
            except ValueError as e:
                log.warning("%s frame %d: face skipped: %s", st.job.rel, fidx, e)
                continue
            crop = warp_crop(frame, m, cfg.align.size)
            crop_lm = None
            if dfb:  # landmarks re-detected on the BGR crop; a crop without a face drops the frame
                bgr = np.ascontiguousarray(crop[..., ::-1])
                rects = detector.rects(bgr, by_area=False)
                if not rects:
                    st.redetect_dropped += 1
                    continue
                crop_lm = detector.shape(bgr, rects[0][0])
            name = f"{int(fidx):06d}_f{k}"
            _faults.at_write(st.job.video_id)
            (st.tmp_dir / f"{name}.{ext}").write_bytes(_encode(crop, ext, cfg.output.jpeg_quality,
                                                                cfg.output.jpeg_subsampling))
            kept.append(_Kept(face, m, name, crop_landmarks=crop_lm))
        if compare and kept:
            ev = frame_evidence(frame, ref_chunk.frames[i], [k_.face for k_ in kept], [k_.matrix for k_ in kept],
                                cfg.align.size, cfg.labels)
            st.backgrounds.append(ev.background)
            st.thresholds.append(ev.threshold)
            for k_, sc, dv, dc in zip(kept, ev.scores, ev.diffs, ev.diff_crops):
                k_.score, k_.diff, k_.diff_crop, k_.frame_thr = sc, dv, dc, ev.threshold  # rescored in _finish
            if cfg.labels.max_lag > 0 and ev.threshold == ev.threshold:
                _keep_probe(st, int(fidx), frame, [k_.face.box for k_ in kept], cfg)
        st.per_frame.append(kept)
        st.frame_meta.append((int(fidx), float(ts)))


def _rescore(st: _VideoState, faces: list[_Kept], cfg: ExtractConfig) -> list[float | None]:
    """Score the compared faces against the pair's noise floor (:func:`facepipe.faces.labels.face_threshold`) and
    write their difference masks; returns the scores."""
    from facepipe.faces.labels import face_threshold, pair_threshold, rescore

    floor = pair_threshold(st.thresholds, cfg.labels)
    for k in faces:
        if k.diff is None and k.diff_crop is None:
            continue
        thr = face_threshold(k.frame_thr, floor, cfg.labels)
        (sc,), (mk,) = rescore([k.diff], [k.diff_crop], thr)
        k.score = sc
        if mk is not None:
            k.mask = f"{k.name}_mask.png"
            (st.tmp_dir / k.mask).write_bytes(_encode(mk, "png", 0))
        k.diff = k.diff_crop = None
    return [k.score for k in faces]


MAX_KEPT_FRAMES = 256
"""Compared fake frames kept (working copies, <= 0.9 MB each at ``diff_max_side`` 640) for the lag test and its
correction; past this they are thinned and a temporal offset is no longer corrected (the pair falls back)."""


def _keep_probe(st: _VideoState, fidx: int, frame: np.ndarray, boxes: list, cfg: ExtractConfig) -> None:
    """Remember a compared fake frame (working copy) for the temporal-alignment test and its correction."""
    from facepipe.faces.labels import working_size

    h, w, s = working_size(frame.shape[0], frame.shape[1], cfg.labels.diff_max_side)
    small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != frame.shape[:2] else frame.copy()
    st.probes.append((fidx, small, [np.asarray(b, np.float64) * s for b in boxes], len(st.per_frame), s))
    if len(st.probes) > MAX_KEPT_FRAMES:
        st.probes, st.probes_thinned = st.probes[::2], True


def _decode_original(st: _VideoState, indices: list[int]) -> dict[int, np.ndarray] | None:
    """The original's frames at ``indices`` (decord numbering = the sampler's), those that exist; ``None`` when
    decord cannot read it."""
    try:
        import decord

        vr = decord.VideoReader(str(st.reference.path), ctx=decord.cpu(0), num_threads=1)
        want = sorted({i for i in indices if 0 <= i < len(vr)})
        return dict(zip(want, vr.get_batch(want).asnumpy())) if want else {}
    except Exception as e:  # noqa: BLE001  decord raises its own error types
        log.info("%s: temporal-alignment test skipped (decord: %s)", st.job.rel, str(e)[:200])
        return None


def _correct_lag(st: _VideoState, cfg: ExtractConfig, lag: int) -> bool:
    """Compare every kept fake frame ``i`` with the original's frame ``i + lag`` instead (a constant temporal
    offset); frames whose partner does not exist are not judged. False when not possible (thinned frames)."""
    from dataclasses import replace

    from facepipe.faces.labels import frame_evidence

    if st.probes_thinned:
        return False
    got = _decode_original(st, [p[0] + lag for p in st.probes])
    if got is None:
        return False
    st.backgrounds, st.thresholds = [], []
    for fidx, small, _, pos, s in st.probes:
        kept = st.per_frame[pos]
        o = got.get(fidx + lag)
        for k in kept:
            k.score = k.diff = k.diff_crop = None
            k.frame_thr = float("nan")
        if o is None:
            continue
        faces = [replace(k.face, box=k.face.box * s, landmarks=k.face.landmarks * s) for k in kept]
        mats = []
        for k in kept:
            m = np.asarray(k.matrix, np.float64).copy()
            m[:, :2] /= s
            mats.append(m)
        ev = frame_evidence(small, o, faces, mats, cfg.align.size, cfg.labels)
        st.backgrounds.append(ev.background)
        st.thresholds.append(ev.threshold)
        for k, sc, dv, dc in zip(kept, ev.scores, ev.diffs, ev.diff_crops):
            k.score, k.diff, k.diff_crop, k.frame_thr = sc, dv, dc, ev.threshold
    return True


def _temporal_check(st: _VideoState, cfg: ExtractConfig) -> tuple[int | None, str]:
    """The pair's temporal-alignment test (:func:`facepipe.faces.labels.probe_lag` on ``lag_probes`` probes spread
    over the compared frames, the original's neighbouring frames decoded with decord).

    Returns:
        (the pair's lag: 0 when aligned or not testable (a still, an image folder, a file decord cannot
        read), ``None`` when not constant; the probes' evidence as text).
    """
    from facepipe.faces.labels import pair_lag, probe_lag, to_working

    lab = cfg.labels
    ref = st.reference
    if lab.max_lag <= 0 or ref is None or not st.probes or st.sampler.n_sampled <= 1:
        return 0, ""
    path = Path(ref.path)
    if path.is_dir() or path.suffix.lower() in IMAGE_EXTS:
        return 0, ""
    n_probe = min(lab.lag_probes, len(st.probes))
    pick = [st.probes[i] for i in np.unique(np.linspace(0, len(st.probes) - 1, n_probe).round().astype(int))]
    got = _decode_original(st, [p[0] + lag for p in pick for lag in range(-lab.max_lag, lab.max_lag + 1)])
    if got is None:
        return 0, ""
    lags, stats = [], []
    for fidx, small, boxes, _, _ in pick:
        h, w = small.shape[:2]
        o0 = got.get(fidx)
        if o0 is None or abs(o0.shape[1] / o0.shape[0] - w / h) > 0.02 * w / h:
            return 0, ""  # decord numbers or orients the frames otherwise: not testable
        originals = {lag: to_working(got[fidx + lag], (h, w)) for lag in range(-lab.max_lag, lab.max_lag + 1)
                     if fidx + lag in got}
        lag, stat = probe_lag(small.astype(np.float32), boxes, originals, lab)
        lags.append(lag)
        stats.append(stat)
    detail = ", ".join(f"frame {p[0]}: " + ("no clear lag" if lg is None else f"lag {lg:+d}") + " ("
                       + " ".join(f"{k:+d}:{v:.2f}" for k, v in sorted(st_.items())) + ")"
                       for p, lg, st_ in zip(pick, lags, stats))
    return pair_lag(lags), f"head-region difference by lag, grey levels: {detail}"


def _finish(st: _VideoState, cfg: ExtractConfig, detector) -> list[dict]:
    """Tracks, track quality, labels, final file names; fills the row; returns the face rows."""
    from facepipe.faces.labels import assign_labels, filter_tracks
    from facepipe.faces.track import link_tracks

    ext = cfg.output.format
    row = st.row
    row.update(frames_decoded=st.sampler.frames_decodable, frames_sampled=st.sampler.n_sampled)
    dfb = cfg.preset == "deepfakebench"
    if dfb:  # one face per frame, no tracking (DeepfakeBench)
        raw_tracks = [[0] * len(kept) for kept in st.per_frame]
    else:
        raw_tracks = link_tracks([[k.face for k in kept] for kept in st.per_frame], cfg.track)
    flat = [(fm, k, t) for fm, kept, tids in zip(st.frame_meta, st.per_frame, raw_tracks) for k, t in zip(kept, tids)]
    keep, dropped = filter_tracks([t for _, _, t in flat], [k.face.score for _, k, _ in flat],
                                  st.sampler.n_sampled, cfg.track.min_share, cfg.track.min_mean_score)
    # renumber the kept tracks by summed face area (track 0 = the main subject)
    area: dict[int, float] = {}
    for _, k, t in flat:
        if t in keep:
            area[t] = area.get(t, 0.0) + k.face.area_px
    order = sorted(area, key=lambda t: (-area[t], t))
    renum = {t: i for i, t in enumerate(order)}
    if cfg.track.select in ("main", "largest"):  # the same rule for reals and fakes (TrackConfig)
        renum = {t: i for t, i in renum.items() if i == 0}
    kept_faces = [(fm, k, renum[t]) for fm, k, t in flat if t in renum]
    # pair verdict
    scores = None
    if row.get("original_id") is not None:
        bgs = [b for b in st.backgrounds if b == b]
        bg = float(np.median(bgs)) if bgs else None
        row["background_diff"] = bg
        if st.compare and bg is not None and bg > cfg.labels.max_background_diff:
            st.compare = False
            st.pair_note = (f"median background difference {bg:.1f} grey levels > {cfg.labels.max_background_diff}: "
                            "not the same frames")
        corrected = None
        if st.compare and bg is not None:
            lag, evidence = _temporal_check(st, cfg)
            if lag is None:
                st.compare, st.pair_note = False, f"temporal_offset: no constant offset; {evidence}"
            elif lag != 0 and _correct_lag(st, cfg, lag):
                corrected = f"temporal offset {lag:+d} corrected: fake frame i compared with original frame i{lag:+d}"
                bgs = [b for b in st.backgrounds if b == b]
                bg = float(np.median(bgs)) if bgs else None
                row["background_diff"] = bg
            elif lag != 0:
                st.compare, st.pair_note = False, f"temporal_offset: {lag:+d} frames, not corrected; {evidence}"
        if st.compare and bg is not None:
            scores = _rescore(st, [k for _, k, _ in kept_faces], cfg)
            row["pair_check"] = (f"aligned (background difference {bg:.2f})" if corrected is None else
                                 f"aligned after {corrected} (background difference {bg:.2f})")
        elif st.compare:
            st.pair_note = "no sampled frame of the fake had a face and background to compare"
    if row["pair_check"] is None and st.pair_note:
        row["pair_check"] = st.pair_note
    if dfb and st.job.label is not None:  # DeepfakeBench labels every face with its video's label
        labels = [(int(st.job.label), "video")] * len(kept_faces)
    else:
        labels = assign_labels(st.job.label, [t for _, _, t in kept_faces],
                               [k.face.area_px for _, k, _ in kept_faces], scores, cfg.labels)
    faces_out = []
    for ((fidx, ts), k, tid), (label, source) in zip(kept_faces, labels):
        if st.job.label is not None and label is None:
            continue
        name = f"{fidx:06d}_{tid}"
        os.replace(st.tmp_dir / f"{k.name}.{ext}", st.tmp_dir / f"{name}.{ext}")
        mask_path = None
        if k.mask and (source in ("original_diff", "original_diff_uncertain") or dfb and scores is not None):
            os.replace(st.tmp_dir / k.mask, st.tmp_dir / f"{name}_mask.png")
            mask_path = f"faces/{st.job.video_id}/{name}_mask.png"
        faces_out.append({
            "video_id": st.job.video_id, "frame_index": fidx, "timestamp_s": ts, "track_id": int(tid),
            "box": k.face.box.tolist(), "landmarks": k.face.landmarks.tolist(), "score": k.face.score,
            "face_size_px": k.face.size_px, "affine": k.matrix.tolist(),
            "crop_path": f"faces/{st.job.video_id}/{name}.{ext}", "crop_mode": cfg.align.mode,
            "crop_size": cfg.align.size, "detector": detector.name, "detector_version": detector.version,
            "label": label, "video_label": st.job.label, "label_source": source,
            "manipulation_score": None if scores is None else k.score, "mask_path": mask_path,
            "preset": preset_label(cfg, detector),
            "crop_landmarks": None if k.crop_landmarks is None else k.crop_landmarks.tolist(),
        })
    for leftover in st.tmp_dir.glob("*_f*"):  # provisional crops and masks of dropped faces
        leftover.unlink()
    row.update(n_faces=len(faces_out), n_tracks=len({r["track_id"] for r in faces_out}),
               n_tracks_dropped=len({t for _, _, t in flat}) - len({r["track_id"] for r in faces_out}),
               n_faces_dropped=len(flat) - len(faces_out) + st.redetect_dropped,
               n_faces_fake=sum(1 for r in faces_out if r["label"] == 1),
               n_faces_real=sum(1 for r in faces_out if r["label"] == 0),
               label_source=(None if st.job.label is None else "video" if st.job.label == 0 or dfb else
                             "original_diff" if scores is not None else "policy"))
    if dropped:
        log.info("%s: dropped %d track(s): %s", st.job.rel, len(dropped),
                 "; ".join(f"{t}: {why}" for t, why in sorted(dropped.items())))
    sampler = st.sampler
    if sampler.decode_error:
        row.update(status="decode_error", message=sampler.decode_error + "; faces taken from the decodable frames")
    elif faces_out:
        msg = None
        if st.info.frames_header and sampler.frames_decodable != st.info.frames_header:
            msg = (f"header says {st.info.frames_header} frames, {sampler.frames_decodable} decode; sampled from "
                   "the decodable ones")
        row.update(status="ok", message=msg)
    elif flat:
        row.update(status="no_face", message=f"{len(flat)} face(s) found, none kept (track quality or label policy)")
    elif st.redetect_dropped:
        row.update(status="no_face", message=f"{st.redetect_dropped} face(s) found, none re-detected on its crop "
                                             "(preset deepfakebench drops those frames)")
    else:
        row.update(status="no_face", message=f"no face scoring >= {detector.min_score} in {sampler.n_sampled} "
                                             "sampled frames")
    return faces_out


def process_task(task: Task, out_dir: str, cfg: ExtractConfig | None = None, detector=None) -> list[tuple[dict, int]]:
    """Process one task (see :class:`Task`) and publish every processed video's crops and parts.

    Never raises for a bad video: problems are recorded in each video row's ``status`` and ``message``
    (``error`` for unexpected failures, which the next run retries).

    Returns:
        Per processed video: (video row as in :data:`VIDEO_SCHEMA`, number of faces written).
    """
    from facepipe.video import FrameSampler, probe

    cfg = cfg or _WORKER["cfg"]
    detector = detector or _WORKER["detector"]
    out = Path(out_dir)
    t0 = time.perf_counter()
    results: list[tuple[dict, int]] = []
    states: list[_VideoState] = []
    for job in task.processed():
        _faults.at_start(job.video_id)
        row = _new_row(job, task.keys[job.video_id], task.shas.get(job.video_id), detector.id)
        tmp = out / "faces" / f".{job.video_id}.tmp-{os.getpid()}"
        st = _VideoState(job, row, tmp)
        if job is not task.reference and task.reference is not None:
            row.update(original_id=task.reference.video_id)
            st.compare, st.reference = True, task.reference
        elif job.label == 1 and job.original_note:
            row.update(pair_check=job.original_note)
        states.append(st)

    def fail(st: _VideoState, status: str, message: str) -> None:
        st.row.update(status=status, message=message, n_faces=0, n_tracks=0)
        st.done = True
        shutil.rmtree(st.tmp_dir, ignore_errors=True)
        results.append(_publish(out, st, [], time.perf_counter() - t0))

    # Open everything; the reference (when only used as the original) too.
    ref_sampler = ref_info = None
    ref_note = None
    if task.reference is not None:
        try:
            ref_info = probe(task.reference.path)
        except VideoError as e:
            ref_note = f"original {task.reference.video_id} does not decode: {e}"
    for st in states:
        try:
            st.info = probe(st.job.path)
            st.row.update(fps=st.info.fps, frames_header=st.info.frames_header, width=st.info.width,
                          height=st.info.height, rotation=st.info.rotation, duration_s=st.info.duration_s,
                          codec=st.info.codec)
            shutil.rmtree(st.tmp_dir, ignore_errors=True)
            st.tmp_dir.mkdir(parents=True)
            st.sampler = FrameSampler(st.job.path, st.info, cfg.sampling,
                                      chunk_size=max(8, 64 // max(1, task.size())))
        except VideoError as e:
            fail(st, e.status, str(e))
            continue
        if st.compare:
            if ref_note:
                st.compare, st.pair_note = False, ref_note
            else:
                from facepipe.faces.labels import check_sizes

                why = check_sizes((st.info.height, st.info.width), (ref_info.height, ref_info.width), cfg.labels)
                if why:
                    st.compare, st.pair_note = False, why
    live = [st for st in states if not st.done]
    is_ref = {id(st) for st in live if task.reference is not None and st.job is task.reference}
    need_ref = any(st.compare for st in live)
    ref_state = None
    if need_ref:
        ref_state = next((st for st in live if id(st) in is_ref), None)
        ref_sampler = (ref_state.sampler if ref_state is not None else
                       FrameSampler(task.reference.path, ref_info, cfg.sampling,
                                    chunk_size=max(8, 64 // max(1, task.size()))))
    # Lockstep over chunks: the reference's chunk is compared with each fake's chunk of the same frames.
    iters = {id(st): iter(st.sampler) for st in live}
    ref_iter = None
    if need_ref:
        ref_iter = iters[id(ref_state)] if ref_state is not None else iter(ref_sampler)
    active = list(live)
    while active:
        ref_chunk = None
        if ref_iter is not None:
            try:
                ref_chunk = next(ref_iter)
            except StopIteration:
                ref_iter = None
            except VideoError as e:
                ref_iter, ref_note = None, f"original {task.reference.video_id} does not decode: {e}"
                if ref_state is not None:
                    fail(ref_state, e.status, str(e))
                    active.remove(ref_state)
                for st in active:
                    if st.compare:
                        st.compare, st.pair_note = False, ref_note
            except Exception as e:  # noqa: BLE001  unexpected: this task's videos all become 'error'
                for st in active:
                    fail(st, "error", f"unexpected error decoding the original: {type(e).__name__}: {e}")
                active = []
                break
        round_: list[tuple[_VideoState, object]] = []  # this round's chunk of every active video
        for st in list(active):
            try:
                chunk = ref_chunk if ref_state is not None and st is ref_state else next(iters[id(st)])
                if chunk is None:
                    raise StopIteration
            except StopIteration:
                active.remove(st)
                continue
            except VideoError as e:
                fail(st, e.status, str(e))
                active.remove(st)
                continue
            except Exception as e:  # noqa: BLE001
                log.error("%s: unexpected error:\n%s", st.job.rel, traceback.format_exc())
                fail(st, "error", f"unexpected error: {type(e).__name__}: {e}")
                active.remove(st)
                continue
            round_.append((st, chunk))
        # one detector call for the round: every video's frames in the same batches (a GPU's gain); when it
        # raises, each video is detected alone below so that only the one at fault fails
        dets: list = [None] * len(round_)
        if len(round_) > 1:
            try:
                dets = detector.detect_many([c.frames for _, c in round_])
            except Exception as e:  # noqa: BLE001
                log.warning("batched detection failed (%s: %s); detecting video by video", type(e).__name__, e)
        for (st, chunk), det in zip(round_, dets):
            try:
                _detect_and_crop(st, chunk, detector, cfg, ref_chunk if st.compare else None, det)
            except Exception as e:  # noqa: BLE001  a bug, a full disk: recorded, never cached
                log.error("%s: unexpected error:\n%s", st.job.rel, traceback.format_exc())
                fail(st, "error", f"unexpected error: {type(e).__name__}: {e}")
                active.remove(st)
        del round_, dets
    for st in states:
        if st.done:
            continue
        try:
            face_rows = _finish(st, cfg, detector)
            results.append(_publish(out, st, face_rows, time.perf_counter() - t0))
        except Exception as e:  # noqa: BLE001
            log.error("%s: unexpected error:\n%s", st.job.rel, traceback.format_exc())
            fail(st, "error", f"unexpected error: {type(e).__name__}: {e}")
    return results


def _process_in_worker(task: Task, out_dir: str) -> list[tuple[dict, int]]:
    return process_task(task, out_dir)


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class ExtractSummary:
    """What one run did. ``statuses`` counts every input's status after the run; ``problems`` the first
    messages of each problem status; ``labels`` faces per (label_source, label)."""

    processed: int = 0
    skipped: int = 0
    faces_written: int = 0
    seconds: float = 0.0
    detector: str = ""
    fingerprint: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""


def _is_done(part_json: Path, key: str, out: Path, video_id: str) -> bool:
    try:
        prev = json.loads(part_json.read_text())
    except (OSError, ValueError):
        return False
    if prev.get("item_key") != key or prev.get("status") == "error":
        return False
    if prev.get("n_faces") and not (out / "faces" / video_id).is_dir():
        return False
    return part_json.with_suffix(".parquet").is_file()


def _error_row(job: VideoJob, key: str, sha: str | None, detector_id: str, message: str) -> dict:
    row = _new_row(job, key, sha, detector_id)
    row.update(status="error", message=message)
    return row


def run(video_dir: str | Path, out_dir: str | Path, cfg: ExtractConfig, *, progress: bool = True,
        manifest: str | Path | None = None) -> ExtractSummary:
    """Run the extract stage.

    Args:
        video_dir: folder searched recursively for files with ``cfg.extensions`` (or the root the
            manifest's paths are relative to).
        out_dir: output folder (created; locked while the run writes it).
        cfg: stage parameters (``cfg.workers`` processes; 0 runs everything in this process).
        progress: show a tqdm bar over videos with faces/s.
        manifest: process exactly the videos this manifest lists, with its labels and original links
            (per-face labels need it); ``None`` = every video file under ``video_dir``, labels unknown.

    Returns:
        An :class:`ExtractSummary`.

    Raises:
        InputError: missing or empty ``video_dir`` (nothing is written then).
        DetectorError: the detector cannot be created.
        StageBusy: another run holds ``out_dir``.
    """
    from facepipe.faces import create_face_detector

    t0 = time.perf_counter()
    if manifest is not None:
        from facepipe.manifest import read_manifest

        jobs = jobs_from_manifest(video_dir, read_manifest(manifest, dataset=MANIFEST_DATASET))
    else:
        jobs = discover_videos(video_dir, cfg.extensions)
    cpu = os.cpu_count() or 1
    workers = cfg.workers
    threads = max(1, cpu // max(1, workers)) if workers else 0
    detector = create_face_detector(cfg.detector, threads=threads)  # also checks the detector before any work
    stage_fp = fingerprint(cfg, detector.id)
    log.info("detector %s, stage fingerprint %s, %d videos, %d workers", detector.id, stage_fp, len(jobs), workers)
    out = Path(out_dir)
    with contract.stage_lock(out, STAGE):
        (out / "faces").mkdir(parents=True, exist_ok=True)
        (out / "_parts").mkdir(parents=True, exist_ok=True)
        for stale in (out / "faces").glob(".*.tmp-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        for stale in [*out.glob(".*.tmp-*"), *(out / "_parts").glob(".*.tmp-*")]:
            stale.unlink(missing_ok=True)

        shas = ({j.video_id: file_sha256(j.path) for j in jobs if Path(j.path).exists()}
                if cfg.file_fingerprint == "sha256" else {})
        by_id = {j.video_id: j for j in jobs}

        def file_fp(j: VideoJob):
            return shas.get(j.video_id) if cfg.file_fingerprint == "sha256" else (j.size, j.mtime_ns)

        keys = {}
        for j in jobs:
            orig = by_id.get(j.original) if j.original else None
            keys[j.video_id] = contract.item_key(stage_fp, file_fp(j), j.label, j.method, list(j.sources),
                                                 file_fp(orig) if orig else None)
        pending = {j.video_id for j in jobs
                   if not _is_done(out / "_parts" / f"{j.video_id}.json", keys[j.video_id], out, j.video_id)}
        tasks = _plan(jobs, pending, by_id, keys, shas)
        summary = ExtractSummary(skipped=len(jobs) - len(pending), detector=detector.id, fingerprint=stage_fp,
                                 out_dir=str(out))
        if summary.skipped:
            log.info("%d of %d videos already done with this code and these parameters: skipped", summary.skipped,
                     len(jobs))
        bar = tqdm(total=len(pending), unit="video", desc="extract", disable=not progress or not pending,
                   dynamic_ncols=True)
        t_run = time.perf_counter()

        def done(row: dict, n: int) -> None:
            summary.processed += 1
            summary.faces_written += n
            bar.update(1)
            rate = summary.faces_written / max(time.perf_counter() - t_run, 1e-9)
            bar.set_postfix(faces=summary.faces_written, faces_s=f"{rate:.1f}", refresh=False)
            if row["status"] in ("decode_error", "unsupported", "error"):
                tqdm.write(f"{row['path']}: {row['status']}: {row['message']}")

        if tasks and cfg.engine == "ray":
            del detector
            _run_ray(tasks, out, cfg, done)
        elif tasks and workers == 0:
            for t in tasks:
                for r in process_task(t, str(out), cfg, detector):
                    done(*r)
        elif tasks:
            del detector
            _run_pool(tasks, out, cfg, workers, threads, done)
        bar.close()
        rows = consolidate(out, jobs)
    summary.statuses, summary.problems = contract.status_summary(rows)
    faces = pl.read_parquet(out / "faces.parquet", columns=["label", "label_source"])
    for src, lab, n in faces.group_by("label_source", "label").len().sort("label_source", "label").iter_rows():
        summary.labels[f"{src or 'unlabelled'}:{'fake' if lab == 1 else 'real' if lab == 0 else '?'}"] = n
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan(jobs: list[VideoJob], pending: set[str], by_id: dict[str, VideoJob], keys: dict[str, str],
          shas: dict[str, str]) -> list[Task]:
    """Group pending videos into tasks: each original with its pending fakes (decoded once), the rest alone."""
    fakes_of: dict[str, list[VideoJob]] = {}
    for j in jobs:
        if j.video_id in pending and j.original is not None:
            fakes_of.setdefault(j.original, []).append(j)
    tasks = []
    grouped = {f.video_id for fs in fakes_of.values() for f in fs}
    for j in jobs:
        if j.video_id in grouped:
            continue
        fakes = fakes_of.pop(j.video_id, [])
        if j.video_id in pending or fakes:
            tasks.append(Task(j, j.video_id in pending, fakes, keys, shas))
    for orig, fakes in fakes_of.items():  # originals that are fakes themselves (chains) or not planned above
        tasks.append(Task(by_id[orig], False, fakes, keys, shas))
    return tasks


def _split(task: Task) -> list[Task]:
    """One task per processed video (each fake keeps its original): isolates the video that failed."""
    out = []
    if task.reference is not None and task.process_reference:
        out.append(Task(task.reference, True, [], task.keys, task.shas))
    out += [Task(task.reference, False, [v], task.keys, task.shas) for v in task.videos]
    return out


def _run_pool(tasks: list[Task], out: Path, cfg: ExtractConfig, workers: int, threads: int, done) -> None:
    """Run tasks in a ``pebble`` process pool (spawned workers, each with its own face detector).

    A task that times out (``timeout_s`` per video it holds) or whose worker dies is split into one task
    per video and retried once; a single video that fails again gets an ``error`` row (never cached).
    """
    from pebble import ProcessExpired, ProcessPool

    pool = ProcessPool(max_workers=workers, initializer=_init_worker,
                       initargs=(cfg, threads, logging.getLogger().level), context=mp.get_context("spawn"))
    queue = [(t, False) for t in tasks]
    try:
        inflight = {}
        while queue or inflight:
            while queue and len(inflight) < 2 * workers:
                t, retried = queue.pop(0)
                timeout = cfg.timeout_s * t.size() if cfg.timeout_s else None
                inflight[pool.schedule(_process_in_worker, args=(t, str(out)), timeout=timeout)] = (t, retried)
            fut = next(iter(_wait_any(inflight)))
            t, retried = inflight.pop(fut)
            try:
                for r in fut.result():
                    done(*r)
                continue
            except FutureTimeout:
                why = f"timed out after {cfg.timeout_s:.0f} s per video (hung decoder?); the worker was stopped"
            except ProcessExpired as e:
                why = f"the worker process died ({e}): a decoder crash or out of memory"
            except Exception as e:  # noqa: BLE001  an exception the task itself could not record
                why = f"unexpected error: {type(e).__name__}: {e}"
            _failed(t, retried, why, out, queue, done)
    finally:
        pool.stop()
        pool.join()


def _failed(t: Task, retried: bool, why: str, out: Path, queue: list, done) -> None:
    """A task that did not return: split into one task per video and queued again once; a single video that
    fails again gets an ``error`` row (never cached: its key does not count as done)."""
    unfinished = [v for v in t.processed() if not _part_has_key(out, v, t.keys[v.video_id])]
    if not unfinished:
        return
    if t.size() > 1 and not retried and len(t.processed()) > 1:
        log.warning("a task of %d videos failed (%s); retrying them one by one", len(t.processed()), why)
        queue.extend((s, True) for s in _split(t) if any(v in unfinished for v in s.processed()))
        return
    for v in unfinished:
        row = _error_row(v, t.keys[v.video_id], t.shas.get(v.video_id), "", why)
        try:
            atomic_write_bytes(out / "_parts" / f"{v.video_id}.json", json.dumps(row).encode())
            with atomic_path(out / "_parts" / f"{v.video_id}.parquet") as tmp:
                pl.DataFrame([], schema=FACE_SCHEMA).write_parquet(tmp)
        except OSError as e:
            log.error("%s: cannot record the error row: %s", v.rel, e)
        done(row, 0)


class _RayExtractor:
    """A Ray actor holding one face detector (the pool worker of the ``ray`` engine)."""

    def __init__(self, cfg: ExtractConfig, threads: int, log_level: int) -> None:
        _init_worker(cfg, threads, log_level)

    def run(self, task: Task, out_dir: str) -> list[tuple[dict, int]]:
        return _process_in_worker(task, out_dir)


def _run_ray(tasks: list[Task], out: Path, cfg: ExtractConfig, done) -> None:
    """Run tasks on a Ray cluster: actors (one detector each) take tasks from a queue the driver keeps.

    Each actor reserves ``num_cpus`` = the cluster's CPUs / actors (at least 1; onnxruntime uses as many threads),
    and a share of a GPU when the cluster has GPUs and ``detector.device`` is not ``cpu`` (the detector then runs
    on onnxruntime's CUDA provider). An actor decodes its videos itself: 32 decoded 1080p frames are ~200 MB, more
    than the video file, so decoding where the detector runs moves the least data. Videos and ``out`` must be at
    the same paths on every node (a shared file system); actors write part files there exactly as local workers
    do, and the driver consolidates the tables, so outputs, statuses and resume are the local engine's.

    Timeouts and failures as in :func:`_run_pool`: an actor past ``timeout_s`` per video is killed and replaced,
    an actor that dies is replaced, and the task is split and retried once, then recorded as ``error``.

    Raises:
        InputError: Ray is not installed, or the cluster cannot be reached.
    """
    try:
        import ray
        from ray.exceptions import RayActorError
    except ImportError:
        raise InputError("engine 'ray' needs Ray: pip install 'facepipe[ray]'") from None
    started = not ray.is_initialized()
    if started and cfg.ray_address and cfg.ray_address not in ("auto", "local") and "://" not in cfg.ray_address:
        _check_reachable(cfg.ray_address)  # ray.init retries an unreachable GCS for minutes
    if started:
        try:
            ray.init(address=cfg.ray_address, ignore_reinit_error=True, log_to_driver=False,
                     include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise InputError(f"cannot reach the Ray cluster at {cfg.ray_address or 'RAY_ADDRESS/local'}: {e}") from e
    try:
        res = ray.cluster_resources()
        cpus = max(1, int(res.get("CPU", 1)))
        actors_n = cfg.workers or cpus
        gpus = res.get("GPU", 0) if cfg.detector.device != "cpu" else 0
        threads = max(1, cpus // actors_n)
        opts = {"num_cpus": threads, "max_restarts": 0}
        if gpus:
            opts["num_gpus"] = min(1.0, gpus / actors_n)
        actor_cls = ray.remote(_RayExtractor)
        level = logging.getLogger().level

        def new_actor():
            return actor_cls.options(**opts).remote(cfg, threads, level)

        idle = [new_actor() for _ in range(actors_n)]
        log.info("ray engine: %d actors (%s each) on %d nodes", actors_n, opts,
                 sum(1 for n in ray.nodes() if n.get("Alive")))
        queue = [(t, False) for t in tasks]
        inflight: dict = {}  # ObjectRef -> (task, retried, actor, started)
        while queue or inflight:
            while queue and idle:
                t, retried = queue.pop(0)
                a = idle.pop()
                inflight[a.run.remote(t, str(out))] = (t, retried, a, time.monotonic())
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            now = time.monotonic()
            for ref in ready:
                t, retried, a, _ = inflight.pop(ref)
                try:
                    for r in ray.get(ref):
                        done(*r)
                    idle.append(a)
                    continue
                except RayActorError as e:
                    why = f"the Ray actor died ({type(e).__name__}): a decoder crash, out of memory or a lost node"
                    idle.append(new_actor())
                except Exception as e:  # noqa: BLE001  an exception the task itself could not record
                    cause = getattr(e, "cause", None) or e
                    why = f"unexpected error: {type(cause).__name__}: {cause}"
                    idle.append(a)
                _failed(t, retried, why, out, queue, done)
            if cfg.timeout_s:
                for ref, (t, retried, a, t0) in list(inflight.items()):
                    if now - t0 > cfg.timeout_s * t.size():
                        inflight.pop(ref)
                        ray.kill(a)
                        idle.append(new_actor())
                        _failed(t, retried, f"timed out after {cfg.timeout_s:.0f} s per video (hung decoder?); "
                                "the Ray actor was stopped", out, queue, done)
        for a in idle:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at a Ray ``host:port`` address.

    Raises:
        InputError: the address is malformed or refuses / does not answer a TCP connection within ``timeout_s``.
    """
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address {address!r}: expected host:port (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address}: {e}") from None


def _wait_any(futures):
    import concurrent.futures as cf

    finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
    return finished


def _part_has_key(out: Path, job: VideoJob, key: str) -> bool:
    try:
        prev = json.loads((out / "_parts" / f"{job.video_id}.json").read_text())
    except (OSError, ValueError):
        return False
    return prev.get("item_key") == key and prev.get("status") != "error"


def consolidate(out: Path, jobs: list[VideoJob]) -> list[dict]:
    """Rebuild ``videos.parquet`` and ``faces.parquet`` from the part files of ``jobs`` (temp name, then rename).

    Parts of videos no longer in the input are left on disk but not listed. Both tables are sorted and
    hold no timing, so the same inputs, parameters and code give byte-identical tables.

    Returns:
        The video rows.
    """
    parts = out / "_parts"
    rows, face_files = [], []
    for j in jobs:
        p = parts / f"{j.video_id}.json"
        if not p.is_file():
            continue
        r = json.loads(p.read_text())
        rows.append({k: r.get(k) for k in VIDEO_SCHEMA})
        fp = p.with_suffix(".parquet")
        if r.get("n_faces") and fp.is_file():
            face_files.append(fp)
    videos = pl.DataFrame(rows, schema=VIDEO_SCHEMA).sort("video_id") if rows else pl.DataFrame(schema=VIDEO_SCHEMA)
    faces = (pl.concat([pl.read_parquet(f) for f in face_files], how="vertical")
             if face_files else pl.DataFrame(schema=FACE_SCHEMA))
    faces = faces.sort(["video_id", "frame_index", "track_id"])
    meta = {"facepipe_version": __version__, "stage_version": str(STAGE_VERSION)}
    for df, name in ((videos, "videos.parquet"), (faces, "faces.parquet")):
        with atomic_path(out / name) as tmp:
            df.write_parquet(tmp, metadata=meta)
    return rows
