"""The shortcut probe: can *nuisance* features alone tell the real faces of a shard set from the fake ones?

Detectors learn whatever separates the classes, and in face-forgery sets that is often not the forgery: the fakes
were re-encoded once more than the reals, come from other cameras or resolutions, have other face sizes (Grönquist
et al., "Fake or JPEG? Revealing Common Biases in Generated Image Detection Datasets", 2021; the FF++ compression
levels). The probe fits, per split, a logistic regression (scikit-learn: median imputation, standardisation,
``LogisticRegression``) on nuisance features only and reports its cross-validated AUC (folds grouped by video:
``StratifiedGroupKFold``), per dataset and overall, and each feature's own AUC (its direction shows which class has
more of it). An AUC well above 0.5 means a model can reach that AUC without looking at the forgery.

The features of a face (:data:`FEATURES`):

- ``jpeg_quality``: the crop's libjpeg quality estimated from its luminance quantisation table (JPEG crops only);
- ``blockiness``: mean absolute difference across 8-pixel block boundaries over that inside blocks (1 = none; the
  source's compression blocks survive alignment only roughly, so this is an estimate);
- ``source_height``, ``source_kbps``: the source video's height (after rotation) and bitrate (file size over
  duration), from ``videos.parquet`` of extract, recorded in each sample's ``source``;
- ``face_size_px``: the face box's geometric mean side in source pixels;
- ``sharpness``: variance of the crop's grey Laplacian; ``brightness``: the crop's mean grey level.

``facepipe inspect --bias --shards SHARDS`` runs it on a shard set (a table and per-class histograms as a PNG); ``shard``
runs it on ``shard.bias_probe`` samples per split after writing and warns at :data:`WARN_AUC` and above (folds
grouped by video only).
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import polars as pl

log = logging.getLogger(__name__)

FEATURES = ("jpeg_quality", "blockiness", "source_height", "source_kbps", "face_size_px", "sharpness", "brightness")
CROP_FEATURES = ("jpeg_quality", "blockiness", "sharpness", "brightness")
"""The features of the crop itself: what ``shard.reencode`` can level (the others describe the source video)."""
WARN_AUC = 0.7
"""Probe AUCs from here up are a warning: the classes differ in nuisance features a model can learn."""

# libjpeg's standard luminance quantisation table (ITU-T T.81 Annex K, Table K.1), natural order
_STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
                      14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
                      92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)


def _libjpeg_table(q: int) -> np.ndarray:
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return np.clip(np.floor((_STD_LUMA * scale + 50) / 100), 1, 255)


_TABLE_MEANS = np.array([_libjpeg_table(q).mean() for q in range(1, 101)])


def jpeg_quality(data: bytes) -> float:
    """libjpeg quality (1-100) whose scaled standard luminance table is closest in mean to the JPEG's first
    quantisation table (order-free, so zig-zag or natural order alike); NaN for anything but a JPEG."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            tables = getattr(im, "quantization", None) or {}
    except Exception:  # noqa: BLE001  not an image Pillow reads: no estimate
        return math.nan
    if 0 not in tables:
        return math.nan
    mean = float(np.mean(tables[0]))
    return float(np.argmin(np.abs(_TABLE_MEANS - mean)) + 1)


def blockiness(grey: np.ndarray) -> float:
    """Mean absolute difference across 8-pixel block boundaries over that inside blocks, both directions averaged;
    ``grey``: (H, W) float. ~1 without block artefacts, above 1 with them."""
    out = []
    for d in (np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0)).T):
        cols = np.arange(d.shape[1])
        edge = (cols % 8) == 7
        inner = float(d[:, ~edge].mean()) if (~edge).any() else 0.0
        if edge.any() and inner > 0:
            out.append(float(d[:, edge].mean()) / inner)
    return float(np.mean(out)) if out else math.nan


def face_features(image: bytes, ext: str, meta: dict) -> dict[str, float]:
    """The :data:`FEATURES` of one face: ``image`` the encoded crop (``ext`` ``png`` / ``jpg``), ``meta`` its sample
    metadata (``box`` in source pixels, ``source``).

    Raises:
        ValueError: the crop does not decode.
    """
    import cv2

    from facepipe.data.schema import decode_image

    rgb = decode_image(image, ext)
    if rgb is None:
        raise ValueError(f"sample {meta.get('key')}: crop does not decode")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float64)
    box = meta.get("box") or [math.nan] * 4
    src = meta.get("source") or {}

    def num(v) -> float:
        return math.nan if v is None else float(v)

    return {"jpeg_quality": jpeg_quality(image) if ext == "jpg" else math.nan, "blockiness": blockiness(grey),
            "source_height": num(src.get("height")), "source_kbps": num(src.get("kbps")),
            "face_size_px": math.sqrt(max(0.0, (box[2] - box[0]) * (box[3] - box[1]))),
            "sharpness": float(cv2.Laplacian(grey, cv2.CV_64F).var()), "brightness": float(grey.mean())}


