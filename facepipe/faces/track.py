"""Link faces of one person across the sampled frames of a video into tracks."""

from __future__ import annotations

import numpy as np

from facepipe.faces.config import TrackConfig
from facepipe.faces.types import Face

_NO = 1e9


def _shift_cost(faces: list[Face], last: list[tuple[np.ndarray, int]], t: int, cfg: TrackConfig) -> np.ndarray:
    """(F, T) centre shift in face sizes per elapsed sampled frame; ``_NO`` where the gates fail."""
    fb = np.stack([f.box for f in faces]).astype(np.float64)
    tb = np.stack([b for b, _ in last]).astype(np.float64)
    gaps = np.array([t - s for _, s in last], dtype=np.float64)
    fc = (fb[:, :2] + fb[:, 2:]) / 2
    tc = (tb[:, :2] + tb[:, 2:]) / 2
    fs = np.sqrt(np.prod(np.clip(fb[:, 2:] - fb[:, :2], 1e-6, None), axis=1))
    ts = np.sqrt(np.prod(np.clip(tb[:, 2:] - tb[:, :2], 1e-6, None), axis=1))
    size = (fs[:, None] + ts[None, :]) / 2
    shift = np.linalg.norm(fc[:, None, :] - tc[None, :, :], axis=2) / size / gaps[None, :]
    ratio = np.maximum(fs[:, None] / ts[None, :], ts[None, :] / fs[:, None])
    return np.where((shift <= cfg.max_shift) & (ratio <= cfg.max_scale), shift, _NO)


def link_tracks(faces_per_frame: list[list[Face]], cfg: TrackConfig) -> list[list[int]]:
    """Assign a track id to every face.

    Each face of sampled frame ``t`` is matched to at most one live track (last seen within
    ``cfg.max_gap + 1`` sampled frames) by Hungarian assignment (scipy ``linear_sum_assignment``) on
    the centre shift, gated by ``cfg.max_shift`` and ``cfg.max_scale``; unmatched faces start new
    tracks. Track ids are then renumbered 0, 1, ... by decreasing summed face area, so track 0 is the
    video's main subject.

    Args:
        faces_per_frame: faces of each sampled frame, in frame order.
        cfg: linking gates.

    Returns:
        Track ids, same nesting as ``faces_per_frame``.
    """
    ids: list[list[int]] = []
    active: dict[int, tuple[np.ndarray, int]] = {}  # raw id -> (last box, sampled-frame position)
    area: dict[int, float] = {}
    next_id = 0
    for t, faces in enumerate(faces_per_frame):
        live = [k for k, (_, last) in active.items() if t - last - 1 <= cfg.max_gap]
        frame_ids = [-1] * len(faces)
        if faces and live:
            cost = _shift_cost(faces, [active[k] for k in live], t, cfg)
            if cost.shape == (1, 1):  # one face, one track: nothing to assign (and no SciPy import, ~0.7 s a worker)
                rows, cols = [0], [0]
            else:
                from scipy.optimize import linear_sum_assignment

                rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] < _NO:
                    frame_ids[r] = live[c]
        for i, f in enumerate(faces):
            if frame_ids[i] < 0:
                frame_ids[i] = next_id
                next_id += 1
            active[frame_ids[i]] = (f.box, t)
            area[frame_ids[i]] = area.get(frame_ids[i], 0.0) + f.area_px
        ids.append(frame_ids)
    order = sorted(area, key=lambda k: (-area[k], k))
    remap = {raw: new for new, raw in enumerate(order)}
    return [[remap[i] for i in frame_ids] for frame_ids in ids]
