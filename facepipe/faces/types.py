"""Frozen result types shared by every detector adapter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LANDMARK_ORDER = ("left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner")
"""Order of the five landmarks everywhere in facepipe (the subject's left/right as seen in the image,
i.e. ``left_eye`` is the eye with the smaller x in an upright frontal face), as MTCNN and
insightface's SCRFD/RetinaFace emit them."""


def _frozen(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32).reshape(shape).copy()
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face in one frame.

    Attributes:
        box: (4,) float32 ``x1, y1, x2, y2`` in source-frame pixels (pixel centres at integer
            coordinates; ``x2, y2`` exclusive), upright frame after rotation metadata.
        landmarks: (5, 2) float32 ``(x, y)`` in source-frame pixels, order :data:`LANDMARK_ORDER`.
        score: detector confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", _frozen(self.box, (4,)))
        object.__setattr__(self, "landmarks", _frozen(self.landmarks, (5, 2)))
        object.__setattr__(self, "score", float(self.score))

    @property
    def size_px(self) -> float:
        """Longer side of the box in source-frame pixels."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))

    @property
    def area_px(self) -> float:
        """Box area in square source-frame pixels."""
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))
