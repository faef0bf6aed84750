"""DeepfakeBench-preprocessed data (dataset JSON + frames) -> a facepipe shard set.

:func:`import_json` in named steps: read and check each JSON (:func:`_read_json`, :func:`_walk`), keep the entries
of known label names (:func:`_collect_entries`), give each video its facepipe names (:func:`_name_videos`,
:func:`_check_one_split`, :func:`_link_sources`), collect every frame with its landmarks and mask
(:func:`_collect_frames`), stage extract-shaped tables per dataset (:func:`_stage_tables`) and hand them to the
shard stage.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe.deepfakebench.names import (
    DATASETS,
    DEFAULT_PREFIX,
    FF_PAIR,
    LABEL_DICT,
    NESTED,
    adapter_of,
    facepipe_dataset,
)
from facepipe.errors import InputError
from facepipe.ids import SPLITS, video_id_for


@dataclass
class ImportSummary:
    videos: Counter = field(default_factory=Counter)  # (dataset, split) -> videos
    frames: int = 0
    masks: int = 0
    landmarks: int = 0
    shards: object = None


def _resolve(path: str, root: Path, prefix: str) -> Path:
    """A JSON frame path on this machine: absolute as is; ``<prefix>/x`` -> ``root/x``; else ``root/path``."""
    p = path.replace("\\", "/")
    if p.startswith("/"):
        return Path(p)
    pre = prefix.replace("\\", "/").rstrip("/") + "/"
    for cand in (pre, pre.removeprefix("./")):
        if p.startswith(cand):
            return root / p[len(cand):]
    return root / p.removeprefix("./")


def _image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image header (Pillow reads no pixels), ``None`` if it is no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def _read_json(jf: str | Path) -> dict:
    """One DeepfakeBench dataset JSON.

    Raises:
        InputError: unreadable or not JSON.
    """
    try:
        return json.loads(Path(jf).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{jf}: cannot read DeepfakeBench JSON: {e}") from None


def _walk(data: dict, json_path: str, compression: str | None, only: set[str] | None):
    """Yield ``(dataset, label name, split, video key, entry)`` from a DeepfakeBench dataset JSON."""
    for ds, labels in data.items():
        if not isinstance(labels, dict):
            raise InputError(f"{json_path}: '{ds}' is not a mapping of label names")
        for label_name, splits in labels.items():
            if only is not None and label_name not in only:
                continue
            if not isinstance(splits, dict):
                raise InputError(f"{json_path}: {ds}/{label_name} is not a mapping of splits")
            for split, videos in splits.items():
                if split not in SPLITS:
                    raise InputError(f"{json_path}: {ds}/{label_name}: unknown split '{split}' (expected {SPLITS})")
                if ds in NESTED:
                    if not isinstance(videos, dict) or (videos and compression not in videos):
                        raise InputError(f"{json_path}: {ds}/{label_name}/{split} has no compression level "
                                         f"'{compression}' (has {sorted(videos) if isinstance(videos, dict) else '?'})")
                    videos = videos.get(compression, {})
                for key, entry in videos.items():
                    yield ds, label_name, split, key, entry


def _collect_entries(json_files: list[str | Path], labels_known: dict[str, int], compression: str,
                     only: set[str] | None) -> list[dict]:
    """Every video entry of the JSONs (``json``, ``ds``, ``label_name``, ``split``, ``key``, ``entry``).

    Raises:
        InputError: an entry without a ``frames`` list, unknown label names (all named), no video at all.
    """
    records: list[dict] = []
    unknown: dict[str, list[str]] = defaultdict(list)
    for jf in json_files:
        data = _read_json(jf)
        for ds, label_name, split, key, entry in _walk(data, str(jf), compression, only):
            name = entry.get("label", label_name) if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(entry.get("frames"), list):
                raise InputError(f"{jf}: {ds}/{label_name}/{split}/{key}: entry lacks a 'frames' list")
            if name not in labels_known:
                unknown[name].append(f"{ds}/{label_name}/{split}/{key}")
                continue
            records.append({"json": str(jf), "ds": ds, "label_name": name, "split": split, "key": key,
                            "entry": entry})
    if unknown:
        raise InputError("unknown DeepfakeBench label name(s) " + "; ".join(
            f"'{n}' ({len(v)} videos, e.g. {v[0]})" for n, v in sorted(unknown.items()))
            + ": give their 0/1 labels with --label-dict FILE (YAML or JSON: name: 0|1) or skip them with --labels")
    if not records:
        raise InputError(f"{', '.join(map(str, json_files))}: no video to import")
    return records


def _name_videos(records: list[dict], labels_known: dict[str, int], dataset_names: dict[str, str] | None) -> None:
    """Each record's facepipe ``dataset``, ``video_id``, ``label``, ``method`` and recorded ``sources``: those
    :func:`~facepipe.deepfakebench.export` wrote in its ``facepipe`` entry, else derived from DeepfakeBench's names.

    Raises:
        IdError: a dataset name that cannot be part of a sample key.
    """
    for r in records:
        fp = r["entry"].get("facepipe") or {}
        adapter = adapter_of(r["ds"])
        r["dataset"] = facepipe_dataset(r["ds"], fp.get("dataset"), dataset_names)
        r["video_id"] = fp.get("video_id") or video_id_for(f"{r['label_name']}/{r['key']}")
        r["label"] = int(labels_known[r["label_name"]])
        known = DATASETS[adapter].method_of(r["label_name"]) if adapter else None
        r["method"] = fp.get("method") or known or ("original" if r["label"] == 0 else r["label_name"])
        r["sources"] = fp.get("source_ids")


def _check_one_split(records: list[dict]) -> None:
    """Raises InputError: a video listed more than once (naming the first five)."""
    where: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        where[(r["dataset"], r["video_id"])].append(r)
    clashes = [(k, v) for k, v in where.items() if len(v) > 1]
    if clashes:
        raise InputError(f"{len(clashes)} video(s) listed more than once (a video in two splits leaks): " + "; ".join(
            f"{k[0]}:{k[1]} in " + ", ".join(f"{x['ds']}/{x['label_name']}/{x['split']}" for x in v)
            for k, v in clashes[:5]) + (" ..." if len(clashes) > 5 else "")
            + " (DeepfakeBench's JSONs list DFD videos in every split and Celeb-DF test videos in train: "
              "skip such label names with --labels)")


def _link_sources(records: list[dict]) -> None:
    """A fake without recorded sources: the originals ``TTT`` and ``SSS`` of a FaceForensics++ pair ``TTT_SSS``
    when those are imported too."""
    reals = {(r["dataset"], r["key"]): r["video_id"] for r in records if r["label"] == 0}
    for r in records:
        if r["sources"] is None:
            m = FF_PAIR.match(r["key"]) if r["label"] == 1 else None
            r["sources"] = [reals[(r["dataset"], s)] for s in (m.groups() if m else ()) if (r["dataset"], s) in reals]


def _stage_mask(src: Path, dst: Path, size: int) -> str:
    """A DeepfakeBench mask (often 3-channel 0/255) as a 1-channel PNG of the crop's size; returns ``dst``."""
    import cv2

    m = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise InputError(f"{src}: mask does not decode")
    if m.shape != (size, size):
        m = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)
    dst.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", m)
    dst.write_bytes(buf.tobytes())
    return str(dst)


