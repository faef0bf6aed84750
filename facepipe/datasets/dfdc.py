"""DFDC (Dolhansky et al., "The DeepFake Detection Challenge (DFDC) Dataset", 2020) and the DFDC preview."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError

LAYOUT = """
ROOT/dfdc_train_part_N/metadata.json        {"abc.mp4": {"label": "FAKE"|"REAL", "original": "xyz.mp4"|null, ...}}
ROOT/dfdc_train_part_N/abc.mp4 ...          the training videos (originals may sit in other parts)
ROOT/test/labels.csv (optional)             the public test set: filename,label (1 = fake) with the videos in
                                            ROOT/test/ or ROOT/test/videos/
ROOT/identities.csv (optional; options.identities)  filename,identity: people per training video where known
                                            (e.g. from face clustering, as the DFDC winners built their folds)
Following the DFDC dataset paper (Dolhansky et al., arXiv:2006.07397) and its metadata.json format. The test
split is exactly the public test set (test/labels.csv, 5000 videos); the training parts are split into train
and val only (never test), leak-free: every fake with its original and, where the metadata names people
(identity fields of metadata.json entries, or identities.csv), every video of one person in one split;
stratified by label, train:val shares from manifest.fractions. A video named in metadata.json but absent on
disk is an error naming it (manifest.missing_files: warn counts and skips them, e.g. for partial
downloads). split_mode: group re-splits everything, test included."""

IDENTITY_FIELDS = ("actor", "actor_id", "identity", "target_id", "source_id", "swapped_id")
"""Keys of a metadata.json entry read as people ids where a DFDC release or a user's annotation has them (the
public training metadata has only label, split and original)."""

PREVIEW_LAYOUT = """
ROOT/dataset.json                           {"<relative path>": {"label": "real"|"fake", "set": "train"|"test",
                                             "target_id": ..., ...}}
ROOT/original_videos/..., ROOT/method_A/..., ROOT/method_B/...   the videos, as dataset.json names them
Official train/test from 'set'; identities from the ids in the metadata (target_id, or the folder id)."""


@register_adapter("dfdc", LAYOUT)
def scan_dfdc(root: Path, cfg: ManifestConfig) -> list[Row]:
    parts = sorted(p for p in root.glob("dfdc_train_part_*") if p.is_dir())
    test_labels = root / "test" / "labels.csv"
    if not parts and not test_labels.is_file():
        raise layout_error("dfdc", root, "no dfdc_train_part_*/ folders and no test/labels.csv")
    entries: dict[str, tuple[Path, dict]] = {}
    for part in parts:
        meta = part / "metadata.json"
        if not meta.is_file():
            raise InputError(f"{meta}: missing (every dfdc_train_part_N folder has a metadata.json)")
        try:
            data = json.loads(meta.read_text())
        except ValueError as e:
            raise InputError(f"{meta}: not valid JSON: {e}") from None
        for name, info in data.items():
            if name in entries:
                prev = entries[name][1].get("label")
                if prev != info.get("label"):
                    raise InputError(f"{meta}: {name} labelled {info.get('label')} here and {prev} in "
                                     f"{entries[name][0] / 'metadata.json'}")
            entries[name] = (part, info)
    where = {name: part for name, (part, _) in entries.items()}
    people = _identities(root, cfg)
    train_parts = ("train", "val") if cfg.split_mode == "official" else None
    rows = []
    for name, (part, info) in sorted(entries.items()):
        label = str(info.get("label", "")).upper()
        if label not in ("REAL", "FAKE"):
            raise InputError(f"{part / 'metadata.json'}: {name} has label {info.get('label')!r} (REAL or FAKE)")
        rel = (part / name).relative_to(root).as_posix()
        ids = sorted({f"dfdc:{info[k]}" for k in IDENTITY_FIELDS if info.get(k)} | people.get(name, set()))
        if label == "FAKE":
            orig = info.get("original")
            src = (where[orig] / orig).relative_to(root).as_posix() if orig in where else f"{part.name}/{orig}"
            rows.append(Row(rel, 1, "DFDC", sources=[src] if orig else [], identities=ids, candidates=train_parts))
        else:
            rows.append(Row(rel, 0, "original", identities=ids, candidates=train_parts))
    if test_labels.is_file():
        vdir = root / "test" / "videos" if (root / "test" / "videos").is_dir() else root / "test"
        with open(test_labels, newline="") as f:
            for n, r in enumerate(csv.DictReader(f), 2):
                if "filename" not in r or r.get("label") not in ("0", "1", "0.0", "1.0"):
                    raise InputError(f"{test_labels}:{n}: expected columns filename,label with label 0 or 1")
                lab = int(float(r["label"]))
                rows.append(Row((vdir / r["filename"]).relative_to(root).as_posix(), lab,
                                "DFDC" if lab else "original", "test"))
    return rows


def _identities(root: Path, cfg: ManifestConfig) -> dict[str, set[str]]:
    """filename -> people ids from ``options.identities`` (default ``ROOT/identities.csv`` when present).

    Raises:
        InputError: a named file that is missing, or lacks the filename and identity columns.
    """
    path = Path(cfg.options["identities"]) if "identities" in cfg.options else root / "identities.csv"
    if not path.is_file():
        if "identities" in cfg.options:
            raise InputError(f"{path}: DFDC identities file not found (manifest.options.identities)")
        return {}
    out: dict[str, set[str]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not {"filename", "identity"} <= set(reader.fieldnames or ()):
            raise InputError(f"{path}: expected columns filename,identity (got {reader.fieldnames})")
        for r in reader:
            if r["identity"]:
                out.setdefault(Path(r["filename"]).name, set()).add(f"dfdc:{r['identity']}")
    return out


@register_adapter("dfdc_preview", PREVIEW_LAYOUT)
def scan_preview(root: Path, cfg: ManifestConfig) -> list[Row]:
    meta = root / "dataset.json"
    if not meta.is_file():
        raise layout_error("dfdc_preview", root, "dataset.json missing")
    try:
        data = json.loads(meta.read_text())
    except ValueError as e:
        raise InputError(f"{meta}: not valid JSON: {e}") from None
    rows = []
    for rel, info in sorted(data.items()):
        lab = str(info.get("label", "")).lower()
        if lab not in ("real", "fake"):
            raise InputError(f"{meta}: {rel} has label {info.get('label')!r} (real or fake)")
        split = {"train": "train", "test": "test"}.get(str(info.get("set", "")).lower())
        ids = [str(info[k]) for k in ("target_id", "swapped_id") if info.get(k)]
        if not ids:
            ids = [Path(rel).parts[1]] if len(Path(rel).parts) > 2 else []
        method = Path(rel).parts[0] if lab == "fake" else "original"
        rows.append(Row(rel, 1 if lab == "fake" else 0, method, split if cfg.split_mode == "official" else None,
                        identities=ids))
    return rows
