"""facepipe crops (shards or an extract output) -> DeepfakeBench's layout and dataset JSON.

Layout under ``OUT``::

    rgb/<dataset>/<label name>/[<compression>/]frames/<video>/<idx:03d>.png   crops (PNG, as DeepfakeBench saves)
    rgb/<dataset>/<label name>/[<compression>/]masks/<video>/<idx:03d>.png    difference masks (0/255) where known
    rgb/<dataset>/<label name>/[<compression>/]landmarks/<video>/<idx:03d>.npy   (68, 2) int64 crop landmarks
                                                                              (preset deepfakebench only)
    dataset_json/<dataset>.json                                              written last, per dataset
    label_dict.yaml                                                          every label name used -> 0/1

JSON paths are ``<path_prefix>/<dataset>/...`` (default prefix ``./datasets/rgb``: put ``OUT`` at
``DeepfakeBench/datasets``, or give the prefix your ``rgb_dir`` stands for). Each video entry also carries a
``"facepipe"`` object (dataset, video id, method, source ids) that DeepfakeBench ignores and
:func:`facepipe.deepfakebench.import_json` uses to restore facepipe's ids exactly.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe._io import atomic_write_bytes
from facepipe.deepfakebench.names import (
    DATASETS,
    DEFAULT_PREFIX,
    LABEL_DICT,
    NESTED,
    check_method_map,
    dfb_dataset,
    safe_component,
)
from facepipe.errors import InputError
from facepipe.ids import SPLITS

log = logging.getLogger("facepipe.deepfakebench")


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


def _write(path: Path, data: bytes) -> None:
    """Temp name, then rename (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _npy(a: np.ndarray) -> bytes:
    from facepipe.data.schema import npy_bytes

    return npy_bytes(a)


def _frame_number(path: str) -> int:
    return int(path.rsplit("/", 1)[-1].split(".")[0])


@dataclass
class _Export:
    """What one export run has gathered so far: the JSON tree, the frames seen, the faces it cannot name."""

    rgb: Path
    prefix: str
    compression: str
    adapters: dict[str, str]
    method_map: dict[str, str] | None
    landmarks: bool = False  # every exported face must have 68-point crop landmarks
    summary: ExportSummary = field(default_factory=ExportSummary)
    tree: dict = field(default_factory=dict)
    seen: set = field(default_factory=set)
    unmapped: Counter = field(default_factory=Counter)  # (dataset, adapter, DeepfakeBench dataset, method) -> faces

    def add(self, f: Face) -> bool:
        """Write one face's files and list it in the tree; ``False`` (counted why) when it is left out."""
        if f.track_id != 0:
            self.summary.skipped["other faces of the frame (DeepfakeBench keeps one per frame)"] += 1
            return False
        if f.label != f.video_label:
            self.summary.skipped["face label differs from its video's (DeepfakeBench has video labels)"] += 1
            return False
        if self.landmarks and (f.crop_landmarks is None or len(f.crop_landmarks) not in (68, 81)):
            raise InputError(f"{f.dataset}/{f.video_id} frame {f.frame_index}: no 68-point landmarks, and --landmarks "
                             "asks for them (DeepfakeBench's with_landmark would read zeros); extract with --preset "
                             "deepfakebench (or extract.landmarks68: true) and shard again, or export without "
                             "--landmarks")
        adapter = self.adapters.get(f.dataset)
        d = dfb_dataset(f.dataset, adapter)
        label_name = d.label_name(f.label, f.method, self.method_map)
        if label_name is None:
            self.unmapped[(f.dataset, adapter or f.dataset, d.name, f.method)] += 1
            return False
        self.summary.label_dict[label_name] = f.label
        comp = (f.compression or self.compression) if d.name in NESTED else None
        vkey = safe_component(f.video_id, "video id")
        rel = "/".join([safe_component(d.name, "dataset"), safe_component(label_name, "label name")]
                       + ([comp] if comp else []))
        stem = f"{f.frame_index:03d}"
        if (rel, vkey, stem) in self.seen:
            raise InputError(f"{f.dataset}:{f.video_id} frame {f.frame_index} appears twice in the input")
        self.seen.add((rel, vkey, stem))
        _write(self.rgb / rel / "frames" / vkey / f"{stem}.png", _png(f.image, f.image_ext))
        video = self._video_entry(f, d.name, label_name, comp, vkey)
        self._write_extras(f, video, rel, vkey, stem)
        self.summary.frames += 1
        return True

    def _video_entry(self, f: Face, name: str, label_name: str, comp: str | None, vkey: str) -> dict:
        entry = self.tree.setdefault(name, {}).setdefault(label_name, {s: {} for s in SPLITS}).setdefault(f.split, {})
        if comp:
            entry = entry.setdefault(comp, {})
        return entry.setdefault(vkey, {"label": label_name, "frames": [], "facepipe": {
            "dataset": f.dataset, "video_id": f.video_id, "method": f.method, "source_ids": f.source_ids,
            "label": f.video_label}})

    def _write_extras(self, f: Face, video: dict, rel: str, vkey: str, stem: str) -> None:
        """The frame's path in the JSON, its mask and its landmarks."""
        video["frames"].append(f"{self.prefix}/{rel}/frames/{vkey}/{stem}.png")
        if f.mask is not None:
            _write(self.rgb / rel / "masks" / vkey / f"{stem}.png", f.mask)
            video.setdefault("masks", []).append(f"{self.prefix}/{rel}/masks/{vkey}/{stem}.png")
            self.summary.masks += 1
        if f.crop_landmarks is not None:
            buf = _npy(np.rint(np.asarray(f.crop_landmarks, dtype=np.float64)).astype(np.int64))
            _write(self.rgb / rel / "landmarks" / vkey / f"{stem}.npy", buf)
            self.summary.landmarks += 1

    def check_complete(self) -> None:
        """Refuse an export with unnamed fakes or with nothing in it (before any JSON is written).

        Raises:
            InputError: as :func:`export`.
        """
        if self.unmapped:
            raise InputError("export deepfakebench: no DeepfakeBench label name for " + "; ".join(
                f"{n} fake face(s) of dataset '{ds}' with method {m!r} (exported as {name} after adapter '{ad}', "
                f"whose fake label names are {', '.join(f'{k}->{v}' for k, v in DATASETS[ad].methods)})"
                for (ds, ad, name, m), n in sorted(self.unmapped.items(), key=str))
                + ". Say where they go with --method-map METHOD=NAME (a DeepfakeBench label name such as FF-DF, or "
                  f"a new one such as {next(iter(self.unmapped))[3] or 'other'}_fake, added to label_dict.yaml), or "
                  "export that dataset without --adapter; no dataset JSON was written")
        if not self.summary.frames:
            raise InputError("export deepfakebench: no face to export" +
                             (f" (left out: {dict(self.summary.skipped)})" if self.summary.skipped else ""))

    def finish_dataset(self, name: str, labels: dict) -> None:
        """Every split indexed by every compression level used (nested datasets), frames and masks in frame
        order, videos counted."""
        used = sorted({c for sp in labels.values() for v in sp.values() for c in v}) if name in NESTED else []
        for label_name, splits in labels.items():
            for split, videos in splits.items():
                for c in used:  # DeepfakeBench indexes every split by the compression level it trains on
                    videos.setdefault(c, {})
                flat = videos.values() if name not in NESTED else [v for c in videos.values() for v in c.values()]
                for v in flat:
                    v["frames"].sort(key=_frame_number)
                    if "masks" in v:
                        v["masks"].sort(key=_frame_number)
                self.summary.videos[(name, label_name, split)] += len(flat)


def _write_label_dict(out: Path, label_dict: dict[str, int]) -> None:
    lines = ["# label names of this export -> 0 real / 1 fake: merge into label_dict of DeepfakeBench's",
             "# training/config/train_config.yaml and test_config.yaml (names it already has are marked)"]
    for k, v in sorted(label_dict.items()):
        lines.append(f"{k}: {v}" + ("  # in DeepfakeBench's label_dict" if LABEL_DICT.get(k) == v else ""))
    _write(out / "label_dict.yaml", ("\n".join(lines) + "\n").encode())


def export(faces: Iterator[Face], out: str | Path, path_prefix: str = DEFAULT_PREFIX, compression: str = "c23",
           adapters: dict[str, str] | None = None, progress: bool = True,
           method_map: dict[str, str] | None = None, landmarks: bool = False) -> ExportSummary:
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
        landmarks: require 68-point crop landmarks on every exported face (``--landmarks``): without them
            DeepfakeBench's ``with_landmark`` silently reads zeros. Faces get them from ``extract --preset
            deepfakebench`` or ``extract.landmarks68: true``; without this option, faces lacking them get no file.

    DeepfakeBench has no validation mode: the exported ``val`` split is listed in the JSON, but its trainer trains
    on ``train`` and tests on ``test``.

    Raises:
        InputError: a name containing ``frames`` or a path separator, fakes of a method with no DeepfakeBench label
            name and no ``method_map`` entry (all such dataset/method pairs named, before any JSON is written), a
            mapped name that is real in DeepfakeBench's ``label_dict``, no face to export, or (``landmarks``) a
            face without 68-point landmarks (naming it and the preset that makes them; no JSON is written).
    """
    out = Path(out)
    prefix = path_prefix.rstrip("/")
    if not prefix.startswith("."):
        log.warning("path prefix %r does not start with '.': DeepfakeBench's loader prepends rgb_dir to such paths",
                    prefix)
    safe_component(prefix, "path prefix", sep_ok=True)
    check_method_map(method_map)
    run = _Export(out / "rgb", prefix, compression, adapters or {}, method_map, landmarks)
    bar = tqdm(unit="face", desc="export deepfakebench", disable=not progress)
    for f in faces:
        if run.add(f):
            bar.update(1)
    bar.close()
    run.check_complete()
    for name, labels in run.tree.items():
        run.finish_dataset(name, labels)
        path = out / "dataset_json" / f"{name}.json"
        _write(path, json.dumps({name: labels}, indent=1, sort_keys=True).encode())
        run.summary.json_files.append(str(path))
    _write_label_dict(out, run.summary.label_dict)
    return run.summary
