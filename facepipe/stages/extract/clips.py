"""Clip mode of the extract stage (``sampling.mode: clips``): the sampled frames are buffered until a clip's frames
are all decoded, then the clip is processed as a whole: faces linked into tracks within the clip, each (track,
clip) kept or dropped by its gaps and scores, one crop transform per (track, clip) fitted over the clip's
landmarks (or one per frame), every frame of the clip cropped (a frame where the track was not detected is a gap:
box and landmarks interpolated, never dropped or renumbered) and, for a fake compared with its original, judged
frame by frame as in frame mode.

Clips are what the temporal forgery detectors read: FTCN (Zheng et al., ICCV 2021) and AltFreezing (Wang et al.,
CVPR 2023) 32 consecutive frames cropped once per clip; TALL (Xu et al., ICCV 2023) 4-frame clips. The clip plan
is the sampler's (:func:`facepipe.video.clip_indices`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from facepipe import _faults
from facepipe.faces.types import Face
from facepipe.stages.extract.config import ExtractConfig
from facepipe.stages.extract.crops import _compare_frame, _still_comparable, encode_image, landmarks68
from facepipe.stages.extract.state import KeptFace, VideoState

log = logging.getLogger(__name__)


@dataclass
class ClipFrame:
    """A decoded frame waiting for its clips: timestamp (s), (H, W, 3) uint8 RGB frame, its detections, and the
    original's frame at the same index when the fake is compared (else ``None``)."""

    ts: float
    frame: np.ndarray
    faces: list
    ref: np.ndarray | None


def add_clip_chunk(st: VideoState, chunk, detector, cfg: ExtractConfig, ref_chunk=None, detections=None) -> None:
    """Clip mode's :func:`~facepipe.stages.extract.crops.detect_and_crop`: detect the chunk's frames (or take
    ``detections``), buffer them, and process every clip whose frames are now all decoded."""
    compare = _still_comparable(st, chunk, ref_chunk)
    if detections is None:
        detections = detector.detect(chunk.frames)
    for i, (frame, fidx, ts, faces) in enumerate(zip(chunk.frames, chunk.indices, chunk.timestamps_s, detections)):
        st.clip_buf[int(fidx)] = ClipFrame(float(ts), frame, list(faces), ref_chunk.frames[i] if compare else None)
    process_clips(st, cfg, final=False)


def process_clips(st: VideoState, cfg: ExtractConfig, final: bool) -> None:
    """Process the clips of the sampler's plan whose frames are all buffered; with ``final`` (the video ended),
    count the others as dropped (their frames did not decode). Frames no pending clip needs leave the buffer."""
    plan = st.sampler.clips
    for k, idx in enumerate(plan):
        start = int(idx[0])
        if start in st.clips_done:
            continue
        if all(int(i) in st.clip_buf for i in idx):
            _one_clip(st, k, idx, cfg)
            st.clips_done.add(start)
        elif final:
            _dropped(st, "frames of the clip did not decode")
            st.clips_done.add(start)
    pending = [int(r[0]) for r in plan if int(r[0]) not in st.clips_done]
    lo = min(pending) if pending else None
    for i in [i for i in st.clip_buf if lo is None or i < lo]:
        del st.clip_buf[i]


def _dropped(st: VideoState, reason: str, n: int = 1) -> None:
    st.clips_dropped[reason] = st.clips_dropped.get(reason, 0) + n


def fill_gaps(seen: dict[int, Face], length: int) -> tuple[list[Face], list[bool]]:
    """A track's face at every position of a clip: detected ones as they are, gaps interpolated linearly (box and
    landmarks) between the nearest detected positions, or copied from the nearest one at the clip's ends.

    Args:
        seen: position in the clip (0 .. length-1) -> detected face; at least one.
        length: frames in the clip.

    Returns:
        (faces, one per position; per position ``True`` where the face is a gap). Gap faces score NaN.
    """
    pos = np.array(sorted(seen), dtype=np.float64)
    boxes = np.stack([seen[int(p)].box for p in pos]).astype(np.float64)
    lms = np.stack([seen[int(p)].landmarks for p in pos]).astype(np.float64).reshape(len(pos), 10)
    faces, gaps = [], []
    for t in range(length):
        if t in seen:
            faces.append(seen[t])
            gaps.append(False)
            continue
        box = np.array([np.interp(t, pos, boxes[:, j]) for j in range(4)])
        lm = np.array([np.interp(t, pos, lms[:, j]) for j in range(10)]).reshape(5, 2)
        faces.append(Face(box=box, landmarks=lm, score=float("nan")))
        gaps.append(True)
    return faces, gaps


