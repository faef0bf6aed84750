"""Human-readable views of stage outputs (contact sheets)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import polars as pl


def contact_sheet(out_dir: str | Path, max_tiles: int = 48, tile: int = 128, cols: int = 8) -> Path | None:
    """Write ``OUT/contact_sheet.png``: one crop per (video, track), captioned with video id and track.

    Picks each track's middle face. Returns the path, or ``None`` when there are no faces.
    """
    out = Path(out_dir)
    faces = pl.read_parquet(out / "faces.parquet")
    if faces.is_empty():
        return None
    picks = (faces.sort(["video_id", "track_id", "frame_index"])
             .group_by(["video_id", "track_id"], maintain_order=True)
             .agg(pl.col("crop_path").gather(pl.len() // 2).first(), pl.col("score").mean())
             .head(max_tiles))
    n = picks.height
    rows = (n + cols - 1) // cols
    cap = 16
    sheet = np.full((rows * (tile + cap), cols * tile, 3), 255, np.uint8)
    for i, r in enumerate(picks.iter_rows(named=True)):
        img = cv2.imread(str(out / r["crop_path"]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        y, x = (i // cols) * (tile + cap), (i % cols) * tile
        sheet[y:y + tile, x:x + tile] = cv2.resize(img, (tile, tile), interpolation=cv2.INTER_AREA)
        vid = r["video_id"] if len(r["video_id"]) <= 16 else r["video_id"][:7] + ".." + r["video_id"][-7:]
        label = f"{vid} t{r['track_id']}"
        cv2.putText(sheet, label, (x + 2, y + tile + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1,
                    cv2.LINE_AA)
    path = out / "contact_sheet.png"
    tmp = out / f".contact_sheet.tmp-{os.getpid()}.png"
    cv2.imwrite(str(tmp), sheet)
    os.replace(tmp, path)
    return path
