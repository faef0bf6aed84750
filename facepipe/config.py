"""Stage parameters as pydantic models, one per ``params.yaml`` section.

``load_params(path, section)`` reads a YAML file and validates one section; every problem is reported
as one :class:`~facepipe.errors.ConfigError` naming the file, the key and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from facepipe.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(_Section):
    """Which frames of a video are decoded.

    ``uniform``: ``num_frames`` indices spread evenly over the *decodable* frames, first and last
    included (``numpy.linspace`` rounded down), as in the FF++ / DeepfakeBench preprocessing (32 frames
    per video is the field's default). ``stride``: every ``stride``-th frame. ``fps``: ``fps`` frames per
    second of video time. ``max_frames`` caps ``stride`` and ``fps`` (evenly thinned when exceeded).
    """

    strategy: Literal["uniform", "stride", "fps"] = "uniform"
    num_frames: int = Field(32, ge=1)
    stride: int = Field(10, ge=1)
    fps: float = Field(1.0, gt=0)
    max_frames: Optional[int] = Field(None, ge=1)


class DetectorConfig(_Section):
    """Face detector choice and its thresholds.

    ``name``: ``auto`` (an insightface pack found under ``model_root`` if any, else ``mtcnn``),
    ``mtcnn`` (embedded, offline), ``scrfd`` or ``retinaface`` (insightface model packs).
    Detection runs on a copy of the frame whose longest side is at most ``max_side`` pixels; boxes and
    landmarks are mapped back to source-frame pixels. ``min_face_px`` is the smallest face side searched
    for, in detection-image pixels. Faces scoring below ``min_score`` are dropped.
    """

    name: Literal["auto", "mtcnn", "scrfd", "retinaface"] = "auto"
    max_side: int = Field(640, ge=64)
    min_face_px: int = Field(20, ge=12)
    min_score: float = Field(0.95, ge=0.0, le=1.0)
    model_root: str = "~/.insightface/models"
    pack: Optional[str] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"


class AlignConfig(_Section):
    """How a face becomes a crop.

    ``arcface``: similarity transform (rotation, uniform scale, translation) from the five landmarks
    onto the ArcFace 112x112 template (insightface ``arcface_dst``), scaled to ``size`` and shrunk about
    the crop centre by ``margin`` (1.0 = the ArcFace crop; 1.3 = DeepfakeBench's context margin).
    ``box``: no rotation; a square of side ``max(w, h) * margin`` centred on the detector box, as the
    FF++ and DFDC reference pipelines crop.
    """

    mode: Literal["arcface", "box"] = "arcface"
    size: int = Field(256, ge=32, le=2048)
    margin: float = Field(1.3, ge=1.0, le=4.0)


class TrackConfig(_Section):
    """Linking faces of one person across sampled frames, and which tracks are kept.

    ``select``: ``all`` keeps every track; ``largest`` keeps the one track with the largest summed face
    area (the video's main subject). A face continues a track when its box centre moved at most
    ``max_shift`` face sizes per sampled frame since the track's last face and its size changed by at
    most a factor ``max_scale``; ties are resolved globally by Hungarian assignment on the shift. Sampled
    frames are often far apart (32 frames over 10 s), so box IoU alone breaks tracks of walking people.
    A track survives ``max_gap`` sampled frames without a face.
    """

    select: Literal["all", "largest"] = "all"
    max_shift: float = Field(1.5, gt=0.0)
    max_scale: float = Field(2.0, ge=1.0)
    max_gap: int = Field(2, ge=0)


class OutputConfig(_Section):
    """Crop encoding: lossless ``png`` (default) or ``jpg`` at ``jpeg_quality``."""

    format: Literal["png", "jpg"] = "png"
    jpeg_quality: int = Field(95, ge=1, le=100)


class ExtractConfig(_Section):
    """Parameters of the ``extract`` stage (``params.yaml`` section ``extract``)."""

    sampling: SamplingConfig = SamplingConfig()
    detector: DetectorConfig = DetectorConfig()
    align: AlignConfig = AlignConfig()
    track: TrackConfig = TrackConfig()
    output: OutputConfig = OutputConfig()
    extensions: tuple[str, ...] = (
        ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts",
    )

    @model_validator(mode="after")
    def _lower_extensions(self) -> "ExtractConfig":
        bad = [e for e in self.extensions if not e.startswith(".")]
        if bad:
            raise ValueError(f"extensions must start with '.': {bad}")
        return self

    def params_hash(self, detector_id: str) -> str:
        """Hash of everything that changes what a video's outputs look like (not workers, not paths).

        Args:
            detector_id: the resolved detector's ``name@version``, so ``auto`` switching detectors
                invalidates earlier results.

        Returns:
            16 hex characters.
        """
        payload = self.model_dump(exclude={"extensions"})
        payload["detector"].pop("device")
        payload["_detector_id"] = detector_id
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class FreqConfig(_Section):
    """Parameters of the ``freq`` stage and of the views computed in the loader (section ``freq``).

    ``views``: which views the stage stores per crop (float16), from ``dct``, ``dct_bands``,
    ``block_dct``, ``fft``, ``phase``, ``srm`` (see :mod:`facepipe.freq`). ``dct_log``: the ``dct`` view
    is ``log(|X| + eps)``. ``bands``: FAD low/mid edges as fractions of the crop side on ``i + j``
    (F3Net's 1/2.82 and 1/2). ``block``: block side for ``block_dct``. ``srm_truncate``: SRM clip.
    """

    views: tuple[str, ...] = ("dct",)
    dct_log: bool = True
    bands: tuple[float, float] = (1 / 2.82, 1 / 2)
    block: int = Field(8, ge=2)
    srm_truncate: Optional[float] = Field(3.0, gt=0)

    @model_validator(mode="after")
    def _known_views(self) -> "FreqConfig":
        known = ("dct", "dct_bands", "block_dct", "fft", "phase", "srm")
        bad = [v for v in self.views if v not in known]
        if bad:
            raise ValueError(f"unknown views {bad}; known: {list(known)}")
        if not 0 < self.bands[0] < self.bands[1]:
            raise ValueError(f"bands must satisfy 0 < low < high, got {self.bands}")
        return self


class ShardInput(_Section):
    """One dataset going into a shard set: its extract output, its manifest, optionally its freq output."""

    dataset: str
    extract: str
    manifest: str
    freq: Optional[str] = None


class ShardConfig(_Section):
    """Parameters of the ``shard`` stage (section ``shard``).

    ``inputs``: the datasets (several go into one shard set, each sample keeping its dataset).
    A shard closes after ``max_samples`` samples or ``max_bytes`` bytes. ``seed`` fixes the shuffle
    across videos, datasets and labels. ``views``: stored views to include (``None`` = all the freq
    stage stored; ``[]`` = none).
    """

    inputs: tuple[ShardInput, ...] = ()
    max_samples: int = Field(2000, ge=1)
    max_bytes: int = Field(500_000_000, ge=1_000)
    seed: int = 0
    views: Optional[tuple[str, ...]] = None


class TrainConfig(_Section):
    """Parameters of the ``train`` stage (section ``train``).

    ``detector`` from the zoo (``facepipe.models.list_detectors()``) with ``detector_options``;
    ``pretrained``: ``false``, ``true`` (local timm cache only) or a weights file. ``image_size``:
    ``null`` = the detector's input size. ``steps`` optimizer steps in all; validation every
    ``eval_every`` steps selects the best checkpoint on ``select`` (``video_auc`` or ``frame_auc``) of
    the **val** split, never test; training stops after ``patience`` validations without improvement.
    ``amp``: ``auto`` = bf16 autocast on CUDA, fp32 on CPU; ``off``.
    """

    detector: str = "resnet18"
    detector_options: dict = {}
    pretrained: Union[bool, str] = False
    image_size: Optional[int] = Field(None, ge=16)
    batch_size: int = Field(32, ge=1)
    steps: int = Field(1000, ge=1)
    eval_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    step_size: int = Field(1000, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    clip_norm: Optional[float] = Field(1.0, gt=0)
    amp: Literal["auto", "off"] = "auto"
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    augment: bool = True
    class_balance: bool = False
    dataset_weights: Optional[dict[str, float]] = None
    patience: int = Field(5, ge=1)
    select: Literal["video_auc", "frame_auc"] = "video_auc"


class EvaluateConfig(_Section):
    """Parameters of the ``evaluate`` stage (section ``evaluate``): split, video aggregation (``mean`` |
    ``max`` | ``topk`` with ``topk``), horizontal-flip test-time augmentation, batch size, workers."""

    split: str = "test"
    video_agg: Literal["mean", "max", "topk"] = "mean"
    topk: int = Field(5, ge=1)
    tta_hflip: bool = False
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0)


M = TypeVar("M", bound=BaseModel)


class DatasetEntry(_Section):
    """One entry of the ``datasets`` mapping in params.yaml: which adapter reads which root.

    ``root`` is the dataset in its published layout (and the folder ``extract`` reads videos from);
    ``options`` are adapter settings (e.g. ``file`` for ``csv``, ``splits_dir`` for ``ffpp``).
    """

    adapter: str
    root: str
    options: dict[str, str] = {}


def load_dataset_entry(path: str | Path, key: str) -> DatasetEntry:
    """``datasets.<key>`` of a params file.

    Raises:
        ConfigError: missing file, no ``datasets`` mapping, unknown key, or an invalid entry.
    """
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: cannot read params: {e}") from None
    ds = doc.get("datasets") or {}
    if key not in ds:
        raise ConfigError(f"{p}: no dataset '{key}' under 'datasets' (have: {', '.join(ds) or 'none'})")
    return validate_section(DatasetEntry, ds[key], f"{p} [datasets.{key}]")


def dataset_keys(path: str | Path) -> list[str]:
    """Keys of the ``datasets`` mapping of a params file (empty when absent)."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    return list((doc.get("datasets") or {}).keys())


def _format_validation(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(section)"
        parts.append(f"{loc}: {e['msg']}")
    return f"{where}: invalid parameters: " + "; ".join(parts)


def validate_section(model: type[M], data: dict | None, where: str) -> M:
    """Validate a mapping against ``model``.

    Raises:
        ConfigError: naming ``where`` and every offending key.
    """
    try:
        return model.model_validate(data or {})
    except ValidationError as e:
        raise ConfigError(_format_validation(e, where)) from None


def load_params(path: str | Path, section: str, model: type[M]) -> M:
    """Read ``section`` of a YAML params file and validate it with ``model``.

    A missing section gives the model's defaults.

    Raises:
        ConfigError: the file is missing, is not YAML, or the section does not validate.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        doc = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    return validate_section(model, doc.get(section), f"{p} [{section}]")
