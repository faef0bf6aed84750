"""Link faces of one person across the sampled frames of a video into tracks."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from facepipe.config import TrackConfig
from facepipe.faces.nms import box_iou
from facepipe.faces.types import Face


def link_tracks(faces_per_frame: list[list[Face]], cfg: TrackConfig) -> list[list[int]]:
    """Assign a track id to every face.

    Faces of consecutive sampled frames are matched by box IoU with the Hungarian algorithm
    (scipy ``linear_sum_assignment``); a pair is linked when IoU >= ``cfg.iou``. A track whose face
    was missed in up to ``cfg.max_gap`` sampled frames can still be continued (its last box is used).
    Track ids are renumbered 0, 1, ... by decreasing summed face area, so track 0 is the video's
    main subject.

    Args:
        faces_per_frame: faces of each sampled frame, in frame order.
        cfg: linking thresholds.

    Returns:
        Track ids, same nesting as ``faces_per_frame``.
    """
    ids: list[list[int]] = []
    active: dict[int, tuple[np.ndarray, int]] = {}  # raw id -> (last box, last frame position)
    area: dict[int, float] = {}
    next_id = 0
    for t, faces in enumerate(faces_per_frame):
        live = [k for k, (_, last) in active.items() if t - last - 1 <= cfg.max_gap]
        frame_ids = [-1] * len(faces)
        if faces and live:
            iou = box_iou(np.stack([f.box for f in faces]), np.stack([active[k][0] for k in live]))
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= cfg.iou:
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
