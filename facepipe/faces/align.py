"""Face crops: 5-point similarity alignment onto the ArcFace template, or square box crops.

Every crop is ``cv2.warpAffine(frame, M, (size, size))`` with a 2x3 matrix ``M`` mapping
source-frame pixels to crop pixels, so the matrix stored on a face row regenerates the crop exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from facepipe.faces.config import AlignConfig

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
"""The ArcFace 112x112 five-point template (insightface ``utils/face_align.py`` ``arcface_dst``;
Deng et al., "ArcFace", CVPR 2019), in pixels of a 112x112 crop, order
:data:`facepipe.faces.types.LANDMARK_ORDER`."""


def arcface_template(size: int, margin: float = 1.0) -> np.ndarray:
    """The ArcFace template for a ``size`` x ``size`` crop with extra context.

    The 112-pixel template is scaled to ``size`` and then shrunk about the crop centre by ``margin``
    (``margin=1.3`` leaves 30% more context around the face, DeepfakeBench's default).

    Returns:
        (5, 2) float64 crop pixels.
    """
    t = ARCFACE_TEMPLATE_112 / 112.0
    t = (t - 0.5) / margin + 0.5
    return t * size


def similarity_matrix(landmarks: np.ndarray, size: int, margin: float = 1.0) -> np.ndarray:
    """Least-squares similarity transform from landmarks to the template (Umeyama, "Least-squares estimation of
    transformation parameters between two point patterns", IEEE TPAMI 1991; the estimate scikit-image's
    ``SimilarityTransform`` and insightface's ``face_align`` compute, equal to it within 1e-9 in the tests).

    Written here rather than imported: scikit-image pulls in SciPy, whose import costs each extraction worker
    about 1.5 s.

    Args:
        landmarks: (5, 2) float, source-frame pixels, :data:`~facepipe.faces.types.LANDMARK_ORDER`.
        size: output crop side in pixels.
        margin: context factor, see :func:`arcface_template`.

    Returns:
        (2, 3) float64 matrix mapping source pixels to crop pixels.

    Raises:
        ValueError: the landmarks are degenerate (all on one point, or not finite), so no transform exists.
    """
    src = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return _umeyama(src, arcface_template(size, margin))


def _umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (2, 3) mapping the (N, 2) points ``src`` onto ``dst`` (Umeyama 1991)."""
    if not np.all(np.isfinite(src)):
        raise ValueError(f"degenerate landmarks, no similarity transform: {src.tolist()}")
    n = len(src)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    var_src = (src_c ** 2).sum() / n
    if var_src <= 1e-12:
        raise ValueError(f"degenerate landmarks, no similarity transform: {src.tolist()}")
    cov = dst_c.T @ src_c / n  # Umeyama eq. (38)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:  # eq. (39)
        d[1] = -1.0
    u, sv, vt = np.linalg.svd(cov)
    rank = int(np.count_nonzero(sv > sv.max() * 2 * np.finfo(float).eps))
    if rank == 0:
        raise ValueError(f"degenerate landmarks, no similarity transform: {src.tolist()}")
    if rank == 1 and np.linalg.det(u) * np.linalg.det(vt) > 0:  # eq. (43): collinear points
        r = u @ vt
    elif rank == 1:
        r = u @ np.diag([1.0, -1.0]) @ vt
    else:  # eq. (40)
        r = u @ np.diag(d) @ vt
    scale = (sv @ d) / var_src  # eq. (42)
    t = dst_mean - scale * (r @ src_mean)
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * r
    m[:, 2] = t
    if not np.all(np.isfinite(m)):
        raise ValueError(f"degenerate landmarks, no similarity transform: {src.tolist()}")
    return m


def box_matrix(box: np.ndarray, size: int, margin: float = 1.3) -> np.ndarray:
    """Axis-aligned crop of a square ``max(w, h) * margin`` centred on ``box``, resized to ``size``.

    Args:
        box: (4,) ``x1, y1, x2, y2`` source-frame pixels (exclusive ``x2, y2``).
        size: output crop side in pixels.
        margin: square side as a multiple of the box's longer side.

    Returns:
        (2, 3) float64 matrix mapping source pixels to crop pixels (scale and translation only).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1, 1.0) * margin
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    s = size / side
    # Map the square's corner (cx - side/2, cy - side/2) to crop pixel (-0.5, -0.5), the crop's edge.
    return np.array([[s, 0.0, -0.5 - s * (cx - side / 2.0 - 0.5)],
                     [0.0, s, -0.5 - s * (cy - side / 2.0 - 0.5)]], dtype=np.float64)


def face_matrix(box: np.ndarray, landmarks: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """The 2x3 source->crop matrix for one face under ``cfg`` (``arcface`` or ``box`` mode)."""
    if cfg.mode == "arcface":
        return similarity_matrix(landmarks, cfg.size, cfg.margin)
    return box_matrix(box, cfg.size, cfg.margin)


def clip_matrix(boxes: np.ndarray, landmarks: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """One source->crop matrix for every frame of a clip (``sampling.mode: clips``, ``align.clip_transform: clip``):
    a stable crop without per-frame jitter, as FTCN (Zheng et al., ICCV 2021) and AltFreezing (Wang et al., CVPR
    2023) crop a clip once for all its frames.

    ``arcface``: the least-squares similarity taking the five landmarks of every frame onto the template at once
    (Umeyama over the N x 5 point pairs; equal to :func:`similarity_matrix` for N = 1). ``box``: the square of
    :func:`box_matrix` around the mean box of the clip.

    Args:
        boxes: (N, 4) float ``x1, y1, x2, y2``, source-frame pixels, the track's detected frames of the clip.
        landmarks: (N, 5, 2) float, source-frame pixels, :data:`~facepipe.faces.types.LANDMARK_ORDER`.
        cfg: ``mode``, ``size``, ``margin``.

    Returns:
        (2, 3) float64 matrix mapping source pixels to crop pixels.

    Raises:
        ValueError: no frame given, or degenerate landmarks.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2)
    if not len(lm):
        raise ValueError("no frame to fit a clip's transform on")
    if cfg.mode == "arcface":
        dst = np.tile(arcface_template(cfg.size, cfg.margin), (len(lm), 1))
        return _umeyama(lm.reshape(-1, 2), dst)
    return box_matrix(np.asarray(boxes, dtype=np.float64).reshape(-1, 4).mean(axis=0), cfg.size, cfg.margin)


def warp_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Apply a 2x3 source->crop matrix.

    Args:
        frame: (H, W, 3) uint8, any channel order (kept).
        matrix: (2, 3) float source->crop.
        size: crop side in pixels.

    Returns:
        (size, size, 3) uint8; area outside the frame is black.
    """
    return cv2.warpAffine(frame, np.asarray(matrix, dtype=np.float64), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (K, 2) source pixels through a 2x3 matrix -> (K, 2) float64 crop pixels."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]