def _clip_tracks(st: VideoState, frames: list[ClipFrame], cfg: ExtractConfig) -> list[dict[int, Face]]:
    """The clip's faces linked into tracks (gaps bridged anywhere within the clip), those with more than
    ``track.max_gap_share`` gaps or a mean score below ``track.min_mean_score`` dropped (counted), in decreasing
    summed face area, ``track.select`` applied. Each kept track is ``{position in the clip: face}``."""
    from facepipe.faces.track import link_tracks

    length = len(frames)
    ids = link_tracks([f.faces for f in frames], cfg.track.model_copy(update={"max_gap": length}))
    tracks: dict[int, dict[int, Face]] = {}
    for t, (cf, tids) in enumerate(zip(frames, ids)):
        for face, tid in zip(cf.faces, tids):
            tracks.setdefault(tid, {})[t] = face
    kept = []
    for tid in sorted(tracks):  # link_tracks numbers tracks by decreasing summed face area
        seen = tracks[tid]
        if length - len(seen) > cfg.track.max_gap_share * length:
            _dropped(st, f"more than {cfg.track.max_gap_share:g} of the clip's frames without the face")
        elif np.mean([f.score for f in seen.values()]) < cfg.track.min_mean_score:
            _dropped(st, f"mean detector score below {cfg.track.min_mean_score:g}")
        else:
            kept.append(seen)
    if cfg.track.select in ("main", "largest") and len(kept) > 1:
        _dropped(st, f"track.select {cfg.track.select}: not the clip's main track", len(kept) - 1)
        kept = kept[:1]
    return kept


def _matrices(faces: list[Face], gaps: list[bool], cfg: ExtractConfig) -> list[np.ndarray]:
    """Per frame of a (track, clip), its source->crop matrix: one for the clip (``align.clip_transform: clip``,
    fitted on the detected frames) or one per frame."""
    from facepipe.faces.align import clip_matrix, face_matrix

    if cfg.align.clip_transform == "clip":
        det = [f for f, g in zip(faces, gaps) if not g]
        m = clip_matrix(np.stack([f.box for f in det]), np.stack([f.landmarks for f in det]), cfg.align)
        return [m] * len(faces)
    return [face_matrix(f.box, f.landmarks, cfg.align) for f in faces]


def _one_clip(st: VideoState, k: int, idx: np.ndarray, cfg: ExtractConfig) -> None:
    """Track, align, crop (and compare) clip ``k`` (frame indices ``idx``); its frames join ``st.per_frame``."""
    from facepipe.faces.align import warp_crop

    frames = [st.clip_buf[int(i)] for i in idx]
    per_track = []
    for j, seen in enumerate(_clip_tracks(st, frames, cfg)):
        faces, gaps = fill_gaps(seen, len(frames))
        try:
            mats = _matrices(faces, gaps, cfg)
        except ValueError as e:
            log.warning("%s clip %d track %d: dropped: %s", st.job.rel, k, j, e)
            _dropped(st, "degenerate landmarks")
            continue
        per_track.append((j, faces, gaps, mats))
    st.n_clips += len(per_track)
    ext, start = cfg.output.format, int(idx[0])
    for t, (fidx, cf) in enumerate(zip(idx.tolist(), frames)):
        kept = []
        for j, faces, gaps, mats in per_track:
            name = f"{fidx:06d}_c{k}_f{j}"
            _faults.at_write(st.job.video_id)
            crop = warp_crop(cf.frame, mats[t], cfg.align.size)
            (st.tmp_dir / f"{name}.{ext}").write_bytes(encode_image(crop, ext, cfg.output.jpeg_quality,
                                                                    cfg.output.jpeg_subsampling))
            lm68 = landmarks68(crop, faces[t].box, mats[t]) if cfg.landmarks68 else None
            kept.append(KeptFace(faces[t], mats[t], name, crop_landmarks=lm68, clip_id=k, clip_start=start, track=j,
                                 gap=gaps[t]))
        if kept and st.compare and cf.ref is not None:
            _compare_frame(st, fidx, cf.frame, cf.ref, kept, cfg)
        st.per_frame.append(kept)
        st.frame_meta.append((int(fidx), cf.ts))
