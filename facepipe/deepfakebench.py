"""DeepfakeBench interoperability: export facepipe crops to DeepfakeBench's on-disk layout and dataset JSON, and
import DeepfakeBench-preprocessed data (frames + JSON) into facepipe shards.

DeepfakeBench (SCLBD/DeepfakeBench; Yan et al., NeurIPS 2023 Datasets and Benchmarks) trains from one JSON per
dataset, written by its ``preprocessing/rearrange.py`` and read by ``training/dataset/abstract_dataset.py``::

    {<dataset>: {<label name>: {<split>: {[<compression>:] {<video>: {"label": <label name>,
                                                                      "frames": [<path>, ...],
                                                                      ["masks": [<path>, ...]]}}}}}}

``<split>`` is ``train`` / ``val`` / ``test`` (all three present under every label name); ``<compression>``
(``raw`` / ``c23`` / ``c40``) only for the FaceForensics++ family (:data:`NESTED`). Label names map to 0/1 through
the ``label_dict`` of its training config (:data:`LABEL_DICT`). Frame files are named by their frame index
(``<idx:03d>.png``; its loader sorts them by ``int`` of the file stem); the mask and landmark of a frame are found
by replacing ``frames`` with ``masks`` (same ``.png`` name) and with ``landmarks`` (``.npy``) in its path. Its
loader prefixes paths that do not start with ``.`` with ``rgb_dir`` and a backslash, so usable paths start with
``./`` (``rearrange.py`` writes them under its ``dataset_root_path``, default ``./datasets/rgb``).

Export layout under ``OUT``::

    rgb/<dataset>/<label name>/[<compression>/]frames/<video>/<idx:03d>.png   crops (PNG, as DeepfakeBench saves)
    rgb/<dataset>/<label name>/[<compression>/]masks/<video>/<idx:03d>.png    difference masks (0/255) where known
    rgb/<dataset>/<label name>/[<compression>/]landmarks/<video>/<idx:03d>.npy   (68, 2) int64 crop landmarks
                                                                              (preset deepfakebench only)
    dataset_json/<dataset>.json                                              written last, per dataset
    label_dict.yaml                                                          every label name used -> 0/1

JSON paths are ``<path_prefix>/<dataset>/...`` (default prefix ``./datasets/rgb``: put ``OUT`` at
``DeepfakeBench/datasets``, or give the prefix your ``rgb_dir`` stands for). Each video entry also carries a
``"facepipe"`` object (dataset, video id, method, source ids) that DeepfakeBench ignores and :func:`import_json`
uses to restore facepipe's ids exactly.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe._io import atomic_write_bytes
from facepipe.errors import InputError
from facepipe.ids import SPLITS, video_id_for

log = logging.getLogger(__name__)

LABEL_DICT = {
    "FF-real": 0, "FF-DF": 1, "FF-F2F": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1, "FF-SH": 1,
    "DFD_real": 0, "DFD_fake": 1, "CelebDFv1_real": 0, "CelebDFv1_fake": 1, "CelebDFv2_real": 0, "CelebDFv2_fake": 1,
    "DFDCP_Real": 0, "DFDCP_FakeA": 1, "DFDCP_FakeB": 1, "DFDC_Real": 0, "DFDC_Fake": 1, "DF_real": 0, "DF_fake": 1,
    "UADFV_Real": 0, "UADFV_Fake": 1, "roop_Real": 0, "roop_Fake": 1,
}
"""DeepfakeBench's ``label_dict`` (``training/config/train_config.yaml``): label name -> 0 real / 1 fake."""

NESTED = ("FaceForensics++", "DeepFakeDetection", "FaceShifter", "FF-DF", "FF-F2F", "FF-FS", "FF-NT")
"""DeepfakeBench datasets whose JSON has a compression level under each split."""

DEFAULT_PREFIX = "./datasets/rgb"