def _landmarks(path: Path) -> tuple[list | None, list | None]:
    """(crop landmarks, the five DeepfakeBench uses) from a landmark ``.npy``; ``(None, None)`` when there is
    none or it has too few points.

    Raises:
        InputError: a file that does not load.
    """
    from facepipe.faces.dlib68 import DFB_FIVE_PARTS

    if not path.is_file():
        return None, None
    try:
        pts = np.load(path, allow_pickle=False).astype(np.float32).reshape(-1, 2)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: landmark file does not load: {e}") from None
    if len(pts) > max(DFB_FIVE_PARTS):
        return pts.tolist(), pts[list(DFB_FIVE_PARTS)].tolist()
    return None, None


def _face_row(r: dict, path: Path, stem: str, crop: int, stage: Path, summary: ImportSummary) -> dict:
    """The faces.parquet row of one checked frame (its landmarks and mask staged)."""
    crop_lm, five = _landmarks(Path(str(path).replace("frames", "landmarks")).with_suffix(".npy"))
    if crop_lm is not None:
        summary.landmarks += 1
    mask_rel = None
    mask_src = Path(str(path).replace("frames", "masks"))
    if r["label"] == 1 and mask_src.is_file():
        mask_rel = _stage_mask(mask_src, stage / r["dataset"] / "masks" / r["video_id"] / f"{stem}.png", crop)
        summary.masks += 1
    return {
        "video_id": r["video_id"], "frame_index": int(stem), "timestamp_s": None, "track_id": 0,
        "box": [0.0, 0.0, float(crop), float(crop)], "landmarks": five, "score": None,
        "face_size_px": float(crop), "affine": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        "crop_path": str(path.resolve()), "crop_mode": "arcface", "crop_size": crop,
        "detector": "deepfakebench", "detector_version": "import", "label": r["label"],
        "video_label": r["label"], "label_source": "video", "manipulation_score": None,
        "mask_path": None if mask_rel is None else str(mask_rel),
        "preset": "deepfakebench-68" if crop_lm is not None and len(crop_lm) == 68 else "deepfakebench",
        "crop_landmarks": crop_lm, "gap": False,
    }


