"""DeeperForensics-1.0, UADFV, WildDeepfake and DF40 layouts."""

from __future__ import annotations

import re
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError
from facepipe.video import IMAGE_EXTS

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")

DFO_LAYOUT = """
ROOT/manipulated_videos/<variant>/000_M101.mp4 ...   fake: FF++ target video 000 with actor M101's face
                                                     (variant end_to_end by default: manifest.options.variant)
ROOT/source_videos/M101/**/*.mp4 ...                 real: the actors' source recordings
ROOT/lists/splits/{train,val,test}.txt               official split of the manipulated videos (file names)
Jiang et al., "DeeperForensics-1.0", CVPR 2020. Source videos follow their actor's fakes' split (an
actor is in one split); the FF++ targets are not part of this dataset, so fakes list no original."""

UADFV_LAYOUT = """
ROOT/real/0000.mp4 ...          real
ROOT/fake/0000_fake.mp4 ...     fake made from real/0000.mp4
Yang et al., "Exposing Deep Fakes Using Inconsistent Head Poses", ICASSP 2019. No official split:
pairs are split leak-free (manifest.fractions)."""

WDF_LAYOUT = """
ROOT/{real,fake}_{train,test}/<video>/<sequence>/0.png ...   face image sequences (extract the released
                                                             .tar.gz archives first)
Zi et al., "WildDeepfake", ACM MM 2020. Each sequence folder is one input of 'extract' (frames in name
order at 25 fps); label and official split from the top folder."""

DF40_LAYOUT = """
ROOT/<method>/**/<video>.mp4  or  ROOT/<method>/**/<sequence>/*.png    all fake, method = first folder
A path component train/ or test/ gives the split; otherwise sequences are split by video (fractions).
Yan et al., "DF40: Toward Next-Generation Deepfake Detection", NeurIPS 2024 (real videos come from
FF++ / Celeb-DF: build those manifests with their adapters)."""


def _files(folder: Path, exts=VIDEO_EXTS) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts) if folder.is_dir() else []


@register_adapter("deeperforensics", DFO_LAYOUT)
def scan_dfo(root: Path, cfg: ManifestConfig) -> list[Row]:
    variant = cfg.options.get("variant", "end_to_end")
    fakes = _files(root / "manipulated_videos" / variant)
    if not fakes:
        raise layout_error("deeperforensics", root, f"no videos in manipulated_videos/{variant}")
    split_of: dict[str, str] = {}
    if cfg.split_mode == "official":
        for s in ("train", "val", "test"):
            f = root / "lists" / "splits" / f"{s}.txt"
            if not f.is_file():
                raise InputError(f"{f}: DeeperForensics split file missing (or set manifest.split_mode: group)")
            for line in f.read_text().split():
                split_of[Path(line).name] = s
    rows, actor_split = [], {}
    for p in fakes:
        m = re.fullmatch(r"(\d+)_([A-Z]\d+)", p.stem)
        if not m:
            raise InputError(f"{p}: DeeperForensics fake not named TTT_MNNN.mp4")
        actor = m.group(2)
        split = split_of.get(p.name)
        if cfg.split_mode == "official" and split is None:
            raise InputError(f"{p}: not in lists/splits/*.txt")
        if split:
            actor_split.setdefault(actor, split)
        rows.append(Row(p.relative_to(root).as_posix(), 1, f"DeeperForensics-{variant}", split, identities=[actor]))
    for p in _files(root / "source_videos"):
        actor = p.relative_to(root / "source_videos").parts[0]
        rows.append(Row(p.relative_to(root).as_posix(), 0, "original", actor_split.get(actor), identities=[actor]))
    return rows


@register_adapter("uadfv", UADFV_LAYOUT)
def scan_uadfv(root: Path, cfg: ManifestConfig) -> list[Row]:
    reals, fakes = _files(root / "real"), _files(root / "fake")
    if not reals or not fakes:
        raise layout_error("uadfv", root, "real/ and fake/ must both hold videos")
    rows = [Row(p.relative_to(root).as_posix(), 0, "original", identities=[f"uadfv{p.stem}"]) for p in reals]
    for p in fakes:
        stem = p.stem[:-5] if p.stem.endswith("_fake") else p.stem
        src = next((r.relative_to(root).as_posix() for r in reals if r.stem == stem), f"real/{stem}{p.suffix}")
        rows.append(Row(p.relative_to(root).as_posix(), 1, "UADFV", sources=[src], identities=[f"uadfv{stem}"]))
    return rows


def _sequences(folder: Path) -> list[Path]:
    """Folders directly holding images, below ``folder``."""
    dirs = {p.parent for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS}
    return sorted(dirs)


@register_adapter("wilddeepfake", WDF_LAYOUT)
def scan_wdf(root: Path, cfg: ManifestConfig) -> list[Row]:
    rows = []
    for top in ("real_train", "real_test", "fake_train", "fake_test"):
        kind, split = top.split("_")
        for seq in _sequences(root / top):
            rel = seq.relative_to(root)
            video = rel.parts[1] if len(rel.parts) > 1 else rel.parts[0]
            rows.append(Row(rel.as_posix(), 1 if kind == "fake" else 0, "WildDeepfake" if kind == "fake" else "original",
                            split if cfg.split_mode == "official" else None, identities=[f"wdf-{top}-{video}"]))
    if not rows:
        archives = sorted(root.glob("*.tar.gz"))
        hint = f" (found {len(archives)} .tar.gz archives: extract them first)" if archives else ""
        raise layout_error("wilddeepfake", root, "no image sequences under {real,fake}_{train,test}/" + hint)
    return rows


@register_adapter("df40", DF40_LAYOUT)
def scan_df40(root: Path, cfg: ManifestConfig) -> list[Row]:
    rows = []
    methods = cfg.methods or tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    for method in methods:
        mdir = root / method
        inputs = _files(mdir) + [s for s in _sequences(mdir)]
        for p in sorted(set(inputs)):
            rel = p.relative_to(root)
            split = next((c for c in rel.parts if c in ("train", "val", "test")), None)
            rows.append(Row(rel.as_posix(), 1, method, split if cfg.split_mode == "official" else None,
                            identities=[f"df40-{rel.parts[-1] if p.is_file() else rel.parts[-2]}"]))
    if not rows:
        raise layout_error("df40", root, "no method folder holds videos or image sequences")
    return rows
