"""DeeperForensics-1.0, UADFV, WildDeepfake and DF40 layouts."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from facepipe.datasets.base import ManifestConfig, Row, layout_error, register_adapter
from facepipe.errors import InputError
from facepipe.ids import IMAGE_EXTS, VIDEO_EXTS

log = logging.getLogger(__name__)

DFO_LAYOUT = """
ROOT/manipulated_videos/<variant>/000_M101.mp4 ...   fake: FF++ target video 000 (frames) with actor M101's face
                                                     (variant end_to_end by default: options.variant; the others:
                                                     reenact_postprocess, end_to_end_level_{1..5},
                                                     end_to_end_random_level, end_to_end_mix_{2,3,4}_distortions)
ROOT/lists/splits/{train,val,test}.txt               official split: manipulated file names (000_M101.mp4),
                                                     703/96/201; one list for every variant
options.ffpp_root=/data/FaceForensics++              the real class: the FF++ C23 target videos
                                                     (original_sequences/youtube/c23/videos/000.mp4 ...)
Following github.com/EndlessSora/DeeperForensics-1.0 (dataset/README.md): "The 'real' part for face
forensics models are the target videos, i.e. 1,000 refined YouTube videos collected by FaceForensics++ ...
download the target videos from FaceForensics++ with C23 compression rate"; the actors' source videos
"are not the 'real' part" (they improve manipulation quality). So the reals are the FF++ c23 targets (each
in its fake's split, ids ffpp-c23-NNN, identity ytNNN as in the ffpp adapter so a shard set holding both
datasets is checked across them), every fake is linked to its target, and ROOT/source_videos/ is not
used (options.source_videos: include adds them as reals of method 'actor_source', a different capture
domain: for studies of that domain only).
DeeperForensics splits by actor, so about 72 % of its test targets are FF++ *train* videos: a model trained on
FF++ has seen those frames. When FF++'s official split files are found under ffpp_root (splits/ or
dataset/splits/, or options.ffpp_splits_dir), test videos (reals and the fakes made on them) whose target is
an FF++ train or val video are left out, counted and reported as "excluded" (options.ffpp_overlap: drop, the
default); keep leaves them in (then 'evaluate' refuses them against an FF++ checkpoint)."""

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
ROOT/<method>/{ff,cdf}/**/<video>.mp4 | <video>/<frames>.png    fake; method = first folder; ff / cdf = the FF++ or
                                                                Celeb-DF domain the fake was made in
ROOT/<method>/{fake,real}/**/...                                the 'unknown' methods that ship their own real data
                                                                (deepfacelab, heygen, whichisreal, MidJourney, stargan,
                                                                starganv2, styleclip, e4e, CollabDiff): real/ is real
ROOT/dataset_json/<method>_ff.json, <method>_cdf.json, <method>.json   the official split lists (options.json_dir):
    {"<name>": {"<X>_Real"|"<X>_Fake": {"train"|"val"|"test": {"<video>": {"label": ..., "frames": [...]}}}}}
Following github.com/YZY-stack/DF40 (README: folder structure, "For the 'unknown' 9 methods: the real data is
already included within the folder", dataset_json). Splits come from the JSON lists (a video found in none
is an error in official mode); the 31 known methods' real data is FF++ c23 / Celeb-DF: build those manifests
with their adapters. Fakes of the ff domain named TTT_SSS (or TTT) are linked to FF++ originals as
<options.ffpp_dataset, default ffpp>:original_sequences-youtube-c23-videos-TTT and carry identities ytTTT,
ytSSS; cdf fakes idA_idB_NNNN to <options.celebdf_dataset, default celebdf>:Celeb-real-idA_NNNN with
identities celebdf:idA, celebdf:idB, so the shard stage checks them against those datasets' splits
(DF40's own combined lists are known to put FF++ test identities in train)."""

DF40_UNKNOWN = ("deepfacelab", "heygen", "whichisreal", "MidJourney", "stargan", "starganv2", "styleclip", "e4e",
                "CollabDiff")
"""DF40's 'unknown' methods, which ship their own real data in ``real/`` (DF40 README)."""


def _files(folder: Path, exts=VIDEO_EXTS) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts) if folder.is_dir() else []


