"""The ``extract`` stage's parameters (``params.yaml`` section ``extract``), the ``align.preset`` it can apply, and the
stage fingerprint."""

from __future__ import annotations

import logging
import warnings
from typing import Literal, Optional

from pydantic import AliasChoices, BaseModel, Field, model_validator

from facepipe.config import Section
from facepipe.faces.config import AlignConfig, DetectorConfig, LabelConfig, TrackConfig
from facepipe.ids import IMAGE_EXTS, VIDEO_EXTS
from facepipe.stages import contract
from facepipe.video import SamplingConfig

log = logging.getLogger(__name__)

STAGE = "extract"
STAGE_VERSION = 5  # 5: per-pair noise floor, photometric offset, lag test, label -1 (unmanipulated: ignore)
"""Bumped when the stage's output for the same input, parameters and code changes meaning."""

STAGE_MODULE = "facepipe.stages.extract"
"""The module whose import closure is the stage's code (the package: its ``__init__`` imports every module of it)."""

STATUSES = contract.STATUSES

MANIFEST_DATASET = "input"
"""The dataset name given to the rows of a manifest without a ``dataset`` column (``--manifest`` CSVs): only links
within the manifest use it, nothing written carries it. It must pass :func:`facepipe.ids.check_name` (the former
``"_"`` no longer does: key parts may not start or end with ``_``)."""


class OutputConfig(Section):
    """Crop encoding: lossless ``png`` (default) or ``jpg`` at ``jpeg_quality`` with chroma subsampling
    ``jpeg_subsampling`` (``444`` = none, as ICPR 2020's FF++ crops at q95 4:4:4; ``420`` = the usual web JPEG).

    JPEG crops are 3x smaller and 3x faster to decode (README: loader benchmark), but re-compression is a
    confound for forensic detectors: it rewrites the high-frequency content they learn from (on the shared real
    crops at q95 4:4:4: PSNR 49 dB, yet +15 % luma high-band DCT energy from 8x8 block quantisation), on top of
    whatever compression real and fake sources already differ by. Keep ``png`` unless storage or decoding bounds
    training, and then state it with your results."""

    format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)
    jpeg_subsampling: Literal["444", "422", "420"] = "444"


DEEPFAKEBENCH_PRESET = {
    "sampling": {"strategy": "uniform", "frame_count": "header"},
    "face_detector": {"name": "dlib_hog", "max_side": 100_000, "min_score": 0.0, "rotations": False},
    "align": {"mode": "arcface", "size": 256, "margin": 1.3},
    "track": {"select": "largest", "min_share": 0.0, "min_mean_score": 0.0},
}
"""What ``align.preset: deepfakebench`` sets (``sampling.num_frames`` stays yours; DeepfakeBench's default is 32):
DeepfakeBench's ``preprocess.py`` draws its indices from the header's frame count, detects with dlib on the full
frame without a score threshold, aligns at 256 px with margin 1.3, and keeps the largest face of every frame
without tracking (see :class:`~facepipe.faces.config.AlignConfig`). Its 81-point shape predictor is not
shipped: ``face_detector.dlib_81`` names it, else the 68-point model stands in (:func:`preset_label`)."""


def preset_label(cfg: "ExtractConfig", detector) -> str | None:
    """The ``preset`` recorded on face rows (and so shard samples): ``deepfakebench`` when the crops came from
    DeepfakeBench's 81-point predictor, ``deepfakebench-68`` from the 68-point stand-in; other presets as
    configured."""
    if cfg.preset != "deepfakebench":
        return cfg.preset
    return getattr(detector, "preset_name", "deepfakebench-68")


def _plain(v, set_only: bool = False):
    return v.model_dump(exclude_unset=set_only) if isinstance(v, BaseModel) else dict(v or {})