def _cv_auc(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> tuple[float | None, str]:
    """Cross-validated AUC of the logistic-regression probe and how the folds were made: ``video`` (grouped by video:
    no video in two folds), ``face`` (fewer than two videos of a class: folds of faces, optimistic, since faces of
    one video fall in training and test folds), or ``none`` (fewer than two faces of a class: no AUC)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    videos = min(len(set(groups[y == c])) for c in (0, 1))
    faces = min(int((y == c).sum()) for c in (0, 1))
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=1000))
    if videos >= 2:
        cv, kind = StratifiedGroupKFold(n_splits=min(folds, videos), shuffle=True, random_state=seed), "video"
    elif faces >= 2:
        cv, kind = StratifiedKFold(n_splits=min(folds, faces), shuffle=True, random_state=seed), "face"
    else:
        return None, "none"
    by = groups if kind == "video" else None
    p = cross_val_predict(model, x, y, groups=by, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p)), kind


def _usable(table: pl.DataFrame) -> list[str]:
    """Features with a finite value somewhere and more than one value."""
    out = []
    for f in FEATURES:
        col = table[f].fill_nan(None).drop_nulls()
        if col.len() and col.n_unique() > 1:
            out.append(f)
    return out


def probe_table(table: pl.DataFrame, folds: int = 5, seed: int = 0) -> dict:
    """The probe on a table of faces: columns :data:`FEATURES`, ``label`` (0 / 1; others left out), ``dataset``,
    ``video_id`` (the CV groups) and ``split``.

    Returns:
        ``{split: {"overall": {"auc", "crop_auc" (the crop's own features only: :data:`CROP_FEATURES`), "folds",
        "n", "n_videos", "n_per_class", "features"}, "per_dataset":
        {dataset: {...}}, "per_feature": {feature: auc}}}``; ``folds`` as :func:`_cv_auc` says (``video``, or
        ``face`` with fewer than two videos of a class: optimistic); ``auc`` ``None`` with fewer than two faces of a
        class.
    """
    from sklearn.metrics import roc_auc_score

    table = table.filter(pl.col("label").is_in([0, 1]))
    out: dict = {}
    for split in sorted(table["split"].unique().to_list()):
        t = table.filter(pl.col("split") == split)

        def fit(sub: pl.DataFrame) -> dict:
            feats = _usable(sub)
            y = sub["label"].to_numpy()
            groups = (sub["dataset"] + ":" + sub["video_id"]).to_numpy()
            auc, kind, crop_auc = None, "none", None
            crop = [f for f in feats if f in CROP_FEATURES]
            if feats and len(set(y)) == 2:
                auc, kind = _cv_auc(sub.select(feats).fill_nan(None).to_numpy().astype(np.float64), y, groups, folds,
                                    seed)
            if crop and len(set(y)) == 2:
                crop_auc = _cv_auc(sub.select(crop).fill_nan(None).to_numpy().astype(np.float64), y, groups, folds,
                                   seed)[0]
            return {"auc": auc, "crop_auc": crop_auc, "folds": kind, "n": sub.height,
                    "n_videos": int(len(set(groups))), "features": feats,
                    "n_per_class": {str(c): int((y == c).sum()) for c in (0, 1)}}

        per_feature = {}
        y = t["label"].to_numpy()
        for f in _usable(t):
            v = t[f].fill_nan(None).to_numpy().astype(np.float64)
            ok = np.isfinite(v)
            if len(set(y[ok])) == 2:
                per_feature[f] = float(roc_auc_score(y[ok], v[ok]))
        out[split] = {"overall": fit(t), "per_feature": per_feature,
                      "per_dataset": {d: fit(t.filter(pl.col("dataset") == d))
                                      for d in sorted(t["dataset"].unique().to_list())}}
    return out


def warnings_of(report: dict, where: str) -> list[str]:
    """One line per split / dataset whose probe AUC, on folds grouped by video, is :data:`WARN_AUC` or more (with
    fewer than two videos of a class the face folds identify the video by any per-video feature: no warning)."""
    lines = []
    for split, r in report.items():
        several = len(r["per_dataset"]) > 1
        cases = [("all datasets", r["overall"])] + (list(r["per_dataset"].items()) if several else [])
        for name, m in cases:
            if m["auc"] is not None and m["auc"] >= WARN_AUC and m["folds"] == "video":
                top = sorted(r["per_feature"].items(), key=lambda kv: -abs(kv[1] - 0.5))[:2]
                lines.append(f"{where}: {split} ({name}): nuisance features alone separate real from fake with AUC "
                             f"{m['auc']:.2f} (n = {m['n']} faces, {m['n_videos']} videos; strongest: "
                             + ", ".join(f"{f} {a:.2f}" for f, a in top)
                             + "): a detector can learn them instead of the forgery; see shard.reencode and "
                             "'facepipe inspect --bias'")
    return lines


def _samples(urls: Iterable[str], p: float, rng: np.random.Generator):
    """(image bytes, ext, meta) of the samples of ``urls``, each kept with probability ``p`` (undecoded otherwise)."""
    import webdataset as wds

    for s in wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples()):
        if p < 1 and rng.random() >= p:
            continue
        ext = "jpg" if "jpg" in s else "png"
        if ext not in s:
            continue  # a clip sample: its first frame
        yield s[ext], ext, json.loads(s["json"])


def read_features(source: str | Path, splits: Iterable[str] = ("train", "val", "test"),
                  max_samples: int | None = 2000, seed: int = 0) -> pl.DataFrame:
    """Nuisance features of (up to ``max_samples`` per split, drawn with ``seed``) faces of a frame shard set.

    Raises:
        ShardIndexError / InputError: see :func:`facepipe.data.index.resolve_shards`.
        ConfigError: a clip set (the probe reads frame samples).
    """
    from facepipe.data.index import read_index, resolve_shards
    from facepipe.errors import ConfigError

    index = read_index(source)
    if index.get("sample_kind") == "clip":
        raise ConfigError(f"{source}: a clip set; the shortcut probe reads frame sets")
    rng = np.random.default_rng(seed)
    rows = []
    for split in splits:
        info = index["splits"].get(split) or {}
        if not info.get("samples"):
            continue
        ss = resolve_shards(source, split)
        p = 1.0 if not max_samples else min(1.0, max_samples / ss.samples)
        for image, ext, meta in _samples(ss.urls, p, rng):
            rows.append({**face_features(image, ext, meta), "label": int(meta["label"]), "dataset": meta["dataset"],
                         "video_id": meta["video_id"], "split": split})
    return features_frame(rows)


def features_frame(rows: list[dict]) -> pl.DataFrame:
    """Rows of :func:`face_features` plus ``label``, ``dataset``, ``video_id``, ``split`` as the probe's table."""
    schema = {**{f: pl.Float64 for f in FEATURES}, "label": pl.Int8, "dataset": pl.String, "video_id": pl.String,
              "split": pl.String}
    return pl.DataFrame(rows, schema=schema)


def histograms(table: pl.DataFrame, out_png: str | Path) -> Path:
    """Per-class histograms of every usable feature, one row of panels per split, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted(table["split"].unique().to_list())
    feats = _usable(table)
    fig, axes = plt.subplots(len(splits), max(1, len(feats)), figsize=(2.6 * max(1, len(feats)), 2.2 * len(splits)),
                             squeeze=False)
    for i, split in enumerate(splits):
        t = table.filter(pl.col("split") == split)
        for j, f in enumerate(feats):
            ax = axes[i][j]
            vals = t[f].fill_nan(None).to_numpy().astype(np.float64)
            finite = vals[np.isfinite(vals)]
            bins = np.histogram_bin_edges(finite, bins=20) if finite.size else 10
            for lab, name, colour in ((0, "real", "tab:blue"), (1, "fake", "tab:red")):
                v = vals[(t["label"].to_numpy() == lab) & np.isfinite(vals)]
                if v.size:
                    ax.hist(v, bins=bins, alpha=0.5, density=True, color=colour, label=f"{name} ({v.size})")
            ax.set_title(f"{split}: {f}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.legend(fontsize=6)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    from facepipe._io import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out


def format_report(report: dict) -> str:
    """The probe as a Markdown table: split, dataset, AUC, faces, videos, and each feature's own AUC."""
    head = ("| split | datasets | probe AUC | crop features only | faces (real / fake) | videos | "
            + " | ".join(FEATURES) + " |")
    lines = [head, "|" + "---|" * (6 + len(FEATURES))]
    for split, r in report.items():
        for name, m in [("all", r["overall"])] + list(r["per_dataset"].items()):
            auc = ("n/a" if m["auc"] is None
                   else f"{m['auc']:.2f}" + (" (face folds)" if m["folds"] == "face" else ""))
            feats = " | ".join(f"{r['per_feature'][f]:.2f}" if name == "all" and f in r["per_feature"] else ""
                               for f in FEATURES)
            crop = "n/a" if m["crop_auc"] is None else f"{m['crop_auc']:.2f}"
            lines.append(f"| {split} | {name} | {auc} | {crop} | {m['n_per_class']['0']} / {m['n_per_class']['1']} | "
                         f"{m['n_videos']} | {feats} |")
    return "\n".join(lines)


__all__ = ["CROP_FEATURES", "FEATURES", "WARN_AUC", "blockiness", "face_features", "features_frame", "format_report",
           "histograms", "jpeg_quality", "probe_table", "read_features", "warnings_of"]
