"""Per-face labels: which faces of a fake video were manipulated, decided against its original.

Forgery datasets label *videos*; a fake video can hold untouched faces (DFDC swaps one of several
people; detectors also fire on the background). Training and evaluating on "every face of a fake video
is fake" then teaches models that bystanders and posters are fakes. The DFDC winning solutions decided
per face by comparing each fake frame with its original; this module does the same:

1. The fake and its original (the *target* video whose frames the fake modifies: FF++ ``target_source``
   names it first) are decoded at the same frame indices, downscaled to ``diff_max_side``, the fake's global
   per-channel *photometric offset* (median difference over the background) is subtracted, and they are
   compared: ``D = blur(mean_c |fake - offset - original|)`` in grey levels (0-255).
2. Both videos were compressed separately, so ``D`` is never zero. The *background difference* of a
   frame is ``D`` outside every detected face (each box grown to 1.8 times its longer side) and outside
   compact areas that differ (a manipulated face the detector missed); its ``background_quantile``
   (0.999) is the frame's noise level, and the median of those over the pair its noise floor.
3. A face pixel differs when ``D > (1 + threshold_margin) * max(frame level, pair floor)``; a face's
   ``manipulation_score`` is the share of its box that differs, and its difference mask (the differing
   pixels) is warped like the crop, giving localisation targets (DeepfakeBench has masks for FF++ only).
4. The pair must be frame-aligned: the same number of decodable frames (the sampled indices agree),
   the same displayed size (or the same aspect ratio, the original then resized), a median
   background difference of at most ``max_background_diff``, and no temporal offset: on a few sampled frames
   the head regions are compared with the original's frames ``i - max_lag .. i + max_lag``
   (:func:`probe_lag`); a constant offset is corrected (frame ``i`` compared with the original's ``i + lag``),
   an inconsistent one is not aligned. Otherwise no face is scored and the video falls back to the label
   policy (:func:`assign_labels`).
5. Faces scoring at least ``min_score`` are fake; the others are undecided (``unmanipulated: ignore``: label
   :data:`UNCERTAIN`, kept but out of losses and frame metrics), real or dropped.

All coordinates are pixels of the upright source frame unless stated otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from facepipe.faces.config import LabelConfig
from facepipe.faces.types import Face

UNCERTAIN = -1
"""Label of a face of a fake that its original does not show to be manipulated (``unmanipulated: ignore``):
kept in the tables and shards with ``label_source = original_diff_uncertain``; losses and frame metrics must
leave it out (as the DFDC winner's per-face diffs did)."""

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


def photometric_offset(fake: np.ndarray, original: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Global per-channel offset of ``fake`` from ``original``: the median of ``fake - original`` over the
    background ``bg`` ((h, w) bool), (3,) float32 grey levels. Subtracted from the fake before differencing, so
    a brightness change of the whole frame (a re-grade, another decoder's colour range) is not a manipulation:
    +6 grey levels on a re-encoded FF++ original labelled 2 and 4 of 32 genuine faces fake without it."""
    if not bg.any():
        return np.zeros(3, np.float32)
    return np.median(fake[bg] - original[bg], axis=0).astype(np.float32)


@dataclass(frozen=True)
class FrameEvidence:
    """What one fake frame says about its faces.

    Attributes:
        background: median background difference (grey levels, after the photometric offset), the
            pair-alignment statistic.
        threshold: the frame's noise level: the ``background_quantile`` of its background difference.
        offset: (3,) the photometric offset subtracted from the fake (grey levels per RGB channel).
        scores: per face, the share of its box whose difference exceeds ``(1 + threshold_margin)`` times the
            frame's ``threshold`` (the frame alone; :func:`rescore` applies the pair's noise floor), or
            ``None`` when the frame had too little background to judge.
        masks: per face, (size, size) uint8 difference mask warped like the crop at that threshold, or ``None``.
        diffs: per face, its box's difference values (float16, working pixels), for :func:`rescore`.
        diff_crops: per face, the difference map warped like the crop (float16, ``masks`` only), or ``None``.
    """

    background: float
    threshold: float
    offset: np.ndarray
    scores: list[float | None]
    masks: list[np.ndarray | None]
    diffs: list[np.ndarray | None]
    diff_crops: list[np.ndarray | None]


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
    fw, ow = to_working(fake, (h, w)), to_working(original, (h, w))
    boxes = [f.box * s for f in faces]
    bg = background_mask((h, w), boxes)
    if bg.mean() < MIN_BACKGROUND_SHARE:
        bg = background_mask((h, w), boxes, expand=1.0)
    n = len(faces)
    if bg.mean() < MIN_BACKGROUND_SHARE / 4:
        return FrameEvidence(float("nan"), float("nan"), np.zeros(3, np.float32), [None] * n, [None] * n,
                             [None] * n, [None] * n)
    offset = photometric_offset(fw, ow, bg) if cfg.photometric else np.zeros(3, np.float32)
    d = difference_map(fw - offset, ow, cfg.blur_sigma)
    bg = _without_compact_differences(d, bg, cfg.background_outlier_mad)
    values = d[bg]
    thr = float(np.quantile(values, cfg.background_quantile))
    diffs: list[np.ndarray | None] = []
    crops: list[np.ndarray | None] = []
    for b, m in zip(boxes, matrices):
        x1, y1 = max(0, int(np.floor(b[0]))), max(0, int(np.floor(b[1])))
        x2, y2 = min(w, int(np.ceil(b[2]))), min(h, int(np.ceil(b[3])))
        region = d[y1:y2, x1:x2]
        diffs.append(region.astype(np.float16) if region.size else None)
        if cfg.masks:
            mw = np.asarray(m, dtype=np.float64).copy()
            mw[:, :2] /= s  # working pixels -> source pixels -> crop pixels
            crops.append(cv2.warpAffine(d, mw, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                                        borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(np.float16))
        else:
            crops.append(None)
    scores, masks = rescore(diffs, crops, (1.0 + cfg.threshold_margin) * thr)
    return FrameEvidence(float(np.median(values)), thr, offset, scores, masks, diffs, crops)


def rescore(diffs: Sequence[np.ndarray | None], diff_crops: Sequence[np.ndarray | None],
            threshold: float) -> tuple[list[float | None], list[np.ndarray | None]]:
    """Scores and masks of one frame's faces at ``threshold`` (grey levels).

    Args:
        diffs: per face, its box's difference values (:attr:`FrameEvidence.diffs`).
        diff_crops: per face, its warped difference map or ``None``.
        threshold: a face pixel differs when its difference exceeds this.

    Returns:
        (per face the share of its box above ``threshold`` or ``None``; per face the (size, size) uint8
        mask, 255 above ``threshold``, or ``None``).
    """
    scores = [None if dv is None else float((dv > threshold).mean()) for dv in diffs]
    masks = [None if dc is None else np.where(dc > threshold, 255, 0).astype(np.uint8) for dc in diff_crops]
    return scores, masks


def pair_threshold(frame_thresholds: Sequence[float], cfg: LabelConfig) -> float:
    """The pair's noise floor: the median of its frames' background thresholds (NaN ones left out), or NaN.

    A face of frame ``t`` differs where ``D > (1 + threshold_margin) * max(threshold_t, floor)``: calibrated on
    the pair's own noise (both compressions), and no frame with an unusually clean background sets a low bar.
    """
    v = [t for t in frame_thresholds if t == t]
    return float(np.median(v)) if v else float("nan")


def face_threshold(frame_threshold: float, floor: float, cfg: LabelConfig) -> float:
    """``(1 + threshold_margin) * max(frame_threshold, floor)`` (grey levels; a NaN floor is ignored)."""
    base = frame_threshold if floor != floor else max(frame_threshold, floor)
    return (1.0 + cfg.threshold_margin) * base


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


LAG_GAIN = 0.2
"""A probe decides for a lag only when its head-region difference is at least this share below every other
lag's (static scenes and still heads make neighbouring frames nearly equal: no evidence either way)."""


def probe_lag(fake: np.ndarray, boxes: Sequence[np.ndarray], originals: dict[int, np.ndarray],
              cfg: LabelConfig) -> tuple[int | None, dict[int, float]]:
    """The temporal offset one fake frame suggests.

    Compares the fake frame with the original's frames ``i + lag`` on the *head regions* (each face box grown
    to the squares :func:`background_mask` leaves out: face, hair, neck; they move with the person, and only
    the inner face is manipulated), after the photometric offset. Backgrounds are useless here: FF++'s are
    static, and a one-frame offset changed their median difference from 1.58 to 1.57 grey levels.

    Args:
        fake: (h, w, 3) float32 working copy of the fake frame.
        boxes: its faces' boxes, working pixels.
        originals: lag -> (h, w, 3) float32 working copy of the original's frame ``i + lag`` (lag 0 included).
        cfg: labelling parameters.

    Returns:
        (the lag, or ``None`` when no lag is clearly best; per lag the mean head-region difference in grey
        levels).
    """
    head = ~background_mask(fake.shape[:2], boxes)
    if not head.any():
        return None, {}
    bg = ~head
    stat = {}
    for lag, o in originals.items():
        off = photometric_offset(fake, o, bg) if cfg.photometric else np.zeros(3, np.float32)
        stat[lag] = float(difference_map(fake - off, o, cfg.blur_sigma)[head].mean())
    best = min(stat, key=lambda k: (stat[k], abs(k)))
    others = [v for k, v in stat.items() if k != best]
    clear = bool(others) and stat[best] < (1.0 - LAG_GAIN) * min(others)
    return (best if clear else None), stat


def pair_lag(lags: Sequence[int | None]) -> int | None:
    """The pair's temporal offset from its probes' lags (``None``: a probe without a clear lag, left out): the
    lag more than half of the deciding probes agree on; 0 when no probe decides (nothing moved: the background
    test stays); ``None`` when the deciding probes disagree (no constant offset)."""
    decided = [lg for lg in lags if lg is not None]
    if not decided:
        return 0
    values, counts = np.unique(np.asarray(decided), return_counts=True)
    k = int(np.argmax(counts))
    return int(values[k]) if counts[k] * 2 > len(decided) else None


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
        a video of unknown label, whose source is then ``None`` too). A face scoring below ``min_score`` is
        ``unmanipulated``: ``ignore`` gives ``(-1, "original_diff_uncertain")`` (kept, left out of losses and
        frame metrics), ``real`` ``(0, "original_diff")``, ``drop`` ``(None, "original_diff")``.
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
            elif cfg.unmanipulated == "ignore":
                out.append((UNCERTAIN, "original_diff_uncertain"))
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


__all__ = ["FrameEvidence", "UNCERTAIN", "assign_labels", "background_mask", "check_sizes", "difference_map",
           "face_threshold", "filter_tracks", "frame_evidence", "pair_lag", "pair_threshold", "photometric_offset",
           "probe_lag", "rescore", "to_working", "working_size"]
