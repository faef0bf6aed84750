"""Generic layouts: a ``real/`` + ``fake/`` folder tree, and a CSV file."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError
from facepipe.ids import IMAGE_EXTS, SPLITS, VIDEO_EXTS, IdError, unique_video_ids

FOLDER_LAYOUT = """
ROOT/real/**/<video>                real (videos, or still images: .jpg .png .webp .bmp, one frame each)
ROOT/fake/[<method>/]**/<video>     fake; the first sub-folder names the method (else 'fake')
or the same under ROOT/{train,val,test}/ for an official split. Videos of other splits are grouped by
file (no sources or identities are known): put originals and their fakes under one split yourself."""

CSV_LAYOUT = """
ROOT/<options.file, default manifest.csv>   (or a path relative to the working folder)
    columns path,label[,split,method,source_ids,identity_ids,group]
    path relative to ROOT; label 0/1 or real/fake; split train/val/test (empty = grouped split);
    source_ids: ';'-separated originals a fake was made from, FIRST THE TARGET (the video whose frames the
    fake modifies: per-face labels compare with it), as paths relative to ROOT or video ids of other rows,
    or dataset:video_id for a video of another dataset;
    identity_ids / group: ';'-separated ids of people or any grouping that must stay in one split."""


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS)


@register_adapter("folder", FOLDER_LAYOUT)
def scan_folder(root: Path, cfg: ManifestConfig) -> list[Row]:
    tops = [(root / s, s) for s in ("train", "val", "test") if (root / s).is_dir()] or [(root, None)]
    rows = []
    for base, split in tops:
        if not (base / "real").is_dir() and not (base / "fake").is_dir():
            raise layout_error("folder", root, f"{base} has neither real/ nor fake/")
        for p in _videos(base / "real"):
            rows.append(Row(p.relative_to(root).as_posix(), 0, "original", split))
        for p in _videos(base / "fake"):
            sub = p.relative_to(base / "fake").parts
            rows.append(Row(p.relative_to(root).as_posix(), 1, sub[0] if len(sub) > 1 else "fake", split))
    return rows


def _ids(v) -> list[str]:
    return [x.strip() for x in str(v or "").split(";") if x.strip()]


@register_adapter("csv", CSV_LAYOUT)
def scan_csv(root: Path, cfg: ManifestConfig) -> list[Row]:
    """Rows of the CSV file (see :data:`CSV_LAYOUT`): paths as written, blank lines skipped.

    Raises:
        InputError: naming the file (and the line of a bad row): not found, unreadable, a missing column, a blank
            path, an unknown label or split, paths whose ids cannot be told apart.
    """
    opt = Path(cfg.options.get("file", "manifest.csv"))
    f = opt if opt.is_absolute() or not (root / opt).is_file() and opt.is_file() else root / opt
    if not f.is_file():
        raise layout_error("csv", root, f"{opt} not found (in ROOT, or relative to the working folder)")
    try:
        df = pl.read_csv(f, infer_schema=False)
    except Exception as e:  # noqa: BLE001  polars raises several types for unreadable CSV
        raise InputError(f"{f}: cannot read CSV: {e}") from None
    for col in ("path", "label"):
        if col not in df.columns:
            raise InputError(f"{f}: missing column '{col}' (columns: {df.columns})")
    rows = []
    try:
        path_of_id = {v: p for p, v in unique_video_ids(p for p in df["path"].to_list() if p is not None).items()}
    except IdError as e:
        raise InputError(f"{f}: {e}") from None
    for n, r in enumerate(df.iter_rows(named=True), 2):  # polars keeps a blank line as a row of nulls
        if all(v is None for v in r.values()):
            continue
        if r["path"] is None or not r["path"].strip():
            raise InputError(f"{f}:{n}: blank path (every row names a video file or folder)")
        lab = str(r["label"]).strip().lower()
        if lab not in ("0", "1", "real", "fake"):
            raise InputError(f"{f}:{n}: label {r['label']!r} for {r['path']} (use 0/1 or real/fake)")
        label = 1 if lab in ("1", "fake") else 0
        split = (r.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            raise InputError(f"{f}:{n}: split {r['split']!r} for {r['path']} (use {', '.join(SPLITS)}, or leave it "
                             "empty for a grouped split)")
        if cfg.split_mode == "group":
            split = None
        method = (r.get("method") or "").strip() or ("original" if label == 0 else "fake")
        sources = [path_of_id.get(x, x) for x in _ids(r.get("source_ids"))]
        rows.append(Row(r["path"], label, method, split, sources=sources,
                        identities=_ids(r.get("identity_ids")) + [f"group:{g}" for g in _ids(r.get("group"))]))
    return rows