@dataclass(frozen=True)
class DFBDataset:
    """How one facepipe dataset (named after its adapter) appears in DeepfakeBench."""

    name: str
    real: str
    fake: str
    methods: tuple[tuple[str, str], ...] = ()  # facepipe method -> DeepfakeBench label name

    def label_name(self, label: int, method: str | None, method_map: dict[str, str] | None = None) -> str | None:
        """The label name of a face: ``real`` for label 0; for a fake, ``method_map[method]`` when given, else the
        method's name in :attr:`methods`, else ``fake`` when the dataset has one fake label name (no ``methods``);
        ``None`` when a dataset with per-method names (FaceForensics++, DFDCP) has none for ``method``."""
        if label == 0:
            return self.real
        if method_map and method in method_map:
            return method_map[method]
        if self.methods:
            return dict(self.methods).get(method or "")
        return self.fake

    def method_of(self, label_name: str) -> str | None:
        if label_name == self.real:
            return "original"
        return {v: k for k, v in self.methods}.get(label_name)


DATASETS = {
    "ffpp": DFBDataset("FaceForensics++", "FF-real", "FF-DF", (("Deepfakes", "FF-DF"), ("Face2Face", "FF-F2F"),
                                                              ("FaceSwap", "FF-FS"), ("NeuralTextures", "FF-NT"),
                                                              ("FaceShifter", "FF-FH"))),
    "dfd": DFBDataset("DeepFakeDetection", "DFD_real", "DFD_fake"),
    "celebdf_v1": DFBDataset("Celeb-DF-v1", "CelebDFv1_real", "CelebDFv1_fake"),
    "celebdf_v2": DFBDataset("Celeb-DF-v2", "CelebDFv2_real", "CelebDFv2_fake"),
    "dfdc": DFBDataset("DFDC", "DFDC_Real", "DFDC_Fake"),
    "dfdc_preview": DFBDataset("DFDCP", "DFDCP_Real", "DFDCP_FakeA", (("method_A", "DFDCP_FakeA"),
                                                                      ("method_B", "DFDCP_FakeB"))),
    "deeperforensics": DFBDataset("DeeperForensics-1.0", "DF_real", "DF_fake"),
    "uadfv": DFBDataset("UADFV", "UADFV_Real", "UADFV_Fake"),
}
"""facepipe adapter name -> its DeepfakeBench dataset and label names. Other datasets export as ``<name>`` with
label names ``<name>_real`` / ``<name>_fake`` (added to ``label_dict.yaml``)."""

_FF_PAIR = re.compile(r"^(\d{3})_(\d{3})$")


def dfb_dataset(dataset: str, adapter: str | None = None) -> DFBDataset:
    """The DeepfakeBench naming of facepipe dataset ``dataset`` (looked up by ``adapter``, else by its name)."""
    key = adapter or dataset
    if key in DATASETS:
        return DATASETS[key]
    return DFBDataset(dataset, f"{dataset}_real", f"{dataset}_fake")


# ---------------------------------------------------------------------------------------------
# Export


@dataclass
class Face:
    """One crop to export (from shards or from an extract output)."""

    dataset: str
    video_id: str
    split: str
    method: str | None
    label: int
    video_label: int
    frame_index: int
    track_id: int
    image: bytes
    image_ext: str
    mask: bytes | None
    crop_landmarks: list | None
    source_ids: list
    compression: str | None = None


@dataclass
class ExportSummary:
    videos: Counter = field(default_factory=Counter)  # (dataset json, label name, split) -> videos
    frames: int = 0
    masks: int = 0
    landmarks: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> faces
    json_files: list = field(default_factory=list)
    label_dict: dict = field(default_factory=dict)


def faces_from_shards(source: str, splits: tuple[str, ...] = SPLITS) -> Iterator[Face]:
    """Every sample of a shard set (index file, folder or ``s3://`` URL), as :class:`Face` records.

    Raises:
        InputError / SchemaError: as :func:`facepipe.data.loader.resolve_shards`.
    """
    import webdataset as wds

    from facepipe.data.loader import resolve_shards
    from facepipe.data.schema import MASK_EXT, decode_sample

    for split in splits:
        try:
            shards = resolve_shards(source, split)
        except InputError as e:
            if "has no shards" in str(e):
                continue
            raise
        for raw in wds.WebDataset(list(shards.urls), shardshuffle=False, empty_check=False):
            s = decode_sample(raw, image=False)
            m = s["meta"]
            yield Face(m["dataset"], m["video_id"], m["split"], m["method"], int(m["label"]), int(m["video_label"]),
                       int(m["frame_index"]), int(m["track_id"]), s["image_bytes"], s["image_ext"],
                       raw.get(MASK_EXT) if m.get("has_mask") else None, m.get("crop_landmarks"),
                       list(m.get("source_ids") or []))


