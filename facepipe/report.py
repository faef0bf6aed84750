"""Human-readable views of stage outputs (contact sheets)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl

from facepipe._io import atomic_path

LABEL_COLOURS_BGR = {1: (40, 40, 220), 0: (60, 160, 40), None: (128, 128, 128)}
"""Tile frames on contact sheets: red = fake face, green = real face, grey = unlabelled (no manifest)."""


def contact_sheet(out_dir: str | Path, max_tiles: int = 48, tile: int = 128, cols: int = 8) -> Path | None:
    """Write ``OUT/contact_sheet.png``: one crop per (video, track), framed and captioned with its face label.

    Picks each track's middle face. The frame is red for a fake face, green for a real one, grey without
    labels; the caption gives the video id, track, label and (fakes compared with their original) the
    ``manipulation_score``. Returns the path, or ``None`` when there are no faces.
    """
    out = Path(out_dir)
    faces = pl.read_parquet(out / "faces.parquet")
    if faces.is_empty():
        return None
    if "clip_id" in faces.columns and faces["clip_id"].null_count() < faces.height:
        return _extract_clip_sheet(out, faces)
    picks = (faces.sort(["video_id", "track_id", "frame_index"])
             .group_by(["video_id", "track_id"], maintain_order=True)
             .agg(pl.all().gather(pl.len() // 2).first())
             .head(max_tiles))
    n = picks.height
    rows = (n + cols - 1) // cols
    cap = 26
    sheet = np.full((rows * (tile + cap), cols * tile, 3), 255, np.uint8)
    for i, r in enumerate(picks.iter_rows(named=True)):
        img = cv2.imread(str(out / r["crop_path"]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        y, x = (i // cols) * (tile + cap), (i % cols) * tile
        sheet[y:y + tile, x:x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        label = r.get("label")
        colour = LABEL_COLOURS_BGR.get(label, LABEL_COLOURS_BGR[None])
        cv2.rectangle(sheet, (x + 1, y + 1), (x + tile - 2, y + tile - 2), colour, 3)
        vid = r["video_id"] if len(r["video_id"]) <= 20 else r["video_id"][:9] + ".." + r["video_id"][-9:]
        text = {1: "FAKE", 0: "real"}.get(label, "unlabelled")
        if r.get("manipulation_score") is not None:
            text += f" diff {r['manipulation_score']:.2f}"
        cv2.putText(sheet, f"{vid} t{r['track_id']}", (x + 2, y + tile + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.32,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(sheet, text, (x + 2, y + tile + 23), cv2.FONT_HERSHEY_SIMPLEX, 0.36, colour, 1, cv2.LINE_AA)
    path = out / "contact_sheet.png"
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), sheet)
    return path


MAX_CLIP_TILES = 16
"""Frames shown per clip on a clip contact sheet (longer clips: evenly spaced ones, their indices captioned)."""


def clip_sheet(clips: list[dict], tile: int = 96) -> np.ndarray:
    """One row per clip: its frames left to right (at most :data:`MAX_CLIP_TILES`, evenly spaced), each captioned
    with its source frame index, gap frames (no detection: box interpolated) framed in yellow, the row captioned
    and framed by the clip's label, so a reader sees that the frames are consecutive and the crop stable.

    Args:
        clips: per clip ``{"frames": list of (H, W, 3) uint8 RGB, "frame_indices": list[int], "gaps": list[bool],
            "label": int | None, "caption": str}``.
        tile: frame side in pixels.

    Returns:
        (rows * (tile + captions), MAX_CLIP_TILES * tile, 3) uint8 RGB.
    """
    cap = 24
    width = min(MAX_CLIP_TILES, max(len(c["frames"]) for c in clips))
    img = np.full((len(clips) * (tile + cap), width * tile, 3), 255, np.uint8)
    rgb = {1: (220, 40, 40), 0: (40, 160, 60), -1: (150, 110, 0), None: (128, 128, 128)}
    for i, c in enumerate(clips):
        y = i * (tile + cap)
        pick = np.unique(np.linspace(0, len(c["frames"]) - 1, min(width, len(c["frames"]))).astype(int))
        colour = rgb.get(c.get("label"), rgb[None])
        cv2.putText(img, c["caption"][:110], (2, y + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.34, colour, 1, cv2.LINE_AA)
        for j, k in enumerate(pick):
            x = j * tile
            img[y + 12:y + 12 + tile, x:x + tile] = cv2.resize(c["frames"][k], (tile, tile),
                                                               interpolation=cv2.INTER_AREA)
            frame_colour = (240, 200, 0) if c["gaps"][k] else colour
            cv2.rectangle(img, (x, y + 12), (x + tile - 1, y + 11 + tile), frame_colour, 2 if c["gaps"][k] else 1)
            cv2.putText(img, str(c["frame_indices"][k]) + (" gap" if c["gaps"][k] else ""),
                        (x + 2, y + tile + 22), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def _extract_clip_sheet(out: Path, faces: pl.DataFrame, max_rows: int = 16) -> Path:
    """Clip mode's ``OUT/contact_sheet.png``: a row per (video, clip, track), see :func:`clip_sheet`."""
    groups = (faces.sort("frame_index").group_by(["video_id", "clip_id", "track_id"], maintain_order=True)
              .agg("crop_path", "frame_index", "gap", "label", "label_source").sort("video_id", "clip_id", "track_id")
              .head(max_rows))
    clips = []
    for r in groups.iter_rows(named=True):
        frames = [cv2.imread(str(out / p), cv2.IMREAD_COLOR) for p in r["crop_path"]]
        frames = [f[..., ::-1] if f is not None else np.zeros((8, 8, 3), np.uint8) for f in frames]
        labels = [x for x in r["label"] if x is not None]
        label = 1 if 1 in labels else 0 if 0 in labels else -1 if labels else None
        clips.append({"frames": frames, "frame_indices": r["frame_index"], "gaps": r["gap"], "label": label,
                      "caption": f"{r['video_id']} clip {r['clip_id']} track {r['track_id']}: frames "
                                 f"{r['frame_index'][0]}-{r['frame_index'][-1]}, "
                                 f"{ {1: 'FAKE', 0: 'real', -1: 'undecided'}.get(label, 'unlabelled')}"})
    path = out / "contact_sheet.png"
    with atomic_path(path) as tmp:
        cv2.imwrite(str(tmp), clip_sheet(clips)[..., ::-1])
    return path


