"""Celeb-DF v1 and v2 (Li et al., "Celeb-DF: A Large-scale Challenging Dataset for DeepFake Forensics", CVPR 2020)."""

from __future__ import annotations

import re
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, components, group_split, layout_error, register_adapter
from facepipe.errors import InputError

LAYOUT = """
ROOT/Celeb-real/id0_0000.mp4 ...            real, celebrity id0
ROOT/Celeb-synthesis/id0_id1_0000.mp4 ...   fake: id0's video 0000 (the target, its original) with id1's face
ROOT/YouTube-real/00000.mp4 ...             real
ROOT/List_of_testing_videos.txt             official test list (518 videos in v2), lines '<label> <folder>/<file>'
                                            with label 1 = real, 0 = fake (Celeb-DF's convention)
Following github.com/yuezunli/celeb-deepfakeforensics (README: 590 Celeb-real, 300 YouTube-real, 5639
Celeb-synthesis, List_of_testing_videos.txt). No official train list: train is everything not in the test
list, as the protocol is used (DeepfakeBench). The published test list holds most test fakes without their
original (234 of 340 in v2): those originals stay in train, and such fakes carry a protocol_note (accepted
by the leakage check, reported with their count). The test list also shares celebrities with train: with
manifest.identity_leakage: auto this overlap is reported with counts, not an error. split_mode: group
re-splits leak-free instead. options.val_fraction carves a validation split out of train in whole groups
(a fake with its original and every video of its two celebrities)."""


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
                row = Row(rel, 1, "Celeb-DF", sources=[f"Celeb-real/{a}_{k}.mp4"],
                          identities=[f"celebdf:{a}", f"celebdf:{b}"])
            elif folder.name == "Celeb-real":
                m = re.fullmatch(r"(id\d+)_(\d+)", p.stem)
                row = Row(rel, 0, "original", identities=[f"celebdf:{m.group(1)}"] if m else [])
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
    if cfg.split_mode == "official":
        split_of = {r.path: r.split for r in rows}
        for r in rows:
            if r.label == 1 and r.split == "test" and split_of.get(r.sources[0], "test") != "test":
                r.protocol_note = "Celeb-DF official test list: the original is not listed, so it is in train"
            elif r.label == 1 and r.split == "train" and split_of.get(r.sources[0]) == "test":
                r.exclude = "Celeb-DF official: unlisted (train) fake of a test-listed original"
        val = float(cfg.options.get("val_fraction", 0))
        if val:
            _carve_val([r for r in rows if r.exclude is None], val, cfg.seed)
    return rows


def _carve_val(rows: list[Row], fraction: float, seed: int) -> None:
    """Move ``fraction`` of the train rows to val in whole groups of a fake with its original, stratified by
    label (scikit-learn's ``StratifiedGroupKFold`` through :func:`group_split`), so val holds both classes.

    Celebrities are not kept apart: the published protocol shares them between train and test already, and
    grouping by celebrity joins almost all of Celeb-real into one group (then only YouTube-real videos could
    move and val had no fake).
    """
    train = [r for r in rows if r.split == "train"]
    by_original = [Row(r.path, r.label, r.method, sources=r.sources) for r in train]
    splits = group_split(components(by_original), {}, [r.label for r in train], (1 - fraction, fraction, 0.0), seed,
                         names=[r.path for r in train])
    for r, s in zip(train, splits):
        r.split = s


@register_adapter("celebdf_v1", LAYOUT, shared_identities=True)
def scan_v1(root: Path, cfg: ManifestConfig) -> list[Row]:
    return _scan(root, cfg, "celebdf_v1")


@register_adapter("celebdf_v2", LAYOUT, shared_identities=True)
def scan_v2(root: Path, cfg: ManifestConfig) -> list[Row]:
    return _scan(root, cfg, "celebdf_v2")
