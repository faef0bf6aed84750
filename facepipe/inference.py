"""``facepipe predict``: score your own videos and photos with a trained checkpoint.

The checkpoint records how its training crops were made (the extract stage's ``extract.json``, copied into the shard
index and from there into every checkpoint): :func:`predict` runs the extract stage with those settings (detector,
alignment, crop size, frame sampling) on the inputs, scores every face with the model exactly as evaluate does
(resize to the model's input size, frequency views computed from the image, the model's normalisation), and
aggregates per video. Two deliberate differences from the training crops: every face track is kept
(``track.select: all``, or ``faces="main"`` for the training rule), so a bystander and a swapped face are scored
apart; and no labels are computed (there is no original to compare with).

Video score: the faces of each track are aggregated with ``video_agg`` (default ``mean``, the aggregation training
selects its best checkpoint with; ``max`` | ``topk`` | ``deepfakebench`` as in
:data:`facepipe.metrics.VIDEO_AGGREGATIONS`),
then the video takes its most-fake track (a video is fake when any face in it is). ``deepfakebench`` keeps the largest
face of every frame and averages, over the whole video, as DeepfakeBench does.

Outputs in ``out`` (:func:`predict`):

- ``predictions.parquet``: one row per scored face (:data:`PREDICTION_SCHEMA`), plus one row per input where no face
  was scored (face columns null, ``status`` saying why);
- ``predictions.csv``: the DFDC submission form (``filename,label``: the fake probability per input; ``0.5`` where no
  face was found, the DFDC baseline's rule for unscored videos);
- ``annotated/<video_id>.jpg``: a photo with its faces boxed and scored, or a video's contact sheet (sampled frames
  with faces, boxes and scores);
- ``explain/<video_id>/<frame>_<track>.png`` (``explain=True``): each face crop with the model's Grad-CAM map of the
  fake logit over it (:func:`facepipe.explain.explain_batch`, the model's default method and layer);
- ``extract/``: the extract stage's output (crops, tables), which makes a rerun on the same inputs resume.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from facepipe._io import atomic_path
from facepipe.errors import InputError
from facepipe.ids import IMAGE_EXTS, VIDEO_EXTS

log = logging.getLogger(__name__)

PREDICTION_SCHEMA = {
    "input": pl.String,
    "video_id": pl.String,
    "kind": pl.String,
    "status": pl.String,
    "message": pl.String,
    "label": pl.Int8,
    "frame_index": pl.Int64,
    "timestamp_s": pl.Float64,
    "track_id": pl.Int32,
    "clip_id": pl.Int32,
    "box": pl.Array(pl.Float32, 4),
    "detector_score": pl.Float32,
    "score": pl.Float32,
    "track_score": pl.Float32,
    "video_score": pl.Float32,
    "crop_path": pl.String,
    "annotated": pl.String,
    "explain_path": pl.String,
}
"""``predictions.parquet``: ``input`` the file as given (absolute), ``video_id`` its id in ``extract/``, ``kind``
``video`` | ``image``, ``status`` the extract status (``ok`` | ``no_face`` | ``decode_error`` | ``unsupported`` |
``error``) and ``message``; ``label`` the input's label when a manifest gave one (0 real, 1 fake), else null. Per
face: ``frame_index`` (0-based source frame; a clip's first frame for clip models), ``timestamp_s``, ``track_id``,
``clip_id`` (clip models), ``box`` x1, y1, x2, y2 in upright source-frame pixels, ``detector_score``, ``score`` the
model's fake probability in [0, 1]. ``track_score`` the track's aggregate and ``video_score`` the input's (see the
module docstring), repeated on each of its rows; ``crop_path`` relative to ``out/extract``; ``annotated`` and
``explain_path`` relative to ``out``."""

SUPPORTED_EXTS = VIDEO_EXTS + IMAGE_EXTS
MANIFEST_EXTS = (".csv", ".parquet")
NO_FACE_SCORE = 0.5
"""The ``predictions.csv`` value of an input without a scored face (DFDC's baseline submission predicts 0.5 there)."""


@dataclass(frozen=True)
class PredictInput:
    """One file to score: ``path`` absolute, ``name`` its path below the staging folder (``/`` separated), the
    label a manifest gave (0/1) or ``None``."""

    path: Path
    name: str
    label: int | None = None


@dataclass
class PredictSummary:
    """What :func:`predict` did: the table, counts per status, faces scored, the device, notes for the user."""

    table: pl.DataFrame
    statuses: dict[str, int] = field(default_factory=dict)
    faces: int = 0
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)
    out_dir: str | None = None


