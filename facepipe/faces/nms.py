"""Non-maximum suppression over boxes of many images at once (the batched detector cascade needs it)."""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union",
        groups: np.ndarray | None = None) -> np.ndarray:
    """Greedy NMS, highest score first.

    Args:
        boxes: (K, 4) float ``x1, y1, x2, y2`` with inclusive corners (MTCNN convention: area is
            ``(x2 - x1 + 1) * (y2 - y1 + 1)``).
        scores: (K,) float.
        threshold: overlap above which the lower-scored box is dropped.
        mode: ``union`` (IoU) or ``min`` (intersection over the smaller area), as in MTCNN
            (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
            Convolutional Networks", IEEE SPL 2016).
        groups: optional (K,) int image index; boxes of different groups never suppress each other.

    Returns:
        (M,) int64 indices of kept boxes, by decreasing score (ties: lower index first).

    ``union`` runs in OpenCV (:func:`_nms_opencv`; 3x faster on P-Net's thousands of candidates); ``min`` (a few
    O-Net boxes) in the loop below.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if mode == "union":
        return _nms_opencv(boxes, scores, threshold, groups)
    b = boxes.astype(np.float64)
    if groups is not None:
        # Shift each group far apart so boxes of different images cannot overlap.
        span = float(b[:, :4].max() - b[:, :4].min()) + 2.0
        b = b + (groups.astype(np.float64) * span)[:, None]
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if mode == "min":
            o = inter / np.minimum(area[i], area[rest])
        else:
            o = inter / (area[i] + area[rest] - inter)
        order = rest[o <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _nms_opencv(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None) -> np.ndarray:
    """IoU NMS by OpenCV (``cv2.dnn.NMSBoxesBatched``, per group): the same boxes in the same order as the greedy
    loop (scores must be > 0: probabilities). Inclusive corners become ``(x, y, w + 1, h + 1)`` rectangles, so areas
    and intersections match."""
    import cv2

    b = boxes.astype(np.float64)
    rects = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0] + 1, b[:, 3] - b[:, 1] + 1], axis=1).tolist()
    sc = np.asarray(scores, dtype=np.float64).tolist()
    if groups is None:
        keep = cv2.dnn.NMSBoxes(rects, sc, 0.0, float(threshold))
    else:
        keep = cv2.dnn.NMSBoxesBatched(rects, sc, np.asarray(groups, dtype=np.int64).tolist(), 0.0,
                                       float(threshold))
    keep = np.sort(np.asarray(keep, dtype=np.int64).reshape(-1))
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (A, 4) and (B, 4) ``x1, y1, x2, y2`` boxes (exclusive corners) -> (A, B) float64."""
    a = a.astype(np.float64)[:, None, :]
    b = b.astype(np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)