@register_adapter("deeperforensics", DFO_LAYOUT)
def scan_dfo(root: Path, cfg: ManifestConfig) -> list[Row]:
    variant = cfg.options.get("variant", "end_to_end")
    fakes = _files(root / "manipulated_videos" / variant)
    if not fakes:
        raise layout_error("deeperforensics", root, f"no videos in manipulated_videos/{variant}")
    if "ffpp_root" not in cfg.options:
        raise InputError(f"{root}: DeeperForensics' real class is the FF++ C23 target videos (its README): set "
                         "manifest.options.ffpp_root (or datasets.<name>.options.ffpp_root) to your FF++ root")
    targets = Path(cfg.options["ffpp_root"]).expanduser().resolve() / "original_sequences" / "youtube" / "c23" / "videos"
    split_of: dict[str, str] = {}
    if cfg.split_mode == "official":
        for s in ("train", "val", "test"):
            f = root / "lists" / "splits" / f"{s}.txt"
            if not f.is_file():
                raise InputError(f"{f}: DeeperForensics split file missing (or set manifest.split_mode: group)")
            for line in f.read_text().split():
                split_of[Path(line).name] = s
    rows: list[Row] = []
    target_rows: dict[str, Row] = {}
    for p in fakes:
        m = re.fullmatch(r"(\d{3})_([A-Z]\d+)", p.stem)
        if not m:
            raise InputError(f"{p}: DeeperForensics fake not named TTT_MNNN.mp4 (<target_id>_<source_id>)")
        tid, actor = m.groups()
        split = split_of.get(p.name)
        if cfg.split_mode == "official" and split is None:
            raise InputError(f"{p}: not in lists/splits/*.txt")
        target = target_rows.get(tid)
        if target is None:
            target = target_rows[tid] = Row(str(targets / f"{tid}.mp4"), 0, "original", split, identities=[f"yt{tid}"],
                                            compression="c23", video_id=f"ffpp-c23-{tid}")
        rows.append(Row(p.relative_to(root).as_posix(), 1, f"DeeperForensics-{variant}", split, sources=[target.path],
                        identities=[f"yt{tid}", f"dfo:{actor}"]))
    rows.extend(target_rows[t] for t in sorted(target_rows))
    _drop_ffpp_overlap(rows, Path(cfg.options["ffpp_root"]).expanduser(), cfg)
    if cfg.options.get("source_videos", "exclude") == "include":
        for p in _files(root / "source_videos"):
            actor = p.relative_to(root / "source_videos").parts[0]
            rows.append(Row(p.relative_to(root).as_posix(), 0, "actor_source", None, identities=[f"dfo:{actor}"]))
    return rows


def _ffpp_split_of(ffpp_root: Path, cfg: ManifestConfig) -> dict[str, str]:
    """FF++ video id (``000``) -> its official split, from FF++'s split files; empty when none are found."""
    import json

    cands = ([Path(cfg.options["ffpp_splits_dir"])] if "ffpp_splits_dir" in cfg.options
             else [ffpp_root / "splits", ffpp_root / "dataset" / "splits"])
    for c in cands:
        if all((c / f"{s}.json").is_file() for s in ("train", "val", "test")):
            out: dict[str, str] = {}
            for s in ("train", "val", "test"):
                try:
                    pairs = json.loads((c / f"{s}.json").read_text())
                except ValueError as e:
                    raise InputError(f"{c / f'{s}.json'}: not valid JSON: {e}") from None
                for pair in pairs:
                    for v in pair:
                        out[str(v)] = s
            return out
    return {}


def _drop_ffpp_overlap(rows: list[Row], ffpp_root: Path, cfg: ManifestConfig) -> None:
    """Mark test rows whose FF++ target (identity ``ytNNN``) is an FF++ train/val video ``exclude`` (or keep
    them with ``options.ffpp_overlap: keep``); a warning when FF++'s split files are absent."""
    mode = cfg.options.get("ffpp_overlap", "drop")
    if mode not in ("drop", "keep"):
        raise InputError(f"manifest.options.ffpp_overlap must be drop or keep, got {mode!r}")
    if mode == "keep":
        return
    split_of = _ffpp_split_of(ffpp_root, cfg)
    if not split_of:
        log.warning("%s: FF++ split files not found (splits/ or dataset/splits/, or options.ffpp_splits_dir): "
                    "DeeperForensics test videos whose target is an FF++ train video cannot be left out here",
                    ffpp_root)
        return
    for r in rows:
        target = next((i[2:] for i in r.identities if i.startswith("yt")), None)
        if r.split == "test" and target is not None and split_of.get(target) in ("train", "val"):
            r.exclude = f"DeeperForensics test video whose FF++ target is an FF++ {split_of[target]} video"


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


