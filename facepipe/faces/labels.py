"""Per-face labels: which faces of a fake video were manipulated, decided against its original.

Forgery datasets label *videos*; a fake video can hold untouched faces (DFDC swaps one of several
people; detectors also fire on the background). Training and evaluating on "every face of a fake video
is fake" then teaches models that bystanders and posters are fakes. The DFDC winning solutions decided
per face by comparing each fake frame with its original; this module does the same:

1. The fake and its original (the *target* video whose frames the fake modifies: FF++ ``target_source``
   names it first) are decoded at the same frame indices, downscaled to ``diff_max_side`` and compared:
   ``D = blur(mean_c |fake - original|)`` in grey levels (0-255).
2. Both videos were compressed separately, so ``D`` is never zero. The *background difference* of a
   frame is ``D`` outside every detected face (each box grown to 1.8 times its longer side) and outside
   compact areas that differ (a manipulated face the detector missed); its ``background_quantile``
   (0.999) is the frame's threshold.
3. A face's ``manipulation_score`` is the share of its box where ``D`` exceeds that threshold, and its
   difference mask (``D`` above the threshold) is warped like the crop, giving localisation targets
   (DeepfakeBench has masks for FF++ only).
4. The pair must be frame-aligned: the same number of decodable frames (the sampled indices agree),
   the same displayed size (or the same aspect ratio, the original then resized), and a median
   background difference of at most ``max_background_diff``. Otherwise no face is scored and the
   video falls back to the label policy (:func:`assign_labels`).

All coordinates are pixels of the upright source frame unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from facepipe.faces.config import LabelConfig
from facepipe.faces.types import Face

BACKGROUND_EXPAND = 1.8
"""Faces are excluded from the background as squares of this many times their box's longer side."""

MIN_BACKGROUND_SHARE = 0.02
"""Frames whose background (outside the grown face squares) covers less than this share of the frame are
compared on everything outside the plain boxes; below that again the frame gives no evidence."""


def working_size(height: int, width: int, max_side: int) -> tuple[int, int, float]:
    """Size of the comparison copy of a ``height`` x ``width`` frame.

    Returns:
        (h, w, scale) with ``scale = h / height`` <= 1 (source pixels times ``scale`` = working pixels).
    """
    scale = min(1.0, max_side / max(height, width))
    h, w = max(1, round(height * scale)), max(1, round(width * scale))
    return h, w, h / height


def to_working(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w, 3) float32 at ``size = (h, w)`` (area interpolation)."""
    h, w = size
    if frame.shape[:2] != (h, w):
        frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return frame.astype(np.float32)


def difference_map(fake: np.ndarray, original: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Blurred mean absolute RGB difference.

    Args:
        fake, original: (h, w, 3) float32 RGB in [0, 255], same size.
        blur_sigma: Gaussian sigma in pixels (0 = none); suppresses compression noise, which is thin and
            edge-aligned, more than manipulations, which cover areas.

    Returns:
        (h, w) float32 grey levels.
    """
    d = np.abs(fake - original).mean(axis=2)
    return cv2.GaussianBlur(d, (0, 0), blur_sigma) if blur_sigma > 0 else d


def background_mask(shape: tuple[int, int], boxes: Sequence[np.ndarray], expand: float = BACKGROUND_EXPAND) -> np.ndarray:
    """True outside every face: each box (working pixels, x1 y1 x2 y2) grown to a square of ``expand``
    times its longer side about its centre.

    Returns:
        (h, w) bool.
    """
    h, w = shape
    m = np.ones((h, w), bool)
    for b in boxes:
        x1, y1, x2, y2 = (float(v) for v in b)
        cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * expand / 2
        m[max(0, int(cy - r)):max(0, int(np.ceil(cy + r))), max(0, int(cx - r)):max(0, int(np.ceil(cx + r)))] = False
    return m