def _spectrum_panel(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centred log-amplitude spectrum of the luma, min-max scaled to uint8, as a (size, size, 3) image."""
    from facepipe.freq.functional import fft, luma, to_chw01

    s = fft(luma(to_chw01(rgb)))[0]
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-6)
    g = cv2.resize((s * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_AREA)
    return cv2.applyColorMap(g, cv2.COLORMAP_INFERNO)[..., ::-1]


def inspect_shards(source: str | Path, n: int = 32, out_png: str | Path | None = None,
                   tile: int = 112) -> tuple[pl.DataFrame, Path | None, list[str]]:
    """Read every sample of a shard set: counts per split, dataset, label, label source and method, and a
    contact sheet (each crop beside its spectrum, captioned with its face label and label source; for a clip set,
    one row per clip with its frames, see :func:`clip_sheet`).

    Args:
        source: the shard folder (with ``index.json``) or the index itself.
        n: samples on the contact sheet (spread over the splits).
        out_png: contact-sheet path (default ``<folder>/contact_sheet.png``).
        tile: tile side in pixels (crop and its spectrum side by side).

    Returns:
        (counts table, contact-sheet path or None, problems found: samples failing the schema, and
        disagreements between the index and the tars).

    Raises:
        ShardIndexError: no index, or not a shard index of this schema version (an ``InputError``).
    """
    from facepipe.data.index import read_index
    from facepipe.data.schema import decode_clip_sample, decode_sample

    folder = Path(source)
    index_path = folder if folder.suffix == ".json" else folder / "index.json"
    index = read_index(index_path)
    clips = index.get("sample_kind") == "clip"
    rows, picks, problems = _read_all(index, index_path, decode_clip_sample if clips else decode_sample, n)
    keys = ["split", "dataset", "label", "label_source", "method"]
    counts = (pl.DataFrame(rows, schema={k: pl.String for k in keys}).group_by(keys).len().sort(keys))
    sheet = None
    if picks:
        sheet = Path(out_png) if out_png else index_path.parent / "contact_sheet.png"
        img = clip_sheet([{"frames": list(d["frames"]), "frame_indices": d["meta"]["frame_indices"],
                           "gaps": d["meta"]["gaps"], "label": d["meta"]["label"],
                           "caption": f"{d['key']} ({split}): {d['meta']['label_name']} ({d['meta']['label_source']}) "
                                      f"{d['meta']['method'] or ''}"} for split, d in picks]) if clips else \
            _frame_sheet(picks, tile)
        with atomic_path(sheet) as tmp:
            cv2.imwrite(str(tmp), img[..., ::-1])
    return counts, sheet, problems


def _read_all(index: dict, index_path: Path, decode, n: int) -> tuple[list[dict], list[tuple], list[str]]:
    """Every sample of every shard decoded: (count rows, up to ``n`` picks spread over the splits, problems)."""
    import webdataset as wds

    from facepipe.data.schema import SchemaError

    rows, picks, problems = [], [], []
    per_split = max(1, n // max(1, sum(1 for s in index["splits"].values() if s["samples"])))
    for split, info in index["splits"].items():
        for sh in info["shards"]:
            url = str(index_path.parent / sh["url"])
            count = 0
            try:
                for s in wds.WebDataset(url, shardshuffle=False, empty_check=False):
                    count += 1
                    try:
                        d = decode(s)
                    except SchemaError as e:
                        problems.append(str(e))
                        continue
                    m = d["meta"]
                    rows.append({"split": split, "dataset": m["dataset"], "label": m["label_name"],
                                 "label_source": m["label_source"], "method": m["method"]})
                    if len([p for p in picks if p[0] == split]) < per_split:
                        picks.append((split, d))
            except Exception as e:  # a truncated or unreadable tar: report and go on
                problems.append(f"{url}: cannot read: {e}")
            if count != sh["samples"]:
                problems.append(f"{url}: index says {sh['samples']} samples, tar holds {count}")
    return rows, picks, problems


def _frame_sheet(picks: list[tuple], tile: int) -> np.ndarray:
    """Frame samples four to a row, each crop beside its spectrum, captioned (RGB)."""
    cols, cap = 4, 14
    r = (len(picks) + cols - 1) // cols
    img = np.full((r * (tile + cap), cols * 2 * tile, 3), 255, np.uint8)
    for i, (split, d) in enumerate(picks):
        y, x = (i // cols) * (tile + cap), (i % cols) * 2 * tile
        img[y:y + tile, x:x + tile] = cv2.resize(d["image"], (tile, tile), interpolation=cv2.INTER_AREA)
        img[y:y + tile, x + tile:x + 2 * tile] = _spectrum_panel(d["image"], tile)
        m = d["meta"]
        color = (200, 0, 0) if m["label"] == 1 else (0, 120, 0)
        text = f"{m['label_name']} ({m['label_source']}) {m['method'] or ''} {split}"[:40]
        cv2.putText(img, text, (x + 2, y + tile + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.32, color, 1, cv2.LINE_AA)
    return img