@dataclass
class _Frames:
    """What :func:`_collect_frames` gathers: per facepipe dataset its face and manifest rows, and the problems."""

    faces: dict = field(default_factory=lambda: defaultdict(list))
    manifest: dict = field(default_factory=lambda: defaultdict(list))
    missing: list = field(default_factory=list)
    bad: list = field(default_factory=list)


def _collect_video(r: dict, root: Path, path_prefix: str, stage: Path, summary: ImportSummary, got: _Frames) -> None:
    """One video's frames: each must exist, be named by its frame index and be a square image."""
    entry_name = f"{r['ds']}/{r['label_name']}/{r['split']}/{r['key']}"
    for fpath in r["entry"]["frames"]:
        path = _resolve(fpath, root, path_prefix)
        stem = Path(fpath.replace("\\", "/")).stem
        if not stem.isdigit():
            got.bad.append(f"{entry_name}: {fpath} (stem is not a frame index)")
            continue
        if not path.is_file():
            got.missing.append(f"{entry_name}: {path}")
            continue
        size = _image_size(path)
        if size is None or size[0] != size[1]:
            why = "does not decode" if size is None else f"{size[0]}x{size[1]}, not square"
            got.bad.append(f"{entry_name}: {path} ({why})")
            continue
        got.faces[r["dataset"]].append(_face_row(r, path, stem, size[0], stage, summary))
        summary.frames += 1


def _collect_frames(records: list[dict], root: Path, path_prefix: str, compression: str, stage: Path,
                    summary: ImportSummary, progress: bool) -> _Frames:
    """Every video's manifest row and every frame's face row.

    Raises:
        InputError: missing or unusable frame files (counted, the first three named), a landmark or mask file
            that does not load.
    """
    got = _Frames()
    bar = tqdm(total=len(records), unit="video", desc="import deepfakebench", disable=not progress)
    for r in records:
        ds = r["dataset"]
        got.manifest[ds].append({"dataset": ds, "video_id": r["video_id"], "path": r["key"], "label": r["label"],
                                 "method": r["method"], "split": r["split"], "source_ids": r["sources"],
                                 "compression": compression if r["ds"] in NESTED else None, "identity_ids": [],
                                 "mask_path": None, "protocol_note": None})
        summary.videos[(ds, r["split"])] += 1
        _collect_video(r, root, path_prefix, stage, summary, got)
        bar.update(1)
    bar.close()
    if got.missing or got.bad:
        msgs = []
        if got.missing:
            msgs.append(f"{len(got.missing)} frame file(s) missing, e.g. " + "; ".join(got.missing[:3]))
        if got.bad:
            msgs.append(f"{len(got.bad)} unusable frame file(s), e.g. " + "; ".join(got.bad[:3]))
        raise InputError("import deepfakebench: " + ". ".join(msgs) + f" (root {root}, prefix {path_prefix})")
    return got


def _stage_tables(got: _Frames, stage: Path) -> list:
    """Per dataset, the extract-shaped tables the shard stage reads (faces, manifest, videos.parquet); returns
    the shard stage's inputs."""
    from facepipe.manifest import MANIFEST_SCHEMA
    from facepipe.stages import shard
    from facepipe.stages.extract.tables import FACE_SCHEMA, VIDEO_SCHEMA

    inputs = []
    for ds, rows in got.faces.items():
        d = stage / ds
        d.mkdir(parents=True, exist_ok=True)
        pl.DataFrame(rows, schema=FACE_SCHEMA).write_parquet(d / "faces.parquet")
        pl.DataFrame(got.manifest[ds], schema=MANIFEST_SCHEMA).write_parquet(d / "manifest.parquet")
        # DeepfakeBench kept these frames: every imported video is status ok (the shard stage reads it)
        n_faces = Counter(f["video_id"] for f in rows)
        pl.DataFrame([{**dict.fromkeys(VIDEO_SCHEMA), "video_id": m["video_id"], "path": m["path"], "status": "ok",
                       "n_faces": n_faces[m["video_id"]]} for m in got.manifest[ds]],
                     schema=VIDEO_SCHEMA).write_parquet(d / "videos.parquet")
        inputs.append(shard.ShardInput(dataset=ds, extract=str(d), manifest=str(d / "manifest.parquet")))
    return inputs