@dataclass(frozen=True)
class FrameEvidence:
    """What one fake frame says about its faces.

    Attributes:
        background: median background difference (grey levels), the pair-alignment statistic.
        threshold: the frame's difference threshold (``background_quantile`` of the background).
        scores: per face, ``manipulation_score`` in [0, 1] (share of its box above the threshold), or
            ``None`` when the frame had too little background to judge.
        masks: per face, (size, size) uint8 difference mask warped like the crop (255 = differs from the
            original beyond the background), or ``None``.
    """

    background: float
    threshold: float
    scores: list[float | None]
    masks: list[np.ndarray | None]


def frame_evidence(fake: np.ndarray, original: np.ndarray, faces: Sequence[Face], matrices: Sequence[np.ndarray],
                   crop_size: int, cfg: LabelConfig) -> FrameEvidence:
    """Score every face of one fake frame against the original frame.

    Args:
        fake: (H, W, 3) uint8 RGB, the fake frame (upright).
        original: (H', W', 3) uint8 RGB, the original at the same frame index; resized to the fake's
            size when it differs (the caller checked the aspect ratio).
        faces: detected faces of the fake frame, source pixels.
        matrices: per face, the (2, 3) source->crop matrix of its crop.
        crop_size: crop side in pixels.
        cfg: labelling parameters.

    Returns:
        A :class:`FrameEvidence`.
    """
    H, W = fake.shape[:2]
    h, w, s = working_size(H, W, cfg.diff_max_side)
    d = difference_map(to_working(fake, (h, w)), to_working(original, (h, w)), cfg.blur_sigma)
    boxes = [f.box * s for f in faces]
    bg = background_mask((h, w), boxes)
    if bg.mean() < MIN_BACKGROUND_SHARE:
        bg = background_mask((h, w), boxes, expand=1.0)
    if bg.mean() < MIN_BACKGROUND_SHARE / 4:
        n = len(faces)
        return FrameEvidence(float("nan"), float("nan"), [None] * n, [None] * n)
    bg = _without_compact_differences(d, bg, cfg.background_outlier_mad)
    values = d[bg]
    thr = float(np.quantile(values, cfg.background_quantile))
    above = d > thr
    scores: list[float | None] = []
    masks: list[np.ndarray | None] = []
    work_mask = above.astype(np.uint8) * 255 if cfg.masks else None
    for b, m in zip(boxes, matrices):
        x1, y1 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
        x2, y2 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
        region = above[y1:y2, x1:x2]
        scores.append(float(region.mean()) if region.size else None)
        if work_mask is not None:
            mw = np.asarray(m, dtype=np.float64).copy()
            mw[:, :2] /= s  # working pixels -> source pixels -> crop pixels
            warped = cv2.warpAffine(work_mask, mw, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            masks.append(np.where(warped >= 128, 255, 0).astype(np.uint8))
        else:
            masks.append(None)
    return FrameEvidence(float(np.median(values)), thr, scores, masks)


LOCAL_WINDOW = 15
"""Side (working pixels) of the box filter that tells compact differences from compression noise."""


def _without_compact_differences(d: np.ndarray, bg: np.ndarray, k: float) -> np.ndarray:
    """The background minus compact areas that differ (a manipulated face the detector missed, a changed
    logo): where the local mean of ``d`` exceeds the background's median local mean by ``k`` robust
    standard deviations (1.4826 MAD), grown by 4 pixels. Compression noise is thin and scattered, so its
    local mean stays low; without this, a few per cent of manipulated background lift the quantile
    threshold above every face's difference. Falls back to ``bg`` when too little would remain.

    Args:
        d: (h, w) float32 difference map.
        bg: (h, w) bool background mask.
        k: robust standard deviations.

    Returns:
        (h, w) bool.
    """
    local = cv2.blur(d, (LOCAL_WINDOW, LOCAL_WINDOW))
    lb = local[bg]
    med = float(np.median(lb))
    mad = 1.4826 * float(np.median(np.abs(lb - med)))
    compact = cv2.dilate((local > med + k * mad).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    clean = bg & ~compact
    return clean if clean.mean() >= MIN_BACKGROUND_SHARE else bg


def check_sizes(fake_hw: tuple[int, int], original_hw: tuple[int, int], cfg: LabelConfig) -> str | None:
    """``None`` when a fake and its original can be compared pixel to pixel, else the reason.

    Sizes are the displayed (upright) frame sizes. Different sizes pass when ``resize_original`` and the
    aspect ratios agree within 1 %.
    """
    if fake_hw == original_hw:
        return None
    ra, rb = fake_hw[1] / fake_hw[0], original_hw[1] / original_hw[0]
    if cfg.resize_original and abs(ra - rb) <= 0.01 * ra:
        return None
    return f"frame size {fake_hw[1]}x{fake_hw[0]} vs original {original_hw[1]}x{original_hw[0]}"


def assign_labels(video_label: int | None, tracks: Sequence[int], areas: Sequence[float],
                  scores: Sequence[float | None] | None, cfg: LabelConfig) -> list[tuple[int | None, str | None]]:
    """Label every face of one video.

    Args:
        video_label: the manifest's label of the video (0 real, 1 fake, ``None`` unknown).
        tracks: per face, its track id.
        areas: per face, its box area (source pixels squared).
        scores: per face, ``manipulation_score`` (``None`` where a frame could not be judged), or ``None``
            for the whole video when there is no usable original.
        cfg: label policy.

    Returns:
        Per face ``(label, label_source)``; ``label`` is ``None`` for a face to drop (and for every face of
        a video of unknown label, whose source is then ``None`` too).
    """
    n = len(tracks)
    if video_label is None:
        return [(None, None)] * n
    if video_label == 0:
        return [(0, "video")] * n
    if scores is not None:
        # A face its frame could not judge takes the median score of its track's judged faces.
        by_track: dict[int, list[float]] = {}
        for t, sc in zip(tracks, scores):
            if sc is not None:
                by_track.setdefault(t, []).append(sc)
        out = []
        for t, sc in zip(tracks, scores):
            if sc is None:
                sc = float(np.median(by_track[t])) if t in by_track else None
            if sc is None:
                out.append((None, "original_diff"))
            elif sc >= cfg.min_score:
                out.append((1, "original_diff"))
            else:
                out.append((0 if cfg.unmanipulated == "real" else None, "original_diff"))
        return out
    if cfg.policy == "all":
        return [(1, "policy")] * n
    if cfg.policy == "drop" or n == 0:
        return [(None, "policy")] * n
    total: dict[int, float] = {}
    for t, a in zip(tracks, areas):
        total[t] = total.get(t, 0.0) + a
    main = min(total, key=lambda t: (-total[t], t))
    return [(1, "policy") if t == main else (None, "policy") for t in tracks]


def filter_tracks(tracks: Sequence[int], scores: Sequence[float], n_sampled: int, min_share: float,
                  min_mean_score: float) -> tuple[set[int], dict[int, str]]:
    """Track quality: which tracks to keep.

    Args:
        tracks: per face, its track id.
        scores: per face, the detector score.
        n_sampled: frames sampled from the video.
        min_share: a kept track appears in at least this share of the sampled frames.
        min_mean_score: and its mean detector score is at least this.

    With a single sampled frame (a still image) there is no persistence to judge: every track is kept (the
    detector's ``min_score`` decided; the mean-score rule dropped a real face scoring 0.956 in the shared
    ``multiple_faces_bw.jpg``).

    Returns:
        (kept track ids, dropped track id -> reason).
    """
    if n_sampled <= 1:
        return set(tracks), {}
    count: dict[int, int] = {}
    total: dict[int, float] = {}
    for t, sc in zip(tracks, scores):
        count[t] = count.get(t, 0) + 1
        total[t] = total.get(t, 0.0) + sc
    keep, dropped = set(), {}
    for t in count:
        share = count[t] / max(1, n_sampled)
        mean = total[t] / count[t]
        if share < min_share:
            dropped[t] = f"in {count[t]} of {n_sampled} sampled frames"
        elif mean < min_mean_score:
            dropped[t] = f"mean detector score {mean:.3f}"
        else:
            keep.add(t)
    return keep, dropped


__all__ = ["FrameEvidence", "assign_labels", "background_mask", "check_sizes", "difference_map", "filter_tracks",
           "frame_evidence", "to_working", "working_size"]