def faces_from_extract(extract: str | Path, manifest: str | Path, dataset: str | None = None) -> Iterator[Face]:
    """Every face of an extract output joined with its manifest (splits, methods, compression).

    Raises:
        InputError: missing tables, faces of videos the manifest lacks, faces extracted without the manifest.
    """
    from facepipe.manifest import read_manifest

    ex = Path(extract)
    fp = ex / "faces.parquet"
    if not fp.is_file():
        raise InputError(f"{fp}: not found (run 'facepipe extract' first)")
    faces = pl.read_parquet(fp)
    man = read_manifest(manifest, dataset=dataset)
    if dataset is not None:
        man = man.filter(pl.col("dataset") == dataset)
    rows = faces.join(man.select("video_id", "dataset", "split", "method", "source_ids", "compression"),
                      on="video_id", how="left")
    missing = rows.filter(pl.col("split").is_null())["video_id"].unique().sort().to_list()
    if missing:
        raise InputError(f"{manifest}: no manifest row for {len(missing)} extracted video(s), e.g. {missing[:3]}")
    if rows.filter(pl.col("label").is_null()).height:
        raise InputError(f"{fp}: faces extracted without the manifest have no labels; rerun 'facepipe extract "
                         f"--manifest {manifest}'")
    for r in rows.sort("dataset", "video_id", "frame_index", "track_id").iter_rows(named=True):
        crop = ex / r["crop_path"]
        try:
            image = crop.read_bytes()
            mask = (ex / r["mask_path"]).read_bytes() if r["mask_path"] else None
        except OSError as e:
            raise InputError(f"{e.filename}: cannot read: {e.strerror}") from None
        ext = crop.suffix.lstrip(".").lower().replace("jpeg", "jpg")
        cl = r.get("crop_landmarks")
        yield Face(r["dataset"], r["video_id"], r["split"], r["method"], int(r["label"]), int(r["video_label"]),
                   int(r["frame_index"]), int(r["track_id"]), image, ext, mask,
                   None if cl is None else [list(p) for p in cl], list(r["source_ids"] or []), r["compression"])


def _png(image: bytes, ext: str) -> bytes:
    """Crop bytes as PNG (PNG kept byte for byte; a JPEG crop decoded and stored losslessly)."""
    if ext == "png":
        return image
    import cv2

    from facepipe.data.schema import decode_image

    img = decode_image(image, ext)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return buf.tobytes()


def _safe_component(name: str, what: str, sep_ok: bool = False) -> str:
    if "frames" in name or not sep_ok and ("/" in name or "\\" in name):
        raise InputError(f"{what} {name!r}: DeepfakeBench derives mask and landmark paths by replacing 'frames' in "
                         "the frame path, so a name may contain neither 'frames' nor path separators")
    return name


