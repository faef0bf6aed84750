"""How a map relates to the face and to the manipulation mask: face mass (the fake map's share inside the face region
from the stored landmarks), the pointing game and the IoU of the map's top share with the mask, the chance level of
each (the region's or the mask's area share), the per-face rows of ``summary.parquet`` (:data:`SUMMARY_SCHEMA`) and
their means (``summary.json``, :func:`summary_means`)."""

from __future__ import annotations

import numpy as np
import polars as pl

#: face region of the "face mass" statistic: the quadrilateral eyes -> mouth corners, scaled about its centre
FACE_SCALE = 2.0


def face_region(landmarks, affine, crop_size: int, size: int) -> np.ndarray | None:
    """(size, size) bool mask of the face region in the model's input crop: the quadrilateral of the eyes and
    mouth corners of the 5-point landmarks (source frame -> crop by ``affine``, then scaled to ``size``), scaled
    by :data:`FACE_SCALE` about its centre (brows to chin). ``None`` without landmarks."""
    from skimage.draw import polygon

    if landmarks is None or affine is None or not crop_size:
        return None
    pts = np.asarray(landmarks, dtype=np.float64)
    m = np.asarray(affine, dtype=np.float64)
    crop = (pts @ m[:, :2].T + m[:, 2]) * (size / float(crop_size))
    quad = crop[[0, 1, 4, 3]]  # left eye, right eye, right mouth corner, left mouth corner
    quad = quad.mean(0) + FACE_SCALE * (quad - quad.mean(0))
    rr, cc = polygon(quad[:, 1], quad[:, 0], shape=(size, size))
    out = np.zeros((size, size), bool)
    out[rr, cc] = True
    return out


def face_mass(cam: np.ndarray, region: np.ndarray | None) -> float:
    """Share of the map's mass inside the face region (NaN without a region or with an all-zero map)."""
    total = float(cam.sum())
    if region is None or total <= 0:
        return float("nan")
    return float(cam[region].sum()) / total


def area_share(region: np.ndarray | None) -> float:
    """Share of the crop's area inside ``region`` (NaN without one): the chance level of :func:`face_mass` (a uniform
    map puts exactly this share of its mass in the face) and of :func:`pointing_hit` for a mask (a maximum at a
    uniformly random pixel lands in the mask with this probability)."""
    if region is None:
        return float("nan")
    return float(np.count_nonzero(region)) / float(region.size)


def pointing_hit(cam: np.ndarray, mask: np.ndarray) -> float:
    """Pointing game (Zhang et al., ECCV 2016, without tolerance): 1.0 when the map's maximum lies in the mask."""
    iy, ix = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return float(mask[iy, ix])


def topk_iou(cam: np.ndarray, mask: np.ndarray, top_percent: float) -> float:
    """IoU of the map's top ``top_percent`` % pixels with the mask."""
    k = max(1, int(round(cam.size * top_percent / 100.0)))
    thr = np.partition(cam.ravel(), cam.size - k)[cam.size - k]
    top = cam >= thr
    union = np.logical_or(top, mask).sum()
    return float(np.logical_and(top, mask).sum() / union) if union else float("nan")


def face_scores(real: np.ndarray, fake: np.ndarray, region: np.ndarray | None, mask: np.ndarray,
                top_percent: float) -> dict[str, float | bool]:
    """The statistics of one face's ``summary.parquet`` row (:data:`SUMMARY_SCHEMA`): face mass of the fake and the
    real map with its chance level, and, where the face has a manipulation mask (``mask`` not all False), the
    pointing-game hit with its chance level and the top-``top_percent`` % IoU (NaN without a mask)."""
    has_mask = bool(mask.any())
    nan = float("nan")
    return {"face_mass": face_mass(fake, region), "face_mass_real": face_mass(real, region),
            "face_mass_chance": area_share(region), "has_mask": has_mask,
            "pointing_hit": pointing_hit(fake, mask) if has_mask else nan,
            "pointing_chance": area_share(mask) if has_mask else nan,
            "iou_top": topk_iou(fake, mask, top_percent) if has_mask else nan}


SUMMARY_SCHEMA = {
    "key": pl.String, "dataset": pl.String, "video_id": pl.String, "method": pl.String, "label": pl.Int64,
    "video_label": pl.Int64, "label_source": pl.String, "score": pl.Float64, "face_mass": pl.Float64,
    "face_mass_real": pl.Float64, "face_mass_chance": pl.Float64, "has_mask": pl.Boolean, "pointing_hit": pl.Float64,
    "pointing_chance": pl.Float64, "iou_top": pl.Float64, "real_png": pl.String, "fake_png": pl.String,
    "comparison_png": pl.String,
}
"""One row per face. ``face_mass_chance``: the face region's share of the crop area (:func:`area_share`), the face
mass of a uniform map; ``pointing_chance``: the mask's area share, the pointing game's hit rate for a maximum at a
uniformly random pixel (NaN without a mask)."""


def summary_means(summary: pl.DataFrame, top_percent: float = 20.0) -> dict[str, float | None]:
    """The statistics of ``summary.json`` from a :data:`SUMMARY_SCHEMA` frame: face mass (all faces, fake faces,
    real faces) and the pointing game and top-share IoU over the faces with a mask, each with its chance level
    averaged over the same faces as the statistic (faces where it is NaN, e.g. a blank map, left out of both).
    ``None`` where no face has a value."""

    def _mean(col: str, df: pl.DataFrame, of: str | None = None) -> float | None:
        if of is not None:  # the faces where the statistic ``of`` is defined
            df = df.filter(pl.col(of).is_not_null() & ~pl.col(of).is_nan())
        v = df[col].drop_nulls().drop_nans()
        return float(v.mean()) if len(v) else None

    masked = summary.filter(pl.col("has_mask"))
    fakes, reals = summary.filter(pl.col("label") == 1), summary.filter(pl.col("label") == 0)
    return {"face_mass": _mean("face_mass", summary),
            "face_mass_chance": _mean("face_mass_chance", summary, "face_mass"),
            "face_mass_fake_faces": _mean("face_mass", fakes),
            "face_mass_fake_faces_chance": _mean("face_mass_chance", fakes, "face_mass"),
            "face_mass_real_faces": _mean("face_mass", reals),
            "face_mass_real_faces_chance": _mean("face_mass_chance", reals, "face_mass"),
            "pointing_game": _mean("pointing_hit", masked),
            "pointing_game_chance": _mean("pointing_chance", masked, "pointing_hit"),
            f"iou_top{top_percent:g}": _mean("iou_top", masked)}