def import_json(json_files: list[str | Path], root: str | Path, out: str | Path, label_dict: dict[str, int] | None = None,
                compression: str = "c23", only: list[str] | None = None, dataset_names: dict[str, str] | None = None,
                path_prefix: str = DEFAULT_PREFIX, max_samples: int = 2000, seed: int = 0,
                progress: bool = True) -> ImportSummary:
    """Turn DeepfakeBench-preprocessed data (dataset JSON + frames) into a facepipe shard set at ``out``.

    Every frame becomes a sample with its video's label (``label_source`` ``video``), its split, method and frame
    index (the file stem), track 0, ``preset`` ``deepfakebench`` (``deepfakebench-68`` when its landmark file has 68
    points: made with the 68-point predictor, e.g. by :func:`~facepipe.deepfakebench.export` of such crops); the
    crop is stored byte for byte; its mask (``frames`` -> ``masks``) and landmarks (``frames`` -> ``landmarks``,
    ``.npy``) when those files exist. The crop is its own source frame (identity ``affine``); ``landmarks`` are
    parts 37, 44, 30, 49, 55 of the landmark file. Videos exported by :func:`~facepipe.deepfakebench.export` get
    their facepipe ids back; others get ``video_id_for("<label name>/<video>")``, the DeepfakeBench dataset name
    (or ``dataset_names``) as dataset, and, for FaceForensics++ pairs ``TTT_SSS``, the target and source originals
    as ``source_ids`` when listed. The shard stage's checks then apply (leakage across splits through those links).

    Args:
        json_files: DeepfakeBench dataset JSONs.
        root: the folder the JSON's paths are relative to, with ``path_prefix`` standing for it (DeepfakeBench's
            ``rgb_dir``); absolute paths are used as they are.
        out: shard output folder or ``s3://`` URL.
        label_dict: label names -> 0/1 beyond :data:`~facepipe.deepfakebench.LABEL_DICT`.
        compression: the compression level to read from FaceForensics++-family JSONs.
        only: import just these label names.
        dataset_names: DeepfakeBench dataset name -> facepipe dataset name.

    Raises:
        InputError: unreadable JSON, unknown label names, a video in two splits, missing or non-square frames,
            a frame file whose stem is not a frame index (each naming the entries).
        IdError: a facepipe dataset name that cannot be part of a sample key.
    """
    from facepipe.stages import shard

    labels_known = {**LABEL_DICT, **(label_dict or {})}
    root = Path(root)
    records = _collect_entries(json_files, labels_known, compression, set(only) if only else None)
    _name_videos(records, labels_known, dataset_names)
    _check_one_split(records)
    _link_sources(records)
    summary = ImportSummary()
    with tempfile.TemporaryDirectory(prefix="facepipe-import-") as tmp:
        stage = Path(tmp)
        got = _collect_frames(records, root, path_prefix, compression, stage, summary, progress)
        inputs = _stage_tables(got, stage)
        cfg = shard.ShardConfig(inputs=tuple(inputs), max_samples=max_samples, seed=seed, masks=True, views=())
        summary.shards = shard.run(out, cfg, progress=progress)
    return summary


def load_label_dict(path: str | Path) -> dict[str, int]:
    """A ``name: 0|1`` mapping from a YAML or JSON file (DeepfakeBench's ``label_dict`` section or a bare mapping).

    Raises:
        InputError: unreadable file or a value other than 0/1.
    """
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"{path}: cannot read label dict: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("label_dict"), dict):
        data = data["label_dict"]
    if not isinstance(data, dict) or any(v not in (0, 1) for v in data.values()):
        raise InputError(f"{path}: expected a mapping of label names to 0 (real) or 1 (fake)")
    return {str(k): int(v) for k, v in data.items()}
