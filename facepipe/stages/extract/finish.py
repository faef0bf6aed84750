"""A video after its last chunk: tracks and their quality, the pair's verdict, face labels, the crops' final
names, the face rows, the video row's counts and status, and its publication (crops folder, then part files)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from facepipe import _faults
from facepipe.stages.extract.clips import process_clips
from facepipe.stages.extract.config import ExtractConfig, preset_label
from facepipe.stages.extract.pair import pair_verdict
from facepipe.stages.extract.state import KeptFace, VideoState
from facepipe.stages.extract.tables import write_part

log = logging.getLogger(__name__)

Placed = tuple[tuple[int, float], KeptFace, int]
"""A face with its place: ((frame index, timestamp s), the face, its track)."""


def _select_tracks(st: VideoState, cfg: ExtractConfig) -> tuple[list[Placed], list[Placed], dict]:
    """Link the faces into tracks (preset deepfakebench: one per frame, no tracking), drop the poor tracks, number
    the kept ones by summed face area (track 0 = the main subject) and apply ``track.select``.

    Returns:
        (every face with its raw track, the kept faces with their final track, the dropped tracks and why).
    """
    from facepipe.faces.labels import filter_tracks
    from facepipe.faces.track import link_tracks

    if cfg.preset == "deepfakebench":  # one face per frame, no tracking (DeepfakeBench)
        raw_tracks = [[0] * len(kept) for kept in st.per_frame]
    else:
        raw_tracks = link_tracks([[k.face for k in kept] for kept in st.per_frame], cfg.track)
    flat = [(fm, k, t) for fm, kept, tids in zip(st.frame_meta, st.per_frame, raw_tracks) for k, t in zip(kept, tids)]
    keep, dropped = filter_tracks([t for _, _, t in flat], [k.face.score for _, k, _ in flat],
                                  st.sampler.n_sampled, cfg.track.min_share, cfg.track.min_mean_score)
    area: dict[int, float] = {}
    for _, k, t in flat:
        if t in keep:
            area[t] = area.get(t, 0.0) + k.face.area_px
    order = sorted(area, key=lambda t: (-area[t], t))
    renum = {t: i for i, t in enumerate(order)}
    if cfg.track.select in ("main", "largest"):  # the same rule for reals and fakes (TrackConfig)
        renum = {t: i for t, i in renum.items() if i == 0}
    return flat, [(fm, k, renum[t]) for fm, k, t in flat if t in renum], dropped


def _face_labels(st: VideoState, cfg: ExtractConfig, faces: list[Placed], scores) -> list[tuple]:
    """(label, label_source) per face: DeepfakeBench's preset labels every face with its video's label, else
    :func:`facepipe.faces.labels.assign_labels` (the pair's scores or the policy)."""
    from facepipe.faces.labels import assign_labels

    if cfg.preset == "deepfakebench" and st.job.label is not None:
        return [(int(st.job.label), "video")] * len(faces)
    # clips: a face its frame could not judge takes the median of its own (track, clip); the policy's main track is
    # track 0 of every clip
    tracks = [t if k.clip_id is None or scores is None else (k.clip_id, t) for _, k, t in faces]
    return assign_labels(st.job.label, tracks, [k.face.area_px for _, k, _ in faces], scores, cfg.labels)


def _face_rows(st: VideoState, cfg: ExtractConfig, detector, faces: list[Placed], labels, scores) -> list[dict]:
    """Give the labelled faces their final file names (crop, and mask when the label came from the comparison) and
    make their :data:`~facepipe.stages.extract.tables.FACE_SCHEMA` rows; unlabelled faces of a labelled video are
    left out."""
    ext = cfg.output.format
    dfb = cfg.preset == "deepfakebench"
    vid = st.job.video_id
    rows = []
    for ((fidx, ts), k, tid), (label, source) in zip(faces, labels):
        if st.job.label is not None and label is None:
            continue
        name = f"{fidx:06d}_{tid}" if k.clip_id is None else f"{fidx:06d}_c{k.clip_id}_{tid}"
        os.replace(st.tmp_dir / f"{k.name}.{ext}", st.tmp_dir / f"{name}.{ext}")
        mask_path = None
        if k.mask and (source in ("original_diff", "original_diff_uncertain") or dfb and scores is not None):
            os.replace(st.tmp_dir / k.mask, st.tmp_dir / f"{name}_mask.png")
            mask_path = f"faces/{vid}/{name}_mask.png"
        rows.append({
            "video_id": vid, "frame_index": fidx, "timestamp_s": ts, "track_id": int(tid),
            "box": k.face.box.tolist(), "landmarks": k.face.landmarks.tolist(),
            "score": None if k.gap else k.face.score,
            "face_size_px": k.face.size_px, "affine": k.matrix.tolist(),
            "crop_path": f"faces/{vid}/{name}.{ext}", "crop_mode": cfg.align.mode,
            "crop_size": cfg.align.size, "detector": detector.name, "detector_version": detector.version,
            "label": label, "video_label": st.job.label, "label_source": source,
            "manipulation_score": None if scores is None else k.score, "mask_path": mask_path,
            "preset": preset_label(cfg, detector),
            "crop_landmarks": None if k.crop_landmarks is None else k.crop_landmarks.tolist(),
            "clip_id": k.clip_id, "clip_start": k.clip_start, "gap": k.gap,
        })
    for leftover in st.tmp_dir.glob("*_f*"):  # provisional crops and masks of dropped faces
        leftover.unlink()
    return rows


def _count(st: VideoState, cfg: ExtractConfig, flat: list[Placed], faces_out: list[dict], scores) -> None:
    """The video row's face and track counts and its ``label_source``."""
    label = st.job.label
    tracks_out = {r["track_id"] for r in faces_out}
    if cfg.sampling.mode == "clips":
        st.row.update(n_clips=len({(r["clip_id"], r["track_id"]) for r in faces_out}),
                      n_clips_dropped=sum(st.clips_dropped.values()))
    st.row.update(n_faces=len(faces_out), n_tracks=len(tracks_out),
                  n_tracks_dropped=len({t for _, _, t in flat}) - len(tracks_out),
                  n_faces_dropped=len(flat) - len(faces_out) + st.redetect_dropped,
                  n_faces_fake=sum(1 for r in faces_out if r["label"] == 1),
                  n_faces_real=sum(1 for r in faces_out if r["label"] == 0),
                  label_source=(None if label is None else "video" if label == 0 or cfg.preset == "deepfakebench"
                                else "original_diff" if scores is not None else "policy"))


def _status(st: VideoState, detector, faces_out: list[dict], flat: list[Placed]) -> None:
    """The video row's ``status`` and ``message``."""
    row, sampler = st.row, st.sampler
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
    elif st.clips_dropped:
        row.update(status="no_face", message="no (track, clip) kept: " + "; ".join(
            f"{n} {why}" for why, n in sorted(st.clips_dropped.items())))
    elif st.redetect_dropped:
        row.update(status="no_face", message=f"{st.redetect_dropped} face(s) found, none re-detected on its crop "
                                             "(preset deepfakebench drops those frames)")
    else:
        row.update(status="no_face", message=f"no face scoring >= {detector.min_score} in {sampler.n_sampled} "
                                             "sampled frames")


def finish(st: VideoState, cfg: ExtractConfig, detector) -> list[dict]:
    """Tracks, track quality, labels, final file names; fills the row; returns the face rows."""
    st.row.update(frames_decoded=st.sampler.frames_decodable, frames_sampled=st.sampler.n_sampled)
    if cfg.sampling.mode == "clips":  # tracks were made per clip (facepipe.stages.extract.clips)
        process_clips(st, cfg, final=True)
        flat = [(fm, k, k.track) for fm, kept_ in zip(st.frame_meta, st.per_frame) for k in kept_]
        kept, dropped = flat, dict(st.clips_dropped)
    else:
        flat, kept, dropped = _select_tracks(st, cfg)
    scores = pair_verdict(st, cfg, [k for _, k, _ in kept])
    if st.row["pair_check"] is None and st.pair_note:
        st.row["pair_check"] = st.pair_note
    faces_out = _face_rows(st, cfg, detector, kept, _face_labels(st, cfg, kept, scores), scores)
    _count(st, cfg, flat, faces_out, scores)
    if dropped:
        log.info("%s: dropped %d track(s): %s", st.job.rel, len(dropped),
                 "; ".join(f"{t}: {why}" for t, why in sorted(dropped.items(), key=str)))
    _status(st, detector, faces_out, flat)
    return faces_out


def publish(out: Path, st: VideoState, face_rows: list[dict], seconds: float) -> tuple[dict, int]:
    """Crops folder first (rename), then the face rows, then the video row (marks the video done)."""
    final_dir = out / "faces" / st.job.video_id
    if face_rows:
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(st.tmp_dir, final_dir)
    else:
        shutil.rmtree(st.tmp_dir, ignore_errors=True)
        shutil.rmtree(final_dir, ignore_errors=True)
    write_part(out, st.row, face_rows, seconds)
    _faults.at_part(st.job.video_id)
    return st.row, len(face_rows)
