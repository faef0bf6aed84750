"""Celeb-DF v1 and v2 (Li et al., "Celeb-DF: A Large-scale Challenging Dataset for DeepFake Forensics", CVPR 2020)."""

from __future__ import annotations

import re
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError

LAYOUT = """
ROOT/Celeb-real/id0_0000.mp4 ...            real, celebrity id0
ROOT/Celeb-synthesis/id0_id1_0000.mp4 ...   fake: id0's video 0000 with id1's face
ROOT/YouTube-real/00000.mp4 ...             real
ROOT/List_of_testing_videos.txt             official test list, lines '<label> <folder>/<file>' with
                                            label 1 = real, 0 = fake (Celeb-DF's convention)
No official train list: train is everything not in the test list (val carved out leak-free with
manifest.options.val_fraction). The official test list shares identities with the rest: use
manifest.identity_leakage: warn to keep the official protocol, or split_mode: group to re-split."""


def _scan(root: Path, cfg: ManifestConfig, name: str) -> list[Row]:
    test_list = root / "List_of_testing_videos.txt"
    folders = [root / f for f in ("Celeb-real", "Celeb-synthesis", "YouTube-real")]
    if not any(f.is_dir() for f in folders):
        raise layout_error(name, root, "none of Celeb-real/, Celeb-synthesis/, YouTube-real/")
    test: dict[str, int] = {}
    if cfg.split_mode == "official":
        if not test_list.is_file():
            raise InputError(f"{test_list}: Celeb-DF official test list missing (or set manifest.split_mode: group)")
        for n, line in enumerate(test_list.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                raise InputError(f"{test_list}:{n}: expected '<0|1> <folder>/<file>', got {line!r}")
            test[parts[1]] = 1 - int(parts[0])  # Celeb-DF: 1 = real -> facepipe label 0
    rows = []
    for folder in folders:
        for p in sorted(folder.glob("*.mp4")) if folder.is_dir() else []:
            rel = p.relative_to(root).as_posix()
            if folder.name == "Celeb-synthesis":
                m = re.fullmatch(r"(id\d+)_(id\d+)_(\d+)", p.stem)
                if not m:
                    raise InputError(f"{p}: Celeb-synthesis video not named idA_idB_NNNN.mp4")
                a, b, k = m.groups()
                row = Row(rel, 1, "Celeb-DF", sources=[f"Celeb-real/{a}_{k}.mp4"], identities=[a, b])
            elif folder.name == "Celeb-real":
                m = re.fullmatch(r"(id\d+)_(\d+)", p.stem)
                row = Row(rel, 0, "original", identities=[m.group(1)] if m else [])
            else:
                row = Row(rel, 0, "original")
            if rel in test:
                if test[rel] != row.label:
                    raise InputError(f"{test_list}: label of {rel} ({'fake' if test[rel] else 'real'}) conflicts "
                                     f"with its folder {folder.name}")
                row.split = "test"
            elif cfg.split_mode == "official":
                row.split = "train"
            rows.append(row)
    missing = set(test) - {r.path for r in rows}
    if missing:
        raise InputError(f"{test_list}: lists {len(missing)} file(s) not found, e.g. {sorted(missing)[0]}")
    val = float(cfg.options.get("val_fraction", 0))
    if val and cfg.split_mode == "official":
        # carve val out of train by identity group, deterministically
        from facepipe.datasets.base import stable_fraction

        for r in rows:
            if r.split == "train":
                key = (r.identities or [r.path])[0]
                if stable_fraction(key) < val:
                    r.split = "val"
    return rows


@register_adapter("celebdf_v1", LAYOUT)
def scan_v1(root: Path, cfg: ManifestConfig) -> list[Row]:
    return _scan(root, cfg, "celebdf_v1")


@register_adapter("celebdf_v2", LAYOUT)
def scan_v2(root: Path, cfg: ManifestConfig) -> list[Row]:
    return _scan(root, cfg, "celebdf_v2")
