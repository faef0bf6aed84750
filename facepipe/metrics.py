"""Detection metrics at frame and video level: ``auc``, ``eer``, ``eer_nearest``, ``ap``, ``accuracy``.

Scores are fake probabilities in [0, 1]; labels 0 real / 1 fake. AUC and AP come from scikit-learn
(``roc_auc_score``, ``average_precision_score``). The EER is the standard one: the point of the ROC curve
(linear between its points) where the false negative rate equals the false positive rate, i.e.
``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)``. DeepfakeBench reports a different number,
``fpr[nanargmin(|fnr - fpr|)]`` at the nearest ROC point without interpolation
(``training/metrics/utils.py``); it is :func:`eer_nearest`, for comparison with its tables.

Frame level uses each face's own ``label``; video level aggregates a video's frame probabilities by mean
(default), max or the mean of the top-k, grouped by the unique (dataset, video_id) key, against the
video's ``video_label`` (a fake video may contain real faces).
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from facepipe.errors import InputError


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) != len(s) or len(y) == 0:
        raise InputError(f"metrics need as many scores as labels (got {len(s)} and {len(y)}), at least one")
    return y, s


def auc(labels, scores) -> float:
    """Area under the ROC curve (scikit-learn); ``nan`` when one class is absent."""
    y, s = _check(labels, scores)
    return float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def ap(labels, scores) -> float:
    """Average precision with fake as the positive class (scikit-learn); ``nan`` when one class is absent."""
    y, s = _check(labels, scores)
    return float(average_precision_score(y, s)) if len(np.unique(y)) == 2 else float("nan")


def eer(labels, scores) -> float:
    """Equal error rate in [0, 1]: where FNR = FPR on the ROC curve, linearly interpolated between its points.

    Equal to ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)``; ``nan`` when one class is absent.
    """
    y, s = _check(labels, scores)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    d = (1 - tpr) - fpr  # FNR - FPR: non-increasing along the curve, >= 0 at (0, 0), -1 at (1, 1)
    i = int(np.argmax(d <= 0))
    if d[i] == 0 or i == 0:
        return float(fpr[i])
    t = d[i - 1] / (d[i - 1] - d[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def eer_nearest(labels, scores) -> float:
    """DeepfakeBench's EER: the FPR at the ROC point where |FNR - FPR| is smallest (no interpolation)."""
    y, s = _check(labels, scores)
    if len(np.unique(y)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    return float(fpr[np.nanargmin(np.abs((1 - tpr) - fpr))])


def accuracy(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy at ``threshold`` (score >= threshold is fake): overall, on reals and on fakes (``nan`` when
    that class is absent)."""
    y, s = _check(labels, scores)
    pred = (s >= threshold).astype(np.int64)
    return {"acc": float((pred == y).mean()),
            "real_acc": float((pred[y == 0] == 0).mean()) if (y == 0).any() else float("nan"),
            "fake_acc": float((pred[y == 1] == 1).mean()) if (y == 1).any() else float("nan")}


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """AUC, EER, DeepfakeBench's EER, AP, accuracy, real and fake accuracy at ``threshold``; counts n, n_real, n_fake.

    AUC/EER/AP are ``nan`` when only one class is present (reported, not hidden).
    """
    y, s = _check(labels, scores)
    return {"auc": auc(y, s), "eer": eer(y, s), "eer_nearest": eer_nearest(y, s), "ap": ap(y, s),
            **accuracy(y, s, threshold), "n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum())}


def video_scores(frames: pl.DataFrame, agg: str = "mean", k: int = 5) -> pl.DataFrame:
    """One row per (dataset, video_id): its label, method and the aggregated fake probability.

    Args:
        frames: per-frame rows with ``dataset``, ``video_id``, ``label``, ``method``, ``score`` and, with
            per-face labels, ``video_label`` (the video's own label, used here when present).
        agg: ``mean`` | ``max`` | ``topk`` (mean of the ``k`` highest frame scores).

    Raises:
        InputError: unknown ``agg``, or a video whose frames carry different video labels.
    """
    if agg not in ("mean", "max", "topk"):
        raise InputError(f"video aggregation must be mean, max or topk, got {agg!r}")
    col = "video_label" if "video_label" in frames.columns else "label"
    bad = frames.group_by("dataset", "video_id").agg(pl.col(col).n_unique()).filter(pl.col(col) > 1)
    if bad.height:
        raise InputError(f"video {bad['dataset'][0]}/{bad['video_id'][0]} has frames with different labels")
    expr = {"mean": pl.col("score").mean(), "max": pl.col("score").max(),
            "topk": pl.col("score").top_k(k).mean()}[agg]
    return (frames.group_by("dataset", "video_id", maintain_order=True)
            .agg(pl.col(col).first().alias("label"), pl.col("method").first(), expr.alias("score"),
                 pl.len().alias("frames"))
            .sort("dataset", "video_id"))


def metric_table(frames: pl.DataFrame, agg: str = "mean", k: int = 5) -> dict:
    """Frame- and video-level metrics overall, per dataset, and per manipulation method.

    Per method: that method's fakes against all real samples of the same dataset(s) (frames: fake faces
    against real faces; videos: fake videos of that method against real videos).

    Returns:
        ``{"frame": {...}, "video": {...}, "per_dataset": {ds: {"frame", "video"}},
        "per_method": {method: {"frame", "video"}}}``.
    """
    videos = video_scores(frames, agg, k)

    def both(f: pl.DataFrame, v: pl.DataFrame) -> dict:
        return {"frame": binary_metrics(f["label"], f["score"]), "video": binary_metrics(v["label"], v["score"])}

    out = {**both(frames, videos), "per_dataset": {}, "per_method": {}}
    for (ds,), f in frames.group_by(["dataset"], maintain_order=True):
        out["per_dataset"][ds] = both(f, videos.filter(pl.col("dataset") == ds))
    for method in sorted(frames.filter(pl.col("label") == 1)["method"].unique().to_list()):
        dsets = frames.filter((pl.col("label") == 1) & (pl.col("method") == method))["dataset"].unique()
        sel = (pl.col("dataset").is_in(dsets.implode())) & ((pl.col("label") == 0) | (pl.col("method") == method))
        out["per_method"][method] = both(frames.filter(sel), videos.filter(sel))
    return out


def roc_points(labels, scores) -> pl.DataFrame:
    """ROC curve as a table (fpr, tpr, threshold) for DVC plots; empty when one class is absent."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return pl.DataFrame({"fpr": [], "tpr": [], "threshold": []}, schema={"fpr": pl.Float64, "tpr": pl.Float64,
                                                                              "threshold": pl.Float64})
    fpr, tpr, thr = roc_curve(y, np.asarray(scores))
    return pl.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