class ExtractConfig(Section):
    """Parameters of the ``extract`` stage (``params.yaml`` section ``extract``).

    ``workers`` (processes; 0 = in this process), ``timeout_s`` (per video; a task holding an original
    and its fakes gets it once per video), ``file_fingerprint`` (``stat`` = size + mtime, ``sha256`` =
    content), ``extensions`` (what ``--video-dir`` discovery picks up), ``engine`` and ``ray_address`` are run
    settings: they are not part of the stage fingerprint, and neither is ``face_detector.device``.

    ``landmarks68``: also store dlib's 68 landmarks of every face in crop pixels (``crop_landmarks``;
    :func:`facepipe.faces.dlib68.crop_landmarks68`), for mouth-crop methods and self-blended images; needs
    ``facepipe[deepfakebench]`` (dlib). Under ``preset: deepfakebench`` the preset's own re-detected landmarks fill
    the column.

    ``engine``: ``local`` runs the per-video work in ``workers`` processes of this machine; ``ray`` runs it as Ray
    actors on the cluster at ``ray_address`` (``None``: ``RAY_ADDRESS`` or a Ray instance started for the run), one
    actor per ``workers`` (0: one per CPU of the cluster), with the same outputs, statuses and resume (see
    :class:`~facepipe.stages.extract.scheduler.RayBackend`).
    """

    sampling: SamplingConfig = SamplingConfig()
    face_detector: DetectorConfig = Field(DetectorConfig(), validation_alias=AliasChoices("face_detector", "detector"))
    align: AlignConfig = AlignConfig()
    track: TrackConfig = TrackConfig()
    labels: LabelConfig = LabelConfig()
    output: OutputConfig = OutputConfig()
    extensions: tuple[str, ...] = VIDEO_EXTS + IMAGE_EXTS
    workers: int = Field(2, ge=0)
    timeout_s: Optional[float] = Field(900.0, gt=0)
    file_fingerprint: Literal["stat", "sha256"] = "stat"
    engine: Literal["local", "ray"] = "local"
    ray_address: Optional[str] = None
    landmarks68: bool = False

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """``align.preset`` overrides the sections it defines (:data:`DEEPFAKEBENCH_PRESET`); a value set otherwise
        is logged as overridden."""
        if not isinstance(data, dict):
            return data
        if "detector" in data:
            warnings.warn("extract.detector: renamed to extract.face_detector (the forgery model is train.model); "
                          "the old name goes in the next release", FutureWarning, stacklevel=2)
            if "face_detector" not in data:
                data = {("face_detector" if k == "detector" else k): v for k, v in data.items()}
        align = _plain(data.get("align"))
        if align.get("preset") != "deepfakebench":
            return data
        data = dict(data)
        for section, values in DEEPFAKEBENCH_PRESET.items():
            given = _plain(data.get(section))
            explicit = _plain(data.get(section), set_only=True)
            default = cls.model_fields[section].default.model_dump()
            changed = {k: explicit[k] for k, v in values.items()
                       if k in explicit and explicit[k] not in (v, default[k])}
            if changed:
                log.warning("extract.align.preset deepfakebench overrides extract.%s %s", section, changed)
            data[section] = {**given, **values}
        return data

    @model_validator(mode="after")
    def _clips_without_preset(self):
        """DeepfakeBench's preprocessing samples isolated frames: ``preset: deepfakebench`` with ``sampling.mode:
        clips`` is refused."""
        if self.sampling.mode == "clips" and self.align.preset == "deepfakebench":
            raise ValueError("extract.align.preset deepfakebench samples isolated frames, as DeepfakeBench's "
                             "preprocessing does; it cannot be combined with extract.sampling.mode clips")
        return self

    @property
    def preset(self) -> str | None:
        """The alignment preset in force (``deepfakebench``) or ``None``."""
        return self.align.preset

    def result_params(self) -> dict:
        """The parameters that change results (run settings left out)."""
        return self.model_dump(exclude={"extensions": True, "workers": True, "timeout_s": True,
                                        "file_fingerprint": True, "engine": True, "ray_address": True,
                                        "face_detector": {"device", "dlib_81"}})


def fingerprint(cfg: ExtractConfig, detector_id: str) -> str:
    """The stage fingerprint: parameters, resolved detector (``name@version``), stage version and code (the import
    closure of :data:`STAGE_MODULE`, every module of this package included)."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.result_params(), "_detector": detector_id},
                                STAGE_MODULE)