# ------------------------------------------------------------------------------------------------------------------
# inputs


_LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1, "original": 0, "manipulated": 1}


def _manifest_inputs(p: Path, root: Path | None) -> list[tuple[Path, int | None]]:
    """``(file, label)`` per row of a CSV / parquet list with a ``path`` column (relative to ``root``, by default the
    list's folder) and optionally ``label`` (``real``/``fake``/``0``/``1``; other values such as ``none`` = unknown).
    Paths are kept as written; blank lines are skipped.

    Raises:
        InputError: naming the list: unreadable, no ``path`` column, columns that are not text, a blank path.
    """
    try:
        df = pl.read_parquet(p) if p.suffix.lower() == ".parquet" else pl.read_csv(p, infer_schema=False)
    except Exception as e:  # noqa: BLE001  polars raises several error types for unreadable files
        raise InputError(f"{p}: cannot read the list of inputs: {e}") from None
    if "path" not in df.columns:
        raise InputError(f"{p}: a list of inputs needs a 'path' column (columns: {df.columns})")
    try:
        label = pl.col("label").cast(pl.String) if "label" in df.columns else pl.lit(None, pl.String).alias("label")
        df = df.select(pl.col("path").cast(pl.String), label, pl.all_horizontal(pl.all().is_null()).alias("_blank"))
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{p}: the path and label columns of a list of inputs must be text: {e}") from None
    base = root or p.parent
    out = []
    for n, (v, lab, blank) in enumerate(df.iter_rows(), 2):  # polars keeps a blank line as a row of nulls
        if blank:
            continue
        if v is None or not v.strip():
            raise InputError(f"{p}:{n}: blank path (every row names a video or photo)")
        out.append((Path(v) if Path(v).is_absolute() else base / v, _LABELS.get(str(lab).strip().lower())))
    return out


def resolve_inputs(inputs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None) -> list[PredictInput]:
    """The files to score: each input a video or photo, a folder (searched recursively for
    :data:`SUPPORTED_EXTS`; hidden entries skipped), or a list of files (``.csv`` / ``.parquet`` with a ``path``
    column relative to ``root`` or the list's folder, and optionally ``label``).

    Names are unique: a file's name, a folder's files as ``<folder name>/<relative path>``; a clash gets ``-2``, ``-3``
    appended to the first part.

    Raises:
        InputError: no input, an input that does not exist, a file with an extension facepipe does not read, a
            folder with no such file, an unreadable list, an empty one, or one with a blank path (naming the list and
            line).
    """
    if not inputs:
        raise InputError("predict: no input given (videos, photos, folders or a list of files)")
    found: list[tuple[Path, str, int | None]] = []
    for raw in inputs:
        p = Path(raw).expanduser()
        if not p.exists():
            raise InputError(f"{p}: input does not exist")
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUPPORTED_EXTS
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise InputError(f"{p}: folder holds no video or photo ({', '.join(SUPPORTED_EXTS)})")
            found += [(f, f"{p.resolve().name}/{f.relative_to(p).as_posix()}", None) for f in files]
        elif p.suffix.lower() in MANIFEST_EXTS:
            listed = _manifest_inputs(p, Path(root) if root else None)
            if not listed:
                raise InputError(f"{p}: the list of inputs has no row")
            for f, lab in listed:
                if not f.is_file():
                    raise InputError(f"{p}: lists {f}, which does not exist")
                found.append((f, f.name, lab))
        elif p.suffix.lower() in SUPPORTED_EXTS:
            found.append((p, p.name, None))
        else:
            raise InputError(f"{p}: not a video or photo facepipe reads ({', '.join(SUPPORTED_EXTS)}), nor a list "
                             "of files (.csv / .parquet with a 'path' column)")
    out, seen = [], set()
    for f, name, lab in found:
        unique, k = name, 1
        while unique.lower() in seen:
            k += 1
            head, _, tail = name.partition("/")
            unique = f"{Path(head).stem}-{k}{Path(head).suffix}" + (f"/{tail}" if tail else "")
        seen.add(unique.lower())
        out.append(PredictInput(f.resolve(), unique, lab))
    return out