def export(faces: Iterator[Face], out: str | Path, path_prefix: str = DEFAULT_PREFIX, compression: str = "c23",
           adapters: dict[str, str] | None = None, progress: bool = True,
           method_map: dict[str, str] | None = None) -> ExportSummary:
    """Write ``faces`` in DeepfakeBench's layout and dataset JSON under ``out`` (see the module docstring).

    DeepfakeBench has one face per frame and one label per video: faces whose label differs from their video's
    (unmanipulated faces of a fake) and faces of tracks other than 0 (the main subject) are left out and counted
    in :attr:`ExportSummary.skipped`. Files are written by temp name and rename; each JSON is written last.

    Args:
        faces: records from :func:`faces_from_shards` or :func:`faces_from_extract`.
        out: output folder.
        path_prefix: what the JSON's paths start with in place of ``out/rgb`` (DeepfakeBench's ``rgb_dir``
            seen from its working directory; keep it starting with ``.``).
        compression: compression level for FaceForensics++-family datasets when the input does not record one.
        adapters: facepipe dataset name -> adapter name (``ffpp``, ``celebdf_v2``, ...) for datasets not named
            after their adapter.
        method_map: facepipe method -> DeepfakeBench label name for fakes (``--method-map``): needed for a fake whose
            method the dataset's DeepfakeBench naming does not list (FaceForensics++ and DFDCP name each method;
            e.g. a DFDC fake in a dataset exported as ``ffpp``), and overriding the naming otherwise. A name
            DeepfakeBench's ``label_dict`` has as real is refused for a fake.

    Raises:
        InputError: a name containing ``frames`` or a path separator, fakes of a method with no DeepfakeBench label
            name and no ``method_map`` entry (all such dataset/method pairs named, before any JSON is written), a
            mapped name that is real in DeepfakeBench's ``label_dict``, or no face to export.
    """
    out = Path(out)
    rgb = out / "rgb"
    prefix = path_prefix.rstrip("/")
    if not prefix.startswith("."):
        log.warning("path prefix %r does not start with '.': DeepfakeBench's loader prepends rgb_dir to such paths",
                    prefix)
    _safe_component(prefix, "path prefix", sep_ok=True)
    summary = ExportSummary()
    tree: dict = {}
    seen: set = set()
    unmapped: Counter = Counter()  # (dataset, adapter, DeepfakeBench dataset, method) -> faces
    for method, name in (method_map or {}).items():
        if LABEL_DICT.get(name) == 0:
            raise InputError(f"--method-map {method}={name}: '{name}' is a real label name in DeepfakeBench's "
                             "label_dict; fakes need a fake one")
        _safe_component(name, "label name")
    bar = tqdm(unit="face", desc="export deepfakebench", disable=not progress)
    for f in faces:
        if f.track_id != 0:
            summary.skipped["other faces of the frame (DeepfakeBench keeps one per frame)"] += 1
            continue
        if f.label != f.video_label:
            summary.skipped["face label differs from its video's (DeepfakeBench has video labels)"] += 1
            continue
        adapter = (adapters or {}).get(f.dataset)
        d = dfb_dataset(f.dataset, adapter)
        label_name = d.label_name(f.label, f.method, method_map)
        if label_name is None:
            unmapped[(f.dataset, adapter or f.dataset, d.name, f.method)] += 1
            continue
        summary.label_dict[label_name] = f.label
        comp = (f.compression or compression) if d.name in NESTED else None
        vkey = _safe_component(f.video_id, "video id")
        rel = "/".join([_safe_component(d.name, "dataset"), _safe_component(label_name, "label name")]
                       + ([comp] if comp else []))
        stem = f"{f.frame_index:03d}"
        if (rel, vkey, stem) in seen:
            raise InputError(f"{f.dataset}:{f.video_id} frame {f.frame_index} appears twice in the input")
        seen.add((rel, vkey, stem))
        _write(rgb / rel / "frames" / vkey / f"{stem}.png", _png(f.image, f.image_ext))
        entry = (tree.setdefault(d.name, {}).setdefault(label_name, {s: {} for s in SPLITS})
                 .setdefault(f.split, {}))
        if comp:
            entry = entry.setdefault(comp, {})
        video = entry.setdefault(vkey, {"label": label_name, "frames": [], "facepipe": {
            "dataset": f.dataset, "video_id": f.video_id, "method": f.method, "source_ids": f.source_ids,
            "label": f.video_label}})
        video["frames"].append(f"{prefix}/{rel}/frames/{vkey}/{stem}.png")
        if f.mask is not None:
            _write(rgb / rel / "masks" / vkey / f"{stem}.png", f.mask)
            video.setdefault("masks", []).append(f"{prefix}/{rel}/masks/{vkey}/{stem}.png")
            summary.masks += 1
        if f.crop_landmarks is not None:
            buf = _npy(np.rint(np.asarray(f.crop_landmarks, dtype=np.float64)).astype(np.int64))
            _write(rgb / rel / "landmarks" / vkey / f"{stem}.npy", buf)
            summary.landmarks += 1
        summary.frames += 1
        bar.update(1)
    bar.close()
    if unmapped:
        raise InputError("export deepfakebench: no DeepfakeBench label name for " + "; ".join(
            f"{n} fake face(s) of dataset '{ds}' with method {m!r} (exported as {name} after adapter '{ad}', whose "
            f"fake label names are {', '.join(f'{k}->{v}' for k, v in DATASETS[ad].methods)})"
            for (ds, ad, name, m), n in sorted(unmapped.items(), key=str))
            + ". Say where they go with --method-map METHOD=NAME (a DeepfakeBench label name such as FF-DF, or a "
              f"new one such as {next(iter(unmapped))[3] or 'other'}_fake, added to label_dict.yaml), or export "
              "that dataset without --adapter; no dataset JSON was written")
    if not summary.frames:
        raise InputError("export deepfakebench: no face to export" +
                         (f" (left out: {dict(summary.skipped)})" if summary.skipped else ""))
    for name, labels in tree.items():
        used = sorted({c for sp in labels.values() for v in sp.values() for c in v}) if name in NESTED else []
        for label_name, splits in labels.items():
            for split, videos in splits.items():
                for c in used:  # DeepfakeBench indexes every split by the compression level it trains on
                    videos.setdefault(c, {})
                flat = videos.values() if name not in NESTED else [v for c in videos.values() for v in c.values()]
                for v in flat:
                    v["frames"].sort(key=lambda p: int(p.rsplit("/", 1)[-1].split(".")[0]))
                    if "masks" in v:
                        v["masks"].sort(key=lambda p: int(p.rsplit("/", 1)[-1].split(".")[0]))
                summary.videos[(name, label_name, split)] += len(flat)
        path = out / "dataset_json" / f"{name}.json"
        _write(path, json.dumps({name: labels}, indent=1, sort_keys=True).encode())
        summary.json_files.append(str(path))
    lines = ["# label names of this export -> 0 real / 1 fake: merge into label_dict of DeepfakeBench's",
             "# training/config/train_config.yaml and test_config.yaml (names it already has are marked)"]
    for k, v in sorted(summary.label_dict.items()):
        lines.append(f"{k}: {v}" + ("  # in DeepfakeBench's label_dict" if LABEL_DICT.get(k) == v else ""))
    _write(out / "label_dict.yaml", ("\n".join(lines) + "\n").encode())
    return summary


