"""insightface's SCRFD face detectors from model packs in a local model root.

A model pack is a folder of ONNX files under the insightface model root (default
``~/.insightface/models``), e.g. ``buffalo_l/det_10g.onnx`` (SCRFD-10GF), ``buffalo_sc/det_500m.onnx``
(SCRFD-500MF), ``antelopev2/scrfd_10g_bnkps.onnx``. Nothing is downloaded here: fetch a pack once
with insightface's own command (``insightface-cli model.download buffalo_l``) or copy it in.

SCRFD: Guo et al., "Sample and Computation Redistribution for Efficient Face Detection", ICLR 2022; five landmarks
in :data:`facepipe.faces.types.LANDMARK_ORDER`. insightface routes every detection ONNX (five or more outputs) to its
SCRFD decoder (``insightface.model_zoo.model_zoo``; its ``RetinaFace`` class is the same anchor-free decoder), and no
pack ships a RetinaFace network, so the detector name ``retinaface`` is a deprecated alias of ``scrfd``.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from facepipe.errors import DetectorError
from facepipe.faces.base import FaceDetector, RawDetections, onnx_providers

log = logging.getLogger(__name__)

PACK_PREFERENCE = ("buffalo_l", "antelopev2", "buffalo_m", "buffalo_s", "buffalo_sc")
_PATTERNS = {"scrfd": ("det_*.onnx", "scrfd*.onnx")}
_ALIASES = {"retinaface": "scrfd"}  # deprecated: it always ran an SCRFD file (see the module docstring)


def find_detector_model(kind: str, model_root: str | os.PathLike, pack: str | None = None) -> Path | None:
    """Locate a detection ONNX file for ``kind`` (``scrfd``; the deprecated ``retinaface`` is the same) under
    ``model_root``.

    Args:
        kind: which family's file names to look for.
        model_root: the insightface model root (``~`` expanded).
        pack: a pack folder name to use; ``None`` tries :data:`PACK_PREFERENCE`, then any other pack
            in alphabetical order.

    Returns:
        The ONNX path, or ``None`` when no pack holds one.
    """
    kind = _ALIASES.get(kind, kind)
    root = Path(os.path.expanduser(str(model_root)))
    if not root.is_dir():
        return None
    if pack is not None:
        packs = [root / pack]
    else:
        others = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in PACK_PREFERENCE)
        packs = [root / n for n in PACK_PREFERENCE] + others
    for d in packs:
        if not d.is_dir():
            continue
        for pattern in _PATTERNS[kind]:
            hits = sorted(d.glob(pattern))
            if hits:
                return hits[0]
    return None


class InsightFaceDetector(FaceDetector):
    """SCRFD through ``insightface.model_zoo.get_model`` on a local ONNX file.

    Args:
        kind: the registry name recorded on face rows (``scrfd``).
        model_file: the detection ONNX file (see :func:`find_detector_model`).
        max_side: detection input is the frame downscaled to this longest side, letterboxed to a
            square by insightface.
        min_score: faces below this score are dropped (also passed as insightface's ``det_thresh``).
        device: ``auto`` | ``cpu`` | ``cuda``; onnxruntime's CUDA provider is used when present.

    Raises:
        DetectorError: the file is missing or insightface does not recognise it as a detector.
    """

    def __init__(self, kind: str, model_file: str | os.PathLike, max_side: int = 640,
                 min_score: float = 0.5, device: str = "auto") -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        from insightface.model_zoo import get_model

        path = Path(model_file)
        if not path.is_file():
            raise DetectorError(f"{path}: detector model file not found")
        self.name = kind
        self.model_file = path
        self.version = f"{path.parent.name}/{path.stem}+insightface-{metadata.version('insightface')}"
        providers = onnx_providers(device)
        model = get_model(str(path), providers=providers)
        if model is None or not hasattr(model, "detect"):
            raise DetectorError(f"{path}: insightface does not recognise this ONNX file as a face detector")
        side = (self.max_side // 32) * 32 or 32
        model.prepare(0 if providers[0].startswith("CUDA") else -1, input_size=(side, side),
                      det_thresh=self.min_score)
        self._model = model
        self._side = side

    def _detect_resized(self, images: np.ndarray) -> list[RawDetections]:
        out = []
        for im in images:
            det, kps = self._model.detect(np.ascontiguousarray(im[..., ::-1]), input_size=(self._side, self._side))
            if det is None or len(det) == 0:
                out.append((np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32),
                            np.zeros(0, np.float32)))
                continue
            if kps is None:
                raise DetectorError(f"{self.model_file}: detector gives no landmarks; use a *_bnkps / det_* model")
            out.append((det[:, :4].astype(np.float32), kps.astype(np.float32), det[:, 4].astype(np.float32)))
        return out
