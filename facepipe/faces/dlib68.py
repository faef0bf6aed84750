"""dlib's HOG face detector with its 68-point shape predictor: DeepfakeBench's face detection.

DeepfakeBench (Yan et al., NeurIPS 2023 Datasets and Benchmarks; ``preprocessing/preprocess.py``) detects
faces with ``dlib.get_frontal_face_detector()`` (HOG + linear SVM, Dalal & Triggs 2005) called as
``detector(rgb, 1)`` (one upsampling of the image pyramid) on the full-resolution RGB frame, keeps the largest
box, and fits dlib's shape predictor (Kazemi & Sullivan, CVPR 2014) for landmarks. Its five alignment points
are parts 37, 44, 30, 49, 55 (0-based) of that shape: an upper-eyelid point of each eye, the nose tip and a
point of the upper lip next to each mouth corner — not the eye centres and mouth corners MTCNN or SCRFD give.
DeepfakeBench uses an 81-point model (the 68 points plus 13 on the forehead, not on a package registry); the
five parts are the same points in the 68-point layout, which ``face-recognition-models`` ships.

Needs the optional extra ``facepipe[deepfakebench]`` (``dlib-bin``, ``face-recognition-models``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from facepipe.errors import DetectorError
from facepipe.faces.base import FaceDetector, RawDetections
from facepipe.faces.types import Face

DFB_FIVE_PARTS = (37, 44, 30, 49, 55)
"""0-based parts of dlib's 68-point (and the 81-point) shape DeepfakeBench aligns with, in
:data:`~facepipe.faces.types.LANDMARK_ORDER` (image-left eye, image-right eye, nose, left and right mouth)."""

UPSAMPLE = 1
"""``detector(image, 1)``: DeepfakeBench's pyramid upsampling."""


def predictor_path() -> Path:
    """The 68-point model file of ``face-recognition-models``, found without importing that package (its
    ``__init__`` imports ``pkg_resources``, gone from current setuptools).

    Raises:
        DetectorError: the package is not installed.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorError("the dlib_hog detector (preset deepfakebench) needs dlib's 68-point shape predictor: "
                            "pip install 'facepipe[deepfakebench]' (dlib-bin, face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise DetectorError(f"{path}: face-recognition-models is installed but lacks the 68-point model file")
    return path


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


class DlibHOG(FaceDetector):
    """dlib HOG detection + 68-point landmarks, as DeepfakeBench preprocesses.

    Faces come by decreasing box area (DeepfakeBench keeps the first). ``score`` is the logistic of the HOG
    SVM's decision value (dlib reports every box with a value above 0, i.e. scores above 0.5); ``landmarks``
    are the five :data:`DFB_FIVE_PARTS`; :meth:`shape68` gives all 68 points.

    Args:
        max_side: detection on a copy downscaled to this longest side (DeepfakeBench: the full frame; the
            preset sets a value no video reaches).
        min_score: faces below are dropped.
    """

    name = "dlib_hog"

    def __init__(self, max_side: int = 100_000, min_score: float = 0.0) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        try:
            import dlib
        except ImportError:
            raise DetectorError("the dlib_hog detector (preset deepfakebench) needs dlib: "
                                "pip install 'facepipe[deepfakebench]'") from None
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        model = predictor_path()
        self.predictor = dlib.shape_predictor(str(model))
        self.version = f"dlib-{dlib.__version__}+{model.stem}"

    def rects(self, image: np.ndarray, by_area: bool = True) -> list:
        """``(dlib.rectangle, SVM value)`` pairs found in ``image`` ((H, W, 3) uint8, passed as is: RGB for frames,
        BGR where DeepfakeBench passes BGR), by decreasing area (``by_area``) or in dlib's order."""
        rects, values, _ = self.detector.run(np.ascontiguousarray(image), UPSAMPLE, 0.0)
        order = list(range(len(rects)))
        if by_area:
            order.sort(key=lambda i: -rects[i].width() * rects[i].height())
        return [(rects[i], float(values[i])) for i in order]

    def shape68(self, image: np.ndarray, rect) -> np.ndarray:
        """(68, 2) float64 ``(x, y)`` landmarks of ``rect`` in ``image`` pixels."""
        s = self.predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64)

    def _detect_resized(self, images: np.ndarray) -> list[RawDetections]:
        out = []
        for img in images:
            boxes, lms, scores = [], [], []
            for rect, value in self.rects(img):
                pts = self.shape68(img, rect)
                # dlib rectangles are inclusive: right/bottom + 1 gives facepipe's exclusive x2, y2.
                boxes.append([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1])
                lms.append(pts[list(DFB_FIVE_PARTS)])
                scores.append(_sigmoid(value))
            out.append((np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(lms, np.float32).reshape(-1, 5, 2),
                        np.asarray(scores, np.float32)))
        return out

    def detect_many(self, batches) -> list[list[list[Face]]]:
        """As :meth:`FaceDetector.detect_many` (and so :meth:`~FaceDetector.detect`), faces ordered by decreasing box
        area (not score)."""
        return [[sorted(fs, key=lambda f: -f.area_px) for fs in out] for out in super().detect_many(batches)]
