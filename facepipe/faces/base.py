"""The detector interface every adapter implements, and the shared downscale-and-map-back step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import cv2
import numpy as np

from facepipe.faces.types import Face

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
        name: registry name (``mtcnn``, ``scrfd``, ``retinaface``).
        version: weights and code version, recorded on every face row.
    """

    name: str = "base"
    version: str = "0"

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

    def detect(self, frames: np.ndarray | Sequence[np.ndarray]) -> list[list[Face]]:
        """Detect faces in a batch of frames.

        Args:
            frames: (N, H, W, 3) uint8 RGB, or a sequence of (H_i, W_i, 3) uint8 RGB images
                (grouped by size internally).

        Returns:
            One list per frame of :class:`Face`, by decreasing score; coordinates in that frame's
            pixels.

        Raises:
            ValueError: a frame is not (H, W, 3) uint8.
        """
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
            batch = items[idx] if isinstance(items, np.ndarray) else np.stack([items[i] for i in idx])
            if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
                raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {batch.shape} {batch.dtype}")
            scale = min(1.0, self.max_side / max(h, w))
            if scale < 1.0:
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in batch])
                sx, sy = w / size[0], h / size[1]
            else:
                small, sx, sy = batch, 1.0, 1.0
            for i, (boxes, lms, scores) in zip(idx, self._detect_resized(small)):
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