def _stage(items: list[PredictInput], folder: Path) -> None:
    """Symbolic links to the inputs under ``folder`` by their names (the extract stage's video folder); links of an
    earlier run's other inputs are removed (their extraction stays in ``extract/``, reused when they come back)."""
    names = {it.name for it in items}
    if folder.is_dir():
        for link in [p for p in folder.rglob("*") if p.is_symlink()]:
            if link.relative_to(folder).as_posix() not in names:
                link.unlink()
    for it in items:
        link = folder / it.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() == it.path:
                continue
            link.unlink()
        link.symlink_to(it.path)


# ------------------------------------------------------------------------------------------------------------------
# settings


def _settings_from(ckpt: dict, path: Path) -> tuple[dict, str | None, list[str]]:
    """The extract parameters a checkpoint records, its detector id, and notes (several training datasets made with
    different settings: the first one's are used)."""
    docs = {d: v for d, v in (ckpt.get("extract") or {}).items() if v}
    if not docs:
        raise InputError(f"{path}: the checkpoint does not record how its training crops were made (trained by an "
                         "older facepipe, or on shards without extract.json): pass --params params.yaml to take the "
                         "extract settings from there")
    first = sorted(docs)[0]
    notes = []
    differing = sorted(d for d, v in docs.items() if v["params"] != docs[first]["params"])
    if differing:
        notes.append(f"the training datasets' crops were made with different extract settings ({first} vs "
                     f"{', '.join(differing)}): {first}'s are used")
    return docs[first]["params"], docs[first].get("detector"), notes


def extract_config(ckpt: dict, ckpt_path: Path, params: str | os.PathLike | None = None, *, faces: str = "all",
                   workers: int = 0):
    """The :class:`~facepipe.stages.extract.ExtractConfig` predict runs: the checkpoint's recorded settings (or
    ``params``' ``extract`` section), with ``track.select`` = ``faces``, ``workers`` and, when the recorded detector was
    resolved from ``auto``, that detector by name (so a missing SCRFD pack is an error, not a silent fall-back).

    Returns:
        ``(config, recorded detector id or None, notes)``.

    Raises:
        InputError: no recorded settings and no ``params``.
    """
    from facepipe.config import load_params
    from facepipe.stages.extract import ExtractConfig

    notes: list[str] = []
    if params is not None:
        data, detector = load_params(Path(params), "extract", ExtractConfig).model_dump(mode="json"), None
    else:
        data, detector, notes = _settings_from(ckpt, ckpt_path)
    data = json.loads(json.dumps(data))
    det = data.setdefault("face_detector", {})
    if detector and det.get("name", "auto") == "auto":
        name, _, version = detector.partition("@")
        det["name"] = name if name in ("mtcnn", "scrfd", "retinaface", "dlib_hog") else "auto"
        if name in ("scrfd", "retinaface") and "/" in version:
            det["pack"] = version.split("/")[0]
    if data.get("align", {}).get("preset") == "deepfakebench":
        data.pop("track", None)  # the preset's own (largest face of every frame)
    else:
        data.setdefault("track", {})["select"] = faces
    data["workers"] = workers
    data["labels"] = {**data.get("labels", {}), "masks": False}
    return ExtractConfig.model_validate(data), detector, notes


# ------------------------------------------------------------------------------------------------------------------
# scoring


@functools.lru_cache(maxsize=8)
def _resize(size: int):
    """The loader's evaluation resize (albumentations ``Resize``), built once per size."""
    import albumentations as A

    return A.Resize(size, size)


def _read_rgb(path: Path, size: int) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{path}: crop does not decode")
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if rgb.shape[0] != size or rgb.shape[1] != size:
        rgb = _resize(size)(image=rgb)["image"]
    return rgb


def _samples(faces: pl.DataFrame, clip: bool) -> list[list[int]]:
    """Row numbers of ``faces`` per sample: each face, or (clip models) each (video, clip, track) in frame order."""
    if not clip:
        return [[i] for i in range(faces.height)]
    g = (faces.with_row_index("_row").sort("video_id", "clip_id", "track_id", "frame_index")
         .group_by("video_id", "clip_id", "track_id", maintain_order=True).agg("_row"))
    return [list(r) for r in g["_row"].to_list()]


