"""FaceForensics++ (Rössler et al., ICCV 2019) and DFD (Google/Jigsaw DeepFakeDetection, shipped in the FF++ tree)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError

FFPP_METHODS = ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")
"""The four methods of the FF++ benchmark protocol (Rössler et al., ICCV 2019), the set the field reports
(F3Net, SBI, DeepfakeBench's FF++ tables); FaceShifter (added later) and DeepFakeDetection are opt-in
through ``manifest.methods``."""
FFPP_OPTIONAL_METHODS = ("FaceShifter",)
VIDEO_EXTS = (".mp4", ".avi", ".mov")

FFPP_LAYOUT = """
ROOT/original_sequences/youtube/{raw,c23,c40}/videos/000.mp4 ...            real (1000 YouTube videos)
ROOT/manipulated_sequences/{Deepfakes,Face2Face,FaceSwap,NeuralTextures}/{raw,c23,c40}/videos/
    000_003.mp4 ...                                                          fake, named target_source: target 000's
                                                                             frames with source 003's face
ROOT/manipulated_sequences/<method>/masks/videos/000_003.mp4                 (optional) manipulation masks
ROOT/splits/{train,val,test}.json  (or ROOT/dataset/splits/, or options.splits_dir): official split, lists of
    [target, source] pairs, 720/140/140 videos per method (github.com/ondyari/FaceForensics dataset/splits)
Following github.com/ondyari/FaceForensics (dataset/README.md, dataset/splits). Options: manifest.compression
(c23), manifest.methods (default the four benchmark methods above; FaceShifter is opt-in)."""

DFD_LAYOUT = """
ROOT/original_sequences/actors/{raw,c23,c40}/videos/01__kitchen_pan.mp4 ...  real, actor 01
ROOT/manipulated_sequences/DeepFakeDetection/{raw,c23,c40}/videos/01_02__kitchen_pan__ABCD1234.mp4
                                                                             fake: actor 01's scene, actor 02's face
No official split; the 28 actors are swapped with each other, so a leak-free split usually puts
everything in one group: by default every video is 'test' (DFD's usual role: cross-dataset testing);
manifest.split_mode: group tries a grouped split and fails if one group is too large."""


def _videos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_EXTS) if folder.is_dir() else []


def _find_splits(root: Path, cfg: ManifestConfig) -> Path:
    cands = [Path(cfg.options["splits_dir"])] if "splits_dir" in cfg.options else [root / "splits",
                                                                                      root / "dataset" / "splits"]
    for c in cands:
        if all((c / f"{s}.json").is_file() for s in ("train", "val", "test")):
            return c
    raise InputError(f"{root}: FF++ official split files missing: expected train.json, val.json, test.json in "
                     f"{' or '.join(str(c) for c in cands)} (or set manifest.split_mode: group)")


@register_adapter("ffpp", FFPP_LAYOUT)
def scan_ffpp(root: Path, cfg: ManifestConfig) -> list[Row]:
    comp = cfg.compression
    originals = _videos(root / "original_sequences" / "youtube" / comp / "videos")
    if not originals:
        raise layout_error("ffpp", root, f"no videos in original_sequences/youtube/{comp}/videos")
    split_of: dict[str, str] = {}
    if cfg.split_mode == "official":
        sdir = _find_splits(root, cfg)
        for s in ("train", "val", "test"):
            try:
                pairs = json.loads((sdir / f"{s}.json").read_text())
            except ValueError as e:
                raise InputError(f"{sdir / f'{s}.json'}: not valid JSON: {e}") from None
            for a, b in pairs:
                for key in (a, b, f"{a}_{b}", f"{b}_{a}"):
                    split_of[key] = s
    rows = []
    for p in originals:
        rel = p.relative_to(root).as_posix()
        rows.append(Row(rel, 0, "original", split_of.get(p.stem), identities=[f"yt{p.stem}"], compression=comp))
    orig_rel = {p.stem: p.relative_to(root).as_posix() for p in originals}
    for method in cfg.methods or FFPP_METHODS:
        for p in _videos(root / "manipulated_sequences" / method / comp / "videos"):
            m = re.fullmatch(r"(\d+)_(\d+)", p.stem)
            if not m:
                raise InputError(f"{p}: FF++ fake not named target_source (e.g. 000_003.mp4)")
            t, s = m.groups()
            mask = root / "manipulated_sequences" / method / "masks" / "videos" / p.name
            rows.append(Row(p.relative_to(root).as_posix(), 1, method, split_of.get(p.stem),
                            sources=[orig_rel.get(t, f"original_sequences/youtube/{comp}/videos/{t}.mp4"),
                                     orig_rel.get(s, f"original_sequences/youtube/{comp}/videos/{s}.mp4")],
                            identities=[f"yt{t}", f"yt{s}"], compression=comp,
                            mask_path=mask.relative_to(root).as_posix() if mask.is_file() else None))
    if cfg.split_mode == "official":
        unlisted = [r.path for r in rows if r.split is None]
        if unlisted:
            raise InputError(f"{root / unlisted[0]}: not in the official FF++ split files "
                             f"({len(unlisted)} such videos)")
    return rows


@register_adapter("dfd", DFD_LAYOUT)
def scan_dfd(root: Path, cfg: ManifestConfig) -> list[Row]:
    comp = cfg.compression
    reals = _videos(root / "original_sequences" / "actors" / comp / "videos")
    fakes = _videos(root / "manipulated_sequences" / "DeepFakeDetection" / comp / "videos")
    if not reals and not fakes:
        raise layout_error("dfd", root, f"no videos under original_sequences/actors/{comp}/videos or "
                           f"manipulated_sequences/DeepFakeDetection/{comp}/videos")
    split = "test" if cfg.split_mode == "official" else None
    rows = []
    real_rel = {}
    for p in reals:
        m = re.fullmatch(r"(\d+)__(.+)", p.stem)
        if not m:
            raise InputError(f"{p}: DFD actor video not named AA__scene.mp4")
        real_rel[p.stem] = p.relative_to(root).as_posix()
        rows.append(Row(real_rel[p.stem], 0, "original", split, identities=[f"actor{m.group(1)}"],
                        compression=comp))
    for p in fakes:
        m = re.fullmatch(r"(\d+)_(\d+)__(.+?)__\w+", p.stem)
        if not m:
            raise InputError(f"{p}: DFD fake not named AA_BB__scene__ID.mp4")
        a, b, scene = m.groups()
        src = real_rel.get(f"{a}__{scene}", f"original_sequences/actors/{comp}/videos/{a}__{scene}.mp4")
        rows.append(Row(p.relative_to(root).as_posix(), 1, "DeepFakeDetection", split, sources=[src],
                        identities=[f"actor{a}", f"actor{b}"], compression=comp))
    return rows
