"""The detector interface every adapter implements, and the shared downscale-and-map-back step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import cv2
import numpy as np

from facepipe.faces.types import Face

MAX_ROLL_DEG = 45.0
"""A face whose eye line is rolled more than this (degrees) is re-detected on rotated copies of its frame."""

RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]
"""``(boxes (K, 4) float32 xyxy, landmarks (K, 5, 2) float32, scores (K,) float32)`` in the pixels
of the image the detector was given."""


def onnx_providers(device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (``auto`` uses CUDA when onnxruntime has it)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        from facepipe.errors import DetectorError

        raise DetectorError(f"device 'cuda' asked for, but onnxruntime offers only {available} "
                            "(install onnxruntime-gpu)")
    return ["CPUExecutionProvider"]


class FaceDetector(ABC):
    """A face detector over batches of RGB frames.

    Subclasses implement :meth:`_detect_resized` on images already downscaled so that their longest
    side is at most ``max_side``; :meth:`detect` does the downscale, maps boxes and landmarks back
    to source-frame pixels and drops faces scoring below ``min_score``.

    Attributes:
        name: registry name (``mtcnn``, ``scrfd``, ``dlib_hog``).
        version: weights and code version, recorded on every face row.
    """

    name: str = "base"
    version: str = "0"

    rotations: bool = False
    """Retry frames without a face, or with a face rolled past :data:`MAX_ROLL_DEG`, rotated by 90/180/270 degrees
    (see :meth:`detect`). Set from ``DetectorConfig.rotations`` by the factory."""

    adaptive: bool = False
    """Detect each batch (one video's frames, in temporal order) with :meth:`_detect_sequence`, which may use what
    some frames showed to search the others more cheaply (MTCNN's adaptive pyramid)."""

    def __init__(self, max_side: int = 640, min_score: float = 0.9) -> None:
        self.max_side = int(max_side)
        self.min_score = float(min_score)

    @property
    def id(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    @abstractmethod
    def _detect_resized(self, images: np.ndarray) -> list[RawDetections]:
        """Detect on (N, h, w, 3) uint8 RGB images of one size; one result per image."""

    def _detect_sequence(self, images: np.ndarray) -> list[RawDetections]:
        """As :meth:`_detect_resized` on one video's frames in temporal order (used when :attr:`adaptive`)."""
        return self._detect_resized(images)

    def detect(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[list[Face]]:
        """Detect faces in a batch of frames (by default the sampled frames of one video).

        With :attr:`rotations`, face detectors' blindness to rotated faces is worked around: a frame with no face,
        or with a face whose eye line is rolled more than :data:`MAX_ROLL_DEG`, is detected again rotated by 90,
        180 and 270 degrees, and the rotation whose best face scores highest wins (faces mapped back to the frame's
        pixels, so alignment turns them upright). When most frames with a face prefer one rotation, that rotation
        is applied to every frame of the batch (a sideways video: some rotated faces are still found upright, with
        wrong landmarks).

        Args:
            frames: (N, H, W, 3) uint8 RGB, or a sequence of (H_i, W_i, 3) uint8 RGB images
                (grouped by size internally).

        Returns:
            One list per frame of :class:`Face`, by decreasing score; coordinates in that frame's
            pixels.

        Raises:
            ValueError: a frame is not (H, W, 3) uint8.
        """
        return self.detect_many([frames])[0]

    def detect_many(self, batches: Sequence[np.ndarray | Sequence[np.ndarray]]) -> list[list[list[Face]]]:
        """:meth:`detect` on several videos' frames at once: the detector sees all their frames in the same calls
        (grouped by frame size), so a GPU gets large batches; the rotation vote stays per video (per batch).

        Equal to ``[detect(b) for b in batches]`` (test on real clips, one of them sideways).

        Args:
            batches: per video, its frames as :meth:`detect` takes them.

        Returns:
            Per batch, :meth:`detect`'s result.

        Raises:
            ValueError: a frame is not (H, W, 3) uint8.
        """
        batches = [b if isinstance(b, np.ndarray) and b.ndim == 4 else list(b) for b in batches]
        if len(batches) == 1 or self.adaptive:  # adaptive: each video's frames are a sequence of their own
            outs = [self._detect_upright(b, sequence=True) for b in batches]
        else:  # one flat list of frame views (iterating an (N, H, W, 3) array copies nothing)
            flat = self._detect_upright([f for b in batches for f in b])
            ends = np.cumsum([len(b) for b in batches]).tolist()
            outs = [flat[e - len(b):e] for b, e in zip(batches, ends)]
        if not self.rotations:
            return outs
        retry = [(v, i) for v, out in enumerate(outs) for i, fs in enumerate(out)
                 if not fs or any(abs(_roll(f)) > MAX_ROLL_DEG for f in fs)]
        if not retry:
            return outs
        chosen = [[0] * len(out) for out in outs]
        tried = {k: self._detect_rotated([batches[v][i] for v, i in retry], k) for k in (1, 2, 3)}
        for j, (v, i) in enumerate(retry):
            best = max((f.score for f in outs[v][i]), default=-1.0)
            for k in (1, 2, 3):
                sc = max((f.score for f in tried[k][j]), default=-1.0)
                if sc > best:
                    best, chosen[v][i], outs[v][i] = sc, k, tried[k][j]
        again: dict[int, list[tuple[int, int]]] = {}  # a video's majority rotation, applied to its other frames
        for v, out in enumerate(outs):
            votes = [chosen[v][i] for i, fs in enumerate(out) if fs]
            if votes:
                k_major = max(set(votes), key=votes.count)
                if k_major and votes.count(k_major) * 2 > len(votes):
                    again.setdefault(k_major, []).extend((v, i) for i in range(len(out)) if chosen[v][i] != k_major)
        for k, frames_vi in again.items():
            for (v, i), fs in zip(frames_vi, self._detect_rotated([batches[v][i] for v, i in frames_vi], k)):
                if fs:
                    outs[v][i] = fs
        return outs

    def _detect_rotated(self, frames: list[np.ndarray], k: int) -> list[list[Face]]:
        """Detect on the frames rotated by ``k`` quarter turns counter-clockwise; faces in the frames' own pixels."""
        if not frames:
            return []
        rotated = [np.ascontiguousarray(np.rot90(f, k)) for f in frames]
        return [[_unrotate(face, k, f.shape[1], f.shape[0]) for face in fs]
                for f, fs in zip(frames, self._detect_upright(rotated))]

    def _detect_upright(self, frames: np.ndarray | Sequence[np.ndarray], sequence: bool = False) -> list[list[Face]]:
        """:meth:`detect` on the frames as they are (no rotation retries); same arguments, result and errors.
        ``sequence``: the frames are one video's, in temporal order (:attr:`adaptive` detectors use it)."""
        if isinstance(frames, np.ndarray) and frames.ndim == 4:
            groups = {frames.shape[1:3]: list(range(len(frames)))}
            items = frames
        else:
            items = list(frames)
            groups = {}
            for i, f in enumerate(items):
                groups.setdefault(f.shape[:2], []).append(i)
        out: list[list[Face]] = [[] for _ in range(len(items))]
        for (h, w), idx in groups.items():
            # the whole (N, H, W, 3) array, or the group's frames (views): full-size frames are never stacked
            batch = items if isinstance(items, np.ndarray) else [items[i] for i in idx]
            for f in batch if isinstance(batch, list) else batch[:1]:
                if f.ndim != 3 or f.shape[-1] != 3 or f.dtype != np.uint8:
                    raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {f.shape} {f.dtype}")
            scale = min(1.0, self.max_side / max(h, w))
            if scale < 1.0:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in batch])
                sx, sy = w / size[0], h / size[1]
            else:
                small, sx, sy = (batch if isinstance(batch, np.ndarray) else np.stack(batch)), 1.0, 1.0
            raw = self._detect_sequence(small) if sequence and self.adaptive else self._detect_resized(small)
            for i, (boxes, lms, scores) in zip(idx, raw):
                keep = np.flatnonzero(scores >= self.min_score)
                keep = keep[np.argsort(-scores[keep], kind="stable")]
                faces = []
                for k in keep:
                    b = boxes[k] * np.array([sx, sy, sx, sy], dtype=np.float32)
                    b = np.clip(b, 0, [w, h, w, h])
                    lm = lms[k] * np.array([sx, sy], dtype=np.float32)
                    faces.append(Face(box=b, landmarks=lm, score=float(scores[k])))
                out[i] = faces
        return out


def _roll(face: Face) -> float:
    """Angle of the eye line (left eye -> right eye) in degrees, 0 for an upright face."""
    (lx, ly), (rx, ry) = face.landmarks[0], face.landmarks[1]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def _unrotate(face: Face, k: int, w: int, h: int) -> Face:
    """Map a face found in ``np.rot90(frame, k)`` back to the pixels of ``frame`` ((h, w)).

    Points use pixel centres (``np.rot90`` moves pixel (x, y) of an (h, w) frame to (y, w-1-x) for k=1); boxes are
    pixel ranges (exclusive ``x2, y2``), mapped edge to edge.
    """
    p = face.landmarks.astype(np.float64)
    x1, y1, x2, y2 = (float(v) for v in face.box)
    if k == 1:
        pts = np.stack([w - 1 - p[:, 1], p[:, 0]], 1)
        box = (w - y2, x1, w - y1, x2)
    elif k == 2:
        pts = np.stack([w - 1 - p[:, 0], h - 1 - p[:, 1]], 1)
        box = (w - x2, h - y2, w - x1, h - y1)
    elif k == 3:
        pts = np.stack([p[:, 1], h - 1 - p[:, 0]], 1)
        box = (y1, h - x2, y2, h - x1)
    else:
        return face
    return Face(box=np.asarray(box), landmarks=pts, score=face.score)