def _df40_splits(json_dir: Path) -> dict[tuple[str, str], tuple[str, int]]:
    """(json name, video key) -> (split, label) from DF40's dataset_json files."""
    import json

    out: dict[tuple[str, str], tuple[str, int]] = {}
    for f in sorted(json_dir.glob("*.json")):
        try:
            doc = json.loads(f.read_text())
        except ValueError as e:
            raise InputError(f"{f}: not valid JSON: {e}") from None
        for name, by_label in doc.items():
            if not isinstance(by_label, dict):
                raise InputError(f"{f}: '{name}' is not a mapping of label names")
            for label_key, by_split in by_label.items():
                lab = 0 if label_key.lower().endswith("real") else 1 if label_key.lower().endswith("fake") else None
                if lab is None:
                    raise InputError(f"{f}: label name '{label_key}' ends neither in _Real nor in _Fake")
                for split, videos in by_split.items():
                    if split not in ("train", "val", "test"):
                        raise InputError(f"{f}: split '{split}' under '{label_key}' (train, val or test)")
                    if set(videos) & {"c23", "c40", "raw"}:  # DeepfakeBench puts a compression level here for FF++
                        videos = {v: i for level in videos.values() for v, i in level.items()}
                    for video in videos:
                        out[(name, str(video))] = (split, lab)
    return out


def _df40_links(domain: str, key: str, cfg: ManifestConfig) -> tuple[list[str], list[str]]:
    if domain == "ff":
        m = re.fullmatch(r"(\d{3})(?:_(\d{3}))?", key)
        if m:
            ds = cfg.options.get("ffpp_dataset", "ffpp")
            ids = [i for i in m.groups() if i]
            return [f"{ds}:original_sequences-youtube-c23-videos-{ids[0]}"], [f"yt{i}" for i in ids]
    if domain == "cdf":
        m = re.fullmatch(r"(id\d+)_(id\d+)_(\d+)", key)
        if m:
            ds = cfg.options.get("celebdf_dataset", "celebdf")
            a, b, k = m.groups()
            return [f"{ds}:Celeb-real-{a}_{k}"], [f"celebdf:{a}", f"celebdf:{b}"]
    return [], []


@register_adapter("df40", DF40_LAYOUT)
def scan_df40(root: Path, cfg: ManifestConfig) -> list[Row]:
    json_dir = Path(cfg.options.get("json_dir", root / "dataset_json"))
    splits = _df40_splits(json_dir) if cfg.split_mode == "official" and json_dir.is_dir() else {}
    if cfg.split_mode == "official" and not splits:
        raise InputError(f"{json_dir}: DF40's official split lists (dataset_json/*.json) not found; set "
                         "manifest.options.json_dir, or manifest.split_mode: group")
    methods = cfg.methods or tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                                          and p.name != json_dir.name))
    rows, unlisted = [], []
    for method in methods:
        mdir = root / method
        if not mdir.is_dir():
            raise layout_error("df40", root, f"method folder {method}/ missing")
        parts = [(d.name, d) for d in sorted(mdir.iterdir()) if d.is_dir()]
        if not parts:
            raise layout_error("df40", root, f"{method}/ holds neither ff/ and cdf/ nor fake/ and real/")
        for part, pdir in parts:
            if part not in ("ff", "cdf", "fake", "real"):
                raise layout_error("df40", root, f"{method}/{part}/: expected ff/, cdf/, fake/ or real/")
            label = 0 if part == "real" else 1
            inputs = sorted(set(_files(pdir)) | set(_sequences(pdir)))
            for p in inputs:
                rel = p.relative_to(root)
                key = p.stem if p.is_file() else p.name
                names = ([f"{method}_{part}", method] if part in ("ff", "cdf")
                         else [method, f"{method}_ff", f"{method}_cdf"])
                hit = next((splits[(n, key)] for n in names if (n, key) in splits), None)
                split = hit[0] if hit else None
                if hit and hit[1] != label:
                    raise InputError(f"{root / rel}: DF40 lists it as {'real' if hit[1] == 0 else 'fake'}, its folder "
                                     f"{method}/{part}/ says {'real' if label == 0 else 'fake'}")
                if cfg.split_mode == "official" and split is None:
                    unlisted.append(rel.as_posix())
                sources, idents = _df40_links(part, key, cfg) if label == 1 else ([], [])
                rows.append(Row(rel.as_posix(), label, method if label else "original", split, sources=sources,
                                identities=idents or [f"df40:{method}:{key}"]))
    if unlisted:
        raise InputError(f"{root / unlisted[0]}: in none of DF40's split lists under {json_dir} ({len(unlisted)} such "
                         "videos); or set manifest.split_mode: group")
    if not rows:
        raise layout_error("df40", root, "no method folder holds videos or image sequences")
    return rows