def _write(path: Path, data: bytes) -> None:
    """Temp name, then rename (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _npy(a: np.ndarray) -> bytes:
    from facepipe.data.schema import npy_bytes

    return npy_bytes(a)


# ---------------------------------------------------------------------------------------------
# Import


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


def import_json(json_files: list[str | Path], root: str | Path, out: str | Path, label_dict: dict[str, int] | None = None,
                compression: str = "c23", only: list[str] | None = None, dataset_names: dict[str, str] | None = None,
                path_prefix: str = DEFAULT_PREFIX, max_samples: int = 2000, seed: int = 0,
                progress: bool = True) -> ImportSummary:
    """Turn DeepfakeBench-preprocessed data (dataset JSON + frames) into a facepipe shard set at ``out``.

    Every frame becomes a sample with its video's label (``label_source`` ``video``), its split, method and frame
    index (the file stem), track 0, ``preset`` ``deepfakebench`` (``deepfakebench-68`` when its landmark file has 68
    points: made with the 68-point predictor, e.g. by :func:`export` of such crops); the crop is stored byte for byte;
    its mask
    (``frames`` -> ``masks``) and landmarks (``frames`` -> ``landmarks``, ``.npy``) when those files exist. The
    crop is its own source frame (identity ``affine``); ``landmarks`` are parts 37, 44, 30, 49, 55 of the
    landmark file. Videos exported by :func:`export` get their facepipe ids back; others get
    ``video_id_for("<label name>/<video>")``, the DeepfakeBench dataset name (or ``dataset_names``) as dataset, and,
    for FaceForensics++ pairs ``TTT_SSS``, the target and source originals as ``source_ids`` when listed. The
    shard stage's checks then apply (leakage across splits through those links).

    Args:
        json_files: DeepfakeBench dataset JSONs.
        root: the folder the JSON's paths are relative to, with ``path_prefix`` standing for it (DeepfakeBench's
            ``rgb_dir``); absolute paths are used as they are.
        out: shard output folder or ``s3://`` URL.
        label_dict: label names -> 0/1 beyond :data:`LABEL_DICT`.
        compression: the compression level to read from FaceForensics++-family JSONs.
        only: import just these label names.
        dataset_names: DeepfakeBench dataset name -> facepipe dataset name.

    Raises:
        InputError: unreadable JSON, unknown label names, a video in two splits, missing or non-square frames,
            a frame file whose stem is not a frame index (each naming the entries).
    """
    from facepipe.faces.dlib68 import DFB_FIVE_PARTS
    from facepipe.ids import check_name
    from facepipe.stages import shard

    labels_known = {**LABEL_DICT, **(label_dict or {})}
    root = Path(root)
    only_set = set(only) if only else None
    records: list[dict] = []
    unknown: dict[str, list[str]] = defaultdict(list)
    for jf in json_files:
        try:
            data = json.loads(Path(jf).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{jf}: cannot read DeepfakeBench JSON: {e}") from None
        for ds, label_name, split, key, entry in _walk(data, str(jf), compression, only_set):
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
    # identities
    for r in records:
        fp = r["entry"].get("facepipe") or {}
        adapter = next((k for k, d in DATASETS.items() if d.name == r["ds"]), None)
        ds_name = (fp.get("dataset") or (dataset_names or {}).get(r["ds"]) or adapter
                   or re.sub(r"[^A-Za-z0-9_-]+", "_", r["ds"]))
        check_name("dataset", ds_name)
        r["dataset"] = ds_name
        r["video_id"] = fp.get("video_id") or video_id_for(f"{r['label_name']}/{r['key']}")
        r["label"] = int(labels_known[r["label_name"]])
        known = DATASETS[adapter].method_of(r["label_name"]) if adapter else None
        r["method"] = fp.get("method") or known or ("original" if r["label"] == 0 else r["label_name"])
        r["sources"] = fp.get("source_ids")
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
    reals = {(r["dataset"], r["key"]): r["video_id"] for r in records if r["label"] == 0}
    for r in records:
        if r["sources"] is None:
            m = _FF_PAIR.match(r["key"]) if r["label"] == 1 else None
            r["sources"] = [reals[(r["dataset"], s)] for s in (m.groups() if m else ()) if (r["dataset"], s) in reals]
    summary = ImportSummary()
    with tempfile.TemporaryDirectory(prefix="facepipe-import-") as tmp:
        stage = Path(tmp)
        faces: dict[str, list[dict]] = defaultdict(list)
        manifest: dict[str, list[dict]] = defaultdict(list)
        missing: list[str] = []
        bad: list[str] = []
        bar = tqdm(total=len(records), unit="video", desc="import deepfakebench", disable=not progress)
        for r in records:
            ds = r["dataset"]
            manifest[ds].append({"dataset": ds, "video_id": r["video_id"], "path": r["key"], "label": r["label"],
                                 "method": r["method"], "split": r["split"], "source_ids": r["sources"],
                                 "compression": compression if r["ds"] in NESTED else None, "identity_ids": [],
                                 "mask_path": None, "protocol_note": None})
            summary.videos[(ds, r["split"])] += 1
            entry_name = f"{r['ds']}/{r['label_name']}/{r['split']}/{r['key']}"
            for fpath in r["entry"]["frames"]:
                path = _resolve(fpath, root, path_prefix)
                stem = Path(fpath.replace("\\", "/")).stem
                if not stem.isdigit():
                    bad.append(f"{entry_name}: {fpath} (stem is not a frame index)")
                    continue
                if not path.is_file():
                    missing.append(f"{entry_name}: {path}")
                    continue
                size = _image_size(path)
                if size is None or size[0] != size[1]:
                    why = "does not decode" if size is None else f"{size[0]}x{size[1]}, not square"
                    bad.append(f"{entry_name}: {path} ({why})")
                    continue
                crop = size[0]
                lm_path = Path(str(path).replace("frames", "landmarks")).with_suffix(".npy")
                crop_lm = five = None
                if lm_path.is_file():
                    try:
                        pts = np.load(lm_path, allow_pickle=False).astype(np.float32).reshape(-1, 2)
                    except (OSError, ValueError) as e:
                        raise InputError(f"{lm_path}: landmark file does not load: {e}") from None
                    if len(pts) > max(DFB_FIVE_PARTS):
                        crop_lm = pts.tolist()
                        five = pts[list(DFB_FIVE_PARTS)].tolist()
                        summary.landmarks += 1
                mask_rel = None
                mask_src = Path(str(path).replace("frames", "masks"))
                if r["label"] == 1 and mask_src.is_file():
                    mask_rel = _stage_mask(mask_src, stage / ds / "masks" / r["video_id"] / f"{stem}.png", crop)
                    summary.masks += 1
                faces[ds].append({
                    "video_id": r["video_id"], "frame_index": int(stem), "timestamp_s": None, "track_id": 0,
                    "box": [0.0, 0.0, float(crop), float(crop)], "landmarks": five, "score": None,
                    "face_size_px": float(crop), "affine": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                    "crop_path": str(path.resolve()), "crop_mode": "arcface", "crop_size": crop,
                    "detector": "deepfakebench", "detector_version": "import", "label": r["label"],
                    "video_label": r["label"], "label_source": "video", "manipulation_score": None,
                    "mask_path": None if mask_rel is None else str(mask_rel),
                    "preset": "deepfakebench-68" if crop_lm is not None and len(crop_lm) == 68 else "deepfakebench",
                    "crop_landmarks": crop_lm,
                })
                summary.frames += 1
            bar.update(1)
        bar.close()
        if missing or bad:
            msgs = []
            if missing:
                msgs.append(f"{len(missing)} frame file(s) missing, e.g. " + "; ".join(missing[:3]))
            if bad:
                msgs.append(f"{len(bad)} unusable frame file(s), e.g. " + "; ".join(bad[:3]))
            raise InputError("import deepfakebench: " + ". ".join(msgs) + f" (root {root}, prefix {path_prefix})")
        from facepipe.manifest import MANIFEST_SCHEMA
        from facepipe.stages.extract import FACE_SCHEMA, VIDEO_SCHEMA

        inputs = []
        for ds, rows in faces.items():
            d = stage / ds
            d.mkdir(parents=True, exist_ok=True)
            pl.DataFrame(rows, schema=FACE_SCHEMA).write_parquet(d / "faces.parquet")
            pl.DataFrame(manifest[ds], schema=MANIFEST_SCHEMA).write_parquet(d / "manifest.parquet")
            # DeepfakeBench kept these frames: every imported video is status ok (the shard stage reads it)
            n_faces = Counter(f["video_id"] for f in rows)
            pl.DataFrame([{**dict.fromkeys(VIDEO_SCHEMA), "video_id": m["video_id"], "path": m["path"], "status": "ok",
                           "n_faces": n_faces[m["video_id"]]} for m in manifest[ds]],
                         schema=VIDEO_SCHEMA).write_parquet(d / "videos.parquet")
            inputs.append(shard.ShardInput(dataset=ds, extract=str(d), manifest=str(d / "manifest.parquet")))
        cfg = shard.ShardConfig(inputs=tuple(inputs), max_samples=max_samples, seed=seed, masks=True, views=())
        summary.shards = shard.run(out, cfg, progress=progress)
    return summary


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


__all__ = ["DATASETS", "DEFAULT_PREFIX", "LABEL_DICT", "NESTED", "export", "faces_from_extract", "faces_from_shards",
           "import_json", "load_label_dict"]
