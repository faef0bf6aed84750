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
    contact sheet (each crop beside its spectrum, captioned with its face label and label source).

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
    import webdataset as wds

    from facepipe.data.index import read_index
    from facepipe.data.schema import SchemaError, decode_sample

    folder = Path(source)
    index_path = folder if folder.suffix == ".json" else folder / "index.json"
    index = read_index(index_path)
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
                        d = decode_sample(s)
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
    keys = ["split", "dataset", "label", "label_source", "method"]
    counts = (pl.DataFrame(rows, schema={k: pl.String for k in keys}).group_by(keys).len().sort(keys))
    sheet = None
    if picks:
        cols = 4
        cap = 14
        r = (len(picks) + cols - 1) // cols
        img = np.full((r * (tile + cap), cols * 2 * tile, 3), 255, np.uint8)
        for i, (split, d) in enumerate(picks):
            y, x = (i // cols) * (tile + cap), (i % cols) * 2 * tile
            crop = cv2.resize(d["image"], (tile, tile), interpolation=cv2.INTER_AREA)
            img[y:y + tile, x:x + tile] = crop
            img[y:y + tile, x + tile:x + 2 * tile] = _spectrum_panel(d["image"], tile)
            m = d["meta"]
            color = (200, 0, 0) if m["label"] == 1 else (0, 120, 0)
            text = f"{m['label_name']} ({m['label_source']}) {m['method'] or ''} {split}"[:40]
            cv2.putText(img, text, (x + 2, y + tile + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.32, color, 1, cv2.LINE_AA)
        sheet = Path(out_png) if out_png else index_path.parent / "contact_sheet.png"
        with atomic_path(sheet) as tmp:
            cv2.imwrite(str(tmp), img[..., ::-1])
    return counts, sheet, problems