class _Scorer:
    """The model on batches of crops, as evaluate feeds it: (B, 3, H, W) uint8 -> [0, 1] -> views -> normalised."""

    def __init__(self, lm) -> None:
        self.lm = lm
        self.mean = torch.tensor(lm.spec.mean, device=lm.device).view(1, 3, 1, 1)
        self.std = torch.tensor(lm.spec.std, device=lm.device).view(1, 3, 1, 1)

    def inputs(self, u8: np.ndarray) -> dict[str, torch.Tensor]:
        """``u8`` (B, H, W, 3) or clips (B, T, H, W, 3) -> the model's inputs on its device."""
        from facepipe.freq import compute_views_torch

        x = torch.from_numpy(u8).to(self.lm.device)
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float().div_(255.0)
        out = {}
        if self.lm.spec.views:
            out = compute_views_torch(self.lm.spec.views, x, self.lm.freq)
        out["image"] = (x - self.mean) / self.std
        return {k: v.reshape(*lead, *v.shape[1:]) for k, v in out.items()}

    @torch.no_grad()
    def scores(self, u8: np.ndarray) -> np.ndarray:
        from facepipe.models import logits_of
        from facepipe.train.engine import model_inputs

        model, amp = self.lm.model, self.lm.amp
        x = model_inputs(model, self.inputs(u8))
        with torch.autocast(self.lm.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            return torch.sigmoid(logits_of(model(x)).float()).cpu().numpy()


def score_faces(lm, faces: pl.DataFrame, extract_dir: Path, *, batch_size: int = 32, progress: bool = True
                ) -> pl.DataFrame:
    """Fake probabilities of the faces of an extract output with a loaded checkpoint (:class:`LoadedModel`).

    Frame models score each face; clip models (``spec.sample_kind == "clip"``) each clip of a track (its frames'
    crops stacked in order), the row placed at the clip's first frame.

    Returns:
        One row per sample: ``faces``' columns (a clip's first frame's; the detector's ``score`` renamed
        ``detector_score``), ``score``, the fake probability (float32), and ``crop_paths``, the sample's crops (one, or
        a clip's in frame order).
    """
    clip = lm.spec.sample_kind == "clip"
    groups = _samples(faces, clip)
    scorer, size = _Scorer(lm), lm.size
    paths = faces["crop_path"].to_list()
    out: list[float] = []
    bar = tqdm(total=len(groups), unit="clip" if clip else "face", desc="predict", disable=not progress)
    for s in range(0, len(groups), batch_size):
        chunk = groups[s:s + batch_size]
        u8 = np.stack([np.stack([_read_rgb(extract_dir / paths[i], size) for i in g]) if clip
                       else _read_rgb(extract_dir / paths[g[0]], size) for g in chunk])
        out.extend(scorer.scores(u8).tolist())
        bar.update(len(chunk))
    bar.close()
    firsts = [g[0] for g in groups]
    return faces[firsts].rename({"score": "detector_score"}).with_columns(
        pl.Series("score", out, dtype=pl.Float32),
        pl.Series("crop_paths", [[paths[i] for i in g] for g in groups], dtype=pl.List(pl.String)))


def aggregate(scored: pl.DataFrame, video_agg: str = "mean", topk: int = 5) -> pl.DataFrame:
    """``track_score`` and ``video_score`` per row of ``scored`` (``video_id``, ``track_id``, ``frame_index``,
    ``score``, ``face_size_px``): per track with ``video_agg``, then the video's most-fake track; ``deepfakebench``:
    the largest face of each frame, averaged over the video.

    Raises:
        InputError: unknown ``video_agg``.
    """
    from facepipe.metrics import video_scores

    base = scored.select("video_id", "track_id", "frame_index", "score",
                         pl.col("face_size_px").alias("face_size"))
    if video_agg == "deepfakebench":
        v = video_scores(base.with_columns(dataset=pl.lit("input"), label=pl.lit(0), method=pl.lit(None)),
                         video_agg, topk)
        tracks = (base.group_by("video_id", "track_id").agg(pl.col("score").mean().alias("track_score")))
        return (scored.join(tracks, on=["video_id", "track_id"], how="left")
                .join(v.select("video_id", pl.col("score").alias("video_score")), on="video_id", how="left"))
    per_track = base.with_columns(dataset=pl.lit("input"), label=pl.lit(0), method=pl.lit(None),
                                  video_id=pl.col("video_id") + "\x00" + pl.col("track_id").cast(pl.String))
    t = video_scores(per_track, video_agg, topk).select(
        pl.col("video_id").str.split("\x00").list.first().alias("video_id"),
        pl.col("video_id").str.split("\x00").list.last().cast(pl.Int32).alias("track_id"),
        pl.col("score").alias("track_score"))
    v = t.group_by("video_id").agg(pl.col("track_score").max().alias("video_score"))
    return scored.join(t, on=["video_id", "track_id"], how="left").join(v, on="video_id", how="left")


# ------------------------------------------------------------------------------------------------------------------
# pictures


def _colour(score: float) -> tuple[int, int, int]:
    """Green (real) to red (fake) through yellow."""
    s = min(max(float(score), 0.0), 1.0)
    return (int(255 * min(1.0, 2 * s)), int(255 * min(1.0, 2 * (1 - s))), 0)


def _draw(img: np.ndarray, boxes: Iterable[tuple[Sequence[float], float, int]], scale: float = 1.0) -> np.ndarray:
    """``img`` (H, W, 3) uint8 with each (box, score, track) drawn: the box and ``#track 0.87`` above it."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(img)
    d = ImageDraw.Draw(im)
    width = max(2, round(min(im.size) / 200))
    font = ImageFont.load_default(size=max(12, round(min(im.size) / 30)))
    for box, score, track in boxes:
        x1, y1, x2, y2 = (float(v) * scale for v in box)
        c = _colour(score)
        d.rectangle([x1, y1, x2, y2], outline=c, width=width)
        text = f"#{track} {score:.2f}"
        tb = d.textbbox((0, 0), text, font=font)
        w, h = tb[2] - tb[0], tb[3] - tb[1]
        top = max(0.0, y1 - h - 6)
        d.rectangle([x1, top, x1 + w + 6, top + h + 6], fill=c)
        d.text((x1 + 3, top + 3 - tb[1]), text, fill=(0, 0, 0), font=font)
    return np.asarray(im)


def _save_jpg(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="JPEG", quality=90)


def _title(img: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(14, round(img.shape[1] / 60)))
    band = Image.new("RGB", (img.shape[1], font.size + 12), (255, 255, 255))
    ImageDraw.Draw(band).text((8, 6), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(band), img], axis=0)


def annotate(path: Path, kind: str, rows: pl.DataFrame, cfg, out: Path, caption: str, max_frames: int = 12) -> None:
    """Write ``out``: the photo with its faces boxed and scored, or for a video a contact sheet of up to
    ``max_frames`` of its sampled frames with faces (evenly chosen), 4 per row, each 480 px wide."""
    from PIL import Image

    from facepipe.video import FrameSampler, probe, read_image

    if kind == "image":
        img, _, _ = read_image(path)
        drawn = _draw(img, [(b, s, t) for b, s, t in rows.select("box", "score", "track_id").iter_rows()])
        _save_jpg(out, _title(drawn, caption))
        return
    frames = sorted(set(rows["frame_index"].to_list()))
    if len(frames) > max_frames:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    want, tiles = set(frames), {}
    info = probe(path)
    for chunk in FrameSampler(path, info, cfg.sampling, chunk_size=16):
        for idx, frame in zip(chunk.indices.tolist(), chunk.frames):
            if idx in want:
                scale = 480 / frame.shape[1]
                small = np.asarray(Image.fromarray(frame).resize((480, max(1, round(frame.shape[0] * scale)))))
                sel = rows.filter(pl.col("frame_index") == idx)
                tiles[idx] = _title(_draw(small, [(b, s, t) for b, s, t in sel.select("box", "score", "track_id")
                                                  .iter_rows()], scale), f"frame {idx}")
    if not tiles:
        return
    h = max(t.shape[0] for t in tiles.values())
    padded = [np.pad(tiles[i], ((0, h - tiles[i].shape[0]), (0, 0), (0, 0)), constant_values=255)
              for i in frames if i in tiles]
    cols = min(4, len(padded))
    padded += [np.full_like(padded[0], 255)] * (-len(padded) % cols)
    sheet = np.concatenate([np.concatenate(padded[r:r + cols], axis=1) for r in range(0, len(padded), cols)], axis=0)
    _save_jpg(out, _title(sheet, caption))


def explain_faces(lm, scored: pl.DataFrame, extract_dir: Path, out: Path, *, batch_size: int = 16,
                  progress: bool = True) -> list[str]:
    """The model's explanation map (its default method, Grad-CAM for CNNs: :func:`facepipe.explain.explain_batch`) of
    the fake logit over each scored sample, overlaid on its crop and written as
    ``out/explain/<video_id>/<frame>_<track>.png`` (a clip: its frames side by side).

    Args:
        scored: rows of :func:`score_faces` (``video_id``, ``frame_index``, ``track_id``, ``crop_paths``).

    Returns:
        The paths relative to ``out``, one per row.
    """
    from facepipe.explain import ImageModel, explain_batch
    from facepipe.explain.gallery import _overlay, _save_png

    wrapper = ImageModel(lm.model, lm.freq).to(lm.device)
    scorer, size = _Scorer(lm), lm.size
    rels: list[str] = []
    rows = list(scored.select("video_id", "frame_index", "track_id", "crop_paths").iter_rows())
    bar = tqdm(total=len(rows), unit="face", desc="explain", disable=not progress)
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        u8 = np.stack([np.stack([_read_rgb(extract_dir / p, size) for p in r[3]]) for r in chunk])  # (B, T, H, W, 3)
        image = scorer.inputs(u8 if lm.spec.sample_kind == "clip" else u8[:, 0])["image"]
        _, fake, _ = explain_batch(wrapper, image)  # (B, H, W) or clips (B, T, H, W)
        for (vid, frame, track, _), frames, cam in zip(chunk, u8, fake):
            cams = cam if cam.ndim == 3 else cam[None]
            rgb = np.concatenate(list(frames), axis=1).astype(np.float32) / 255.0  # (H, T * W, 3)
            rel = f"explain/{vid}/{frame:06d}_{track}.png"
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            _save_png(out / rel, _overlay(rgb, np.concatenate(list(cams), axis=1)))
            rels.append(rel)
        bar.update(len(chunk))
    bar.close()
    return rels


# ------------------------------------------------------------------------------------------------------------------
# the run


def _input_rows(items: list[PredictInput], videos: pl.DataFrame, stage_dir: Path) -> pl.DataFrame:
    """Per input: its path, video id, kind, status and message, label."""
    from facepipe.video import is_still

    by_path = {(stage_dir / p).resolve(): (v, st, msg) for v, p, st, msg in
               videos.select("video_id", "path", "status", "message").iter_rows()}
    rows = []
    for it in items:
        vid, st, msg = by_path.get(it.path, (None, "unsupported", "not read by extract"))
        rows.append({"input": str(it.path), "name": it.name, "video_id": vid,
                     "kind": "image" if is_still(it.path) else "video", "status": st, "message": msg,
                     "label": it.label})
    return pl.DataFrame(rows, schema={"input": pl.String, "name": pl.String, "video_id": pl.String,
                                      "kind": pl.String, "status": pl.String, "message": pl.String,
                                      "label": pl.Int8})


def _write_outputs(table: pl.DataFrame, per_input: pl.DataFrame, out: Path) -> None:
    with atomic_path(out / "predictions.parquet") as tmp:
        table.write_parquet(tmp)
    scores = per_input.join(table.group_by("input").agg(pl.col("video_score").first()), on="input", how="left")
    csv = scores.select(pl.col("name").alias("filename"),
                        pl.col("video_score").fill_null(NO_FACE_SCORE).alias("label"))
    with atomic_path(out / "predictions.csv") as tmp:
        csv.write_csv(tmp, float_precision=6)


def predict(inputs: Sequence[str | os.PathLike], checkpoint: str | os.PathLike, out: str | os.PathLike | None = None,
            *, explain: bool = False, device: str | None = None, workers: int = 0, batch_size: int = 32,
            video_agg: str = "mean", topk: int = 5, faces: str = "all", params: str | os.PathLike | None = None,
            root: str | os.PathLike | None = None, annotate_inputs: bool = True, progress: bool = True
            ) -> PredictSummary:
    """Score videos and photos with a facepipe checkpoint (see the module docstring for what is run and written).

    Args:
        inputs: videos, photos, folders of them, or lists of files (:func:`resolve_inputs`).
        checkpoint: a checkpoint of ``facepipe train`` (``best.pt``).
        out: output folder (created; ``None``: a temporary folder, deleted afterwards, and only the table returned).
        explain: also write each face's Grad-CAM overlay.
        device: ``cpu`` | ``cuda`` | ``cuda:N`` for the model (default: the GPU when there is one); the detector uses
            the checkpoint's ``face_detector.device`` (``auto``).
        workers: extract worker processes (0: in this process; > 0 needs an ``if __name__ == "__main__":`` guard in
            a script).
        video_agg, topk: the per-track aggregation (:data:`facepipe.metrics.VIDEO_AGGREGATIONS`).
        faces: ``all`` tracks (default) or ``main`` (the largest, the training rule).
        params: take the extract settings from this params.yaml instead of the checkpoint (checkpoints of older
            facepipe versions record none).
        root: folder the paths of a list of files are relative to (default: the list's folder).
        annotate_inputs: write the annotated images / contact sheets.

    Returns:
        A :class:`PredictSummary` whose ``table`` is ``predictions.parquet`` (:data:`PREDICTION_SCHEMA`).

    Raises:
        InputError: unusable checkpoint (unreadable, another schema, no recorded extract settings and no
            ``params``), bad inputs (see :func:`resolve_inputs`), unknown ``video_agg``.
        DetectorError: the checkpoint's detector is not available here.
    """
    from facepipe.metrics import VIDEO_AGGREGATIONS
    from facepipe.stages import contract
    from facepipe.stages import extract as extract_stage
    from facepipe.train.engine import model_from_checkpoint

    if video_agg not in VIDEO_AGGREGATIONS:
        raise InputError(f"video aggregation must be one of {', '.join(VIDEO_AGGREGATIONS)}, got {video_agg!r}")
    if faces not in ("all", "main"):
        raise InputError(f"faces must be 'all' or 'main', got {faces!r}")
    ckpt_path = Path(checkpoint)
    lm = model_from_checkpoint(ckpt_path, device=device)
    cfg, recorded, notes = extract_config(lm.checkpoint, ckpt_path, params, faces=faces, workers=workers)
    items = resolve_inputs(inputs, root)
    with tempfile.TemporaryDirectory(prefix="facepipe-predict-") as tmp:
        base = Path(out) if out is not None else Path(tmp)
        contract.make_output_folder(base, "predict")
        stage_dir, ex_dir = base / "inputs", base / "extract"
        _stage(items, stage_dir)
        summary = extract_stage.run(stage_dir, ex_dir, cfg, progress=progress)
        if recorded and summary.detector != recorded:
            notes.append(f"faces detected with {summary.detector}; the checkpoint's training crops were made with "
                         f"{recorded}")
        videos = pl.read_parquet(ex_dir / "videos.parquet")
        allfaces = pl.read_parquet(ex_dir / "faces.parquet")
        per_input = _input_rows(items, videos, stage_dir)
        allfaces = allfaces.filter(pl.col("video_id").is_in(per_input["video_id"].drop_nulls().implode()))
        scored = score_faces(lm, allfaces, ex_dir, batch_size=batch_size, progress=progress)
        scored = aggregate(scored, video_agg, topk) if scored.height else scored.with_columns(
            track_score=pl.lit(None, pl.Float32), video_score=pl.lit(None, pl.Float32),
            crop_paths=pl.lit(None, pl.List(pl.String)))
        table = _table(per_input, scored)
        if explain and out is not None and scored.height:
            table = table.with_columns(explain_path=pl.Series(_explain_paths(lm, table, ex_dir, base, progress)))
        if annotate_inputs and out is not None:
            table = _annotate_all(table, cfg, base, progress)
        table = table.select(list(PREDICTION_SCHEMA)).cast(PREDICTION_SCHEMA)
        if out is not None:
            _write_outputs(table, per_input, base)
    statuses = per_input.group_by("status").len().sort("status")
    return PredictSummary(table, dict(statuses.iter_rows()), int(table["score"].is_not_null().sum()),
                          str(lm.device), notes, None if out is None else str(out))


def _table(per_input: pl.DataFrame, scored: pl.DataFrame) -> pl.DataFrame:
    """Per input its rows: one per scored face, or one with null face columns."""
    face_cols = scored.select("video_id", "frame_index", "timestamp_s", "track_id", "clip_id", "box", "crop_path",
                              "crop_paths", "detector_score", "score", "track_score", "video_score")
    return per_input.join(face_cols, on="video_id", how="left").with_columns(
        annotated=pl.lit(None, pl.String), explain_path=pl.lit(None, pl.String))


def _explain_paths(lm, table: pl.DataFrame, ex_dir: Path, base: Path, progress: bool) -> list[str | None]:
    faces = table.with_row_index("_r").filter(pl.col("score").is_not_null())
    rels = explain_faces(lm, faces, ex_dir, base, progress=progress)
    out: list[str | None] = [None] * table.height
    for r, rel in zip(faces["_r"].to_list(), rels):
        out[r] = rel
    return out


def _annotate_all(table: pl.DataFrame, cfg, base: Path, progress: bool) -> pl.DataFrame:
    paths: dict[str, str] = {}
    todo = table.filter(pl.col("score").is_not_null()).partition_by("input", as_dict=False, maintain_order=True)
    for rows in tqdm(todo, desc="annotate", unit="input", disable=not progress or not todo):
        vid, kind = rows["video_id"][0], rows["kind"][0]
        rel = f"annotated/{vid}.jpg"
        score = rows["video_score"][0]
        caption = (f"{rows['name'][0]}: {'video' if kind == 'video' else 'photo'} score {score:.3f} "
                   f"({rows.height} face{'s' if rows.height != 1 else ''}; green real, red fake)")
        try:
            annotate(Path(rows["input"][0]), kind, rows, cfg, base / rel, caption)
        except Exception as e:  # noqa: BLE001  a picture that cannot be made must not lose the scores
            log.warning("%s: annotated image not written: %s", rows["input"][0], e)
            continue
        paths[rows["input"][0]] = rel
    return table.with_columns(annotated=pl.col("input").replace_strict(paths, default=None, return_dtype=pl.String))


def format_summary(s: PredictSummary, max_rows: int = 40) -> str:
    """The table the CLI prints: one line per input (name, status, faces, video score), then the totals (a bad file's
    message was printed once, by the extract stage, as it finished)."""
    per = (s.table.group_by("input", maintain_order=True)
           .agg(pl.col("video_id").first(), pl.col("status").first(), pl.col("score").count().alias("faces"),
                pl.col("video_score").first(), pl.col("label").first(), pl.col("message").first()))
    lines = [f"{'input':44s} {'status':13s} {'faces':>5s} {'score':>6s}"]
    for inp, _vid, st, n, vs, lab, _msg in per.head(max_rows).iter_rows():
        name = Path(inp).name
        score = "" if vs is None or (isinstance(vs, float) and math.isnan(vs)) else f"{vs:.3f}"
        extra = "" if lab is None else f"  (label {'fake' if lab else 'real'})"  # a bad file's message: extract's line
        lines.append(f"{name[:44]:44s} {st:13s} {n:5d} {score:>6s}{extra}")
    if per.height > max_rows:
        lines.append(f"... {per.height - max_rows} more in predictions.parquet")
    n_in = per.height
    counts = ", ".join(f"{n} {k}" for k, n in s.statuses.items())
    lines.append(f"{n_in} input{'s' if n_in != 1 else ''} ({counts}), {s.faces} face{'s' if s.faces != 1 else ''} "
                 f"scored on {s.device}")
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


__all__ = ["MANIFEST_EXTS", "NO_FACE_SCORE", "PREDICTION_SCHEMA", "SUPPORTED_EXTS", "PredictInput", "PredictSummary",
           "aggregate", "annotate", "explain_faces", "extract_config", "format_summary", "predict", "resolve_inputs",
           "score_faces"]
