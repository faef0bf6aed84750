"""Face detection, alignment, tracking and per-face labelling.

``create_face_detector(cfg)`` is the single factory; ``list_face_detectors()`` names what is
registered (face detectors find faces; forgery detectors, which classify them, are
``facepipe.models.create_model``). Every face detector returns :class:`~facepipe.faces.types.Face`
objects: box ``xyxy`` and five landmarks in source-frame pixels, and a score.
"""

from __future__ import annotations

import difflib
import logging
import warnings
from typing import Callable

from facepipe._registries import check_unique
from facepipe.errors import DetectorError
from facepipe.faces.base import FaceDetector
from facepipe.faces.config import DetectorConfig
from facepipe.faces.types import LANDMARK_ORDER, Face

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., FaceDetector]] = {}


def register_face_detector(name: str) -> Callable[[Callable[..., FaceDetector]], Callable[..., FaceDetector]]:
    """Decorator adding a detector factory ``fn(cfg: DetectorConfig, threads: int) -> FaceDetector``.

    Raises:
        ConfigError: another factory already holds ``name`` (both named; the same one again replaces itself).
    """

    def deco(fn: Callable[..., FaceDetector]) -> Callable[..., FaceDetector]:
        check_unique("face detector", name, fn, _REGISTRY.get(name))
        _REGISTRY[name] = fn
        return fn

    return deco


def list_face_detectors() -> list[str]:
    """Registered detector names, sorted (``auto`` resolves to one of them)."""
    return sorted(_REGISTRY)


@register_face_detector("mtcnn")
def _mtcnn(cfg: DetectorConfig, threads: int = 0) -> FaceDetector:
    from facepipe.faces.mtcnn import MTCNN

    return MTCNN(max_side=cfg.max_side, min_score=cfg.min_score, min_face_px=cfg.min_face_px,
                 min_face_frac=cfg.min_face_frac, device=cfg.device, threads=threads, adaptive=cfg.adaptive,
                 anchor_every=cfg.anchor_every)


def _insight(kind: str) -> Callable[..., FaceDetector]:
    def make(cfg: DetectorConfig, threads: int = 0) -> FaceDetector:
        from facepipe.faces.insight import InsightFaceDetector, find_detector_model

        path = find_detector_model(kind, cfg.model_root, cfg.pack)
        if path is None:
            where = f"{cfg.model_root}/{cfg.pack}" if cfg.pack else cfg.model_root
            raise DetectorError(
                f"no {kind} model pack under {where}: put one there (e.g. buffalo_l with det_10g.onnx, "
                f"fetched once with 'insightface-cli model.download buffalo_l') or use detector 'mtcnn'")
        return InsightFaceDetector(kind, path, max_side=cfg.max_side, min_score=cfg.min_score,
                                   device=cfg.device)

    return make


@register_face_detector("dlib_hog")
def _dlib_hog(cfg: DetectorConfig, threads: int = 0) -> FaceDetector:
    from facepipe.faces.dlib68 import DlibHOG

    return DlibHOG(max_side=cfg.max_side, min_score=cfg.min_score, predictor=cfg.dlib_81)


register_face_detector("scrfd")(_insight("scrfd"))

RETINAFACE_DEPRECATED = (
    "face detector 'retinaface' is deprecated and loads SCRFD: insightface runs every detection model of a pack "
    "with its SCRFD decoder (buffalo_l/det_10g.onnx is SCRFD-10GF, antelopev2/scrfd_10g_bnkps.onnx SCRFD-10GF, "
    "buffalo_sc/det_500m.onnx SCRFD-500MF) and no pack ships a RetinaFace ONNX; it now runs as 'scrfd' (the same "
    "file search, and face rows say scrfd). Use 'scrfd'.")


@register_face_detector("retinaface")
def _retinaface(cfg: DetectorConfig, threads: int = 0) -> FaceDetector:
    """Deprecated name of ``scrfd`` (see :data:`RETINAFACE_DEPRECATED`)."""
    warnings.warn(RETINAFACE_DEPRECATED, FutureWarning, stacklevel=3)
    return _REGISTRY["scrfd"](cfg.model_copy(update={"name": "scrfd"}), threads)


def resolve_detector_name(cfg: DetectorConfig) -> str:
    """The concrete detector ``cfg.name`` stands for (``auto``: scrfd if a pack is found locally, else mtcnn)."""
    if cfg.name != "auto":
        return cfg.name
    from facepipe.faces.insight import find_detector_model

    return "scrfd" if find_detector_model("scrfd", cfg.model_root, cfg.pack) is not None else "mtcnn"


def create_face_detector(cfg: DetectorConfig | str, threads: int = 0) -> FaceDetector:
    """Build the detector ``cfg`` names.

    Args:
        cfg: a :class:`DetectorConfig`, or just a name with default options.
        threads: onnxruntime intra-op threads (0 = its default).

    Raises:
        DetectorError: unknown name (close matches listed) or missing model files.
    """
    if isinstance(cfg, str):
        if cfg not in _REGISTRY and cfg != "auto":
            close = difflib.get_close_matches(cfg, list_face_detectors(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise DetectorError(f"unknown detector '{cfg}' (known: {', '.join(list_face_detectors())}){hint}")
        cfg = DetectorConfig(name=cfg)
    name = resolve_detector_name(cfg)
    det = _REGISTRY[name](cfg, threads)
    det.rotations = bool(cfg.rotations)
    log.info("face detector: %s", det.id)
    return det


__all__ = ["Face", "FaceDetector", "LANDMARK_ORDER", "create_face_detector", "list_face_detectors",
           "register_face_detector", "resolve_detector_name"]
