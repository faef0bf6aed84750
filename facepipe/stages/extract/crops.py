"""Per chunk of sampled frames: detect the faces, write their provisional crops, and (a fake compared with its
original) gather each face's difference evidence."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from facepipe import _faults
from facepipe.stages.extract.config import ExtractConfig
from facepipe.stages.extract.state import KeptFace, VideoState

log = logging.getLogger(__name__)

_SUBSAMPLING = {"444": "IMWRITE_JPEG_SAMPLING_FACTOR_444", "422": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
                "420": "IMWRITE_JPEG_SAMPLING_FACTOR_420"}


PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE)
"""libpng's row filters with zlib's run-length strategy: on 192 aligned 256 px crops of the shared FF++/DFDC clips
3.4 ms and 74 KB a crop, against 5.9 ms and 80 KB with OpenCV's default (level 3); lossless either way (issue 26)."""


def encode_image(image: np.ndarray, fmt: str, quality: int, subsampling: str = "444") -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 -> PNG/JPEG bytes (PNG: :data:`PNG_PARAMS`; JPEG: baseline, ``quality``,
    chroma ``subsampling``)."""
    arr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if fmt == "png":
        ok, buf = cv2.imencode(".png", arr, list(PNG_PARAMS))
    else:
        ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                             getattr(cv2, _SUBSAMPLING[subsampling])])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image.shape} image as {fmt}")
    return buf.tobytes()


MAX_KEPT_FRAMES = 256
"""Compared fake frames kept (working copies, <= 0.9 MB each at ``diff_max_side`` 640) for the lag test and its
correction; past this they are thinned and a temporal offset is no longer corrected (the pair falls back)."""


def keep_probe(st: VideoState, fidx: int, frame: np.ndarray, boxes: list, cfg: ExtractConfig) -> None:
    """Remember a compared fake frame (working copy) for the temporal-alignment test and its correction."""
    from facepipe.faces.labels import working_size

    h, w, s = working_size(frame.shape[0], frame.shape[1], cfg.labels.diff_max_side)
    small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA) if (h, w) != frame.shape[:2] else frame.copy()
    st.probes.append((fidx, small, [np.asarray(b, np.float64) * s for b in boxes], len(st.per_frame), s))
    if len(st.probes) > MAX_KEPT_FRAMES:
        st.probes, st.probes_thinned = st.probes[::2], True


def _still_comparable(st: VideoState, chunk, ref_chunk) -> bool:
    """Whether this chunk is compared with the original's (the same frames of both); sets the pair note when the
    comparison stops here."""
    compare = st.compare and ref_chunk is not None
    if st.compare and not compare:
        st.compare, st.pair_note = False, "the original ended before the fake (frame counts differ)"
    if compare and not np.array_equal(ref_chunk.indices, chunk.indices):
        compare = st.compare = False
        st.pair_note = (f"frame count {chunk.frames_decodable} vs original {ref_chunk.frames_decodable}: "
                        "the sampled frames differ")
    return compare


def _crop_faces(st: VideoState, frame, fidx, faces, detector, cfg: ExtractConfig) -> list[KeptFace]:
    """Crop one frame's faces (preset deepfakebench: its largest, whose crop must show a face again) and write the
    provisional crops."""
    from facepipe.faces.align import face_matrix, warp_crop

    ext = cfg.output.format
    dfb = cfg.preset == "deepfakebench"
    kept: list[KeptFace] = []
    if dfb:
        faces = faces[:1]  # DeepfakeBench: the largest face of the frame (dlib_hog orders by area)
    for k, face in enumerate(faces):
        try:
            m = face_matrix(face.box, face.landmarks, cfg.align)
        except ValueError as e:
            log.warning("%s frame %d: face skipped: %s", st.job.rel, fidx, e)
            continue
        crop = warp_crop(frame, m, cfg.align.size)
        crop_lm = landmarks68(crop, face.box, m) if cfg.landmarks68 and not dfb else None
        if dfb:  # landmarks re-detected on the BGR crop; a crop without a face drops the frame
            bgr = np.ascontiguousarray(crop[..., ::-1])
            rects = detector.rects(bgr, by_area=False)
            if not rects:
                st.redetect_dropped += 1
                continue
            crop_lm = detector.shape(bgr, rects[0][0])
        name = f"{int(fidx):06d}_f{k}"
        _faults.at_write(st.job.video_id)
        (st.tmp_dir / f"{name}.{ext}").write_bytes(encode_image(crop, ext, cfg.output.jpeg_quality,
                                                                cfg.output.jpeg_subsampling))
        kept.append(KeptFace(face, m, name, crop_landmarks=crop_lm))
    return kept


def landmarks68(crop: np.ndarray, box: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """dlib's 68 landmarks of a crop (``extract.landmarks68``), the face box mapped into the crop as fallback."""
    from facepipe.faces.align import transform_points
    from facepipe.faces.dlib68 import crop_landmarks68

    x1, y1, x2, y2 = (float(v) for v in box)
    corners = transform_points(np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]]), matrix)
    return crop_landmarks68(crop, np.concatenate([corners.min(0), corners.max(0)]))


def _compare_frame(st: VideoState, fidx, frame, ref_frame, kept: list[KeptFace], cfg: ExtractConfig) -> None:
    """A compared frame's evidence: its background, threshold and each kept face's difference (rescored in
    :func:`~facepipe.stages.extract.pair.pair_verdict`); kept as a probe for the lag test."""
    from facepipe.faces.labels import frame_evidence

    ev = frame_evidence(frame, ref_frame, [k_.face for k_ in kept], [k_.matrix for k_ in kept],
                        cfg.align.size, cfg.labels)
    st.backgrounds.append(ev.background)
    st.thresholds.append(ev.threshold)
    for k_, sc, dv, dc in zip(kept, ev.scores, ev.diffs, ev.diff_crops):
        k_.score, k_.diff, k_.diff_crop, k_.frame_thr = sc, dv, dc, ev.threshold
    if cfg.labels.max_lag > 0 and ev.threshold == ev.threshold:
        keep_probe(st, int(fidx), frame, [k_.face.box for k_ in kept], cfg)


def detect_and_crop(st: VideoState, chunk, detector, cfg: ExtractConfig, ref_chunk=None, detections=None) -> None:
    """Detect faces in one chunk of sampled frames (or take ``detections``, the detector's result on them), write
    provisional crops (and masks), remember them."""
    compare = _still_comparable(st, chunk, ref_chunk)
    if detections is None:
        detections = detector.detect(chunk.frames)
    for i, (frame, fidx, ts, faces) in enumerate(zip(chunk.frames, chunk.indices, chunk.timestamps_s, detections)):
        kept = _crop_faces(st, frame, fidx, faces, detector, cfg)
        if compare and kept:
            _compare_frame(st, fidx, frame, ref_chunk.frames[i], kept, cfg)
        st.per_frame.append(kept)
        st.frame_meta.append((int(fidx), float(ts)))
