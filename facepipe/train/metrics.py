"""Detection metrics at frame and video level, from scikit-learn.

Scores are fake probabilities in [0, 1]; labels 0 real / 1 fake. AUC and AP from
``sklearn.metrics.roc_auc_score`` / ``average_precision_score``; EER is the ROC point where the false
positive rate equals the false negative rate (linear interpolation between ROC points, as
DeepfakeBench computes it). Video scores aggregate a video's frame probabilities by mean (default),
max or the mean of the top-k, grouped by the unique (dataset, video_id) key.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from facepipe.errors import InputError


def eer(labels: np.ndarray, scores: np.ndarray) -> float:
    """Equal error rate in [0, 1]; ``nan`` when one class is absent."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    if i + 1 < len(fpr) and (fnr[i] - fpr[i]) * (fnr[i + 1] - fpr[i + 1]) < 0:  # crossing between i and i+1
        d0, d1 = fnr[i] - fpr[i], fnr[i + 1] - fpr[i + 1]
        t = d0 / (d0 - d1)
        return float(fpr[i] + t * (fpr[i + 1] - fpr[i]))
    return float((fpr[i] + fnr[i]) / 2)


def binary_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """AUC, EER, AP, accuracy, real accuracy and fake accuracy at ``threshold``; counts n, n_real, n_fake.

    AUC/EER/AP are ``nan`` when only one class is present (reported, not hidden).
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) != len(s) or len(y) == 0:
        raise InputError(f"metrics need as many scores as labels (got {len(s)} and {len(y)}), at least one")
    pred = (s >= threshold).astype(np.int64)
    both = len(np.unique(y)) == 2
    out = {
        "auc": float(roc_auc_score(y, s)) if both else float("nan"),
        "eer": eer(y, s),
        "ap": float(average_precision_score(y, s)) if both else float("nan"),
        "acc": float((pred == y).mean()),
        "real_acc": float((pred[y == 0] == 0).mean()) if (y == 0).any() else float("nan"),
        "fake_acc": float((pred[y == 1] == 1).mean()) if (y == 1).any() else float("nan"),
        "n": int(len(y)), "n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()),
    }
    return out


def video_scores(frames: pl.DataFrame, agg: str = "mean", k: int = 5) -> pl.DataFrame:
    """One row per (dataset, video_id): label, method and the aggregated fake probability.

    Args:
        frames: per-frame rows with ``dataset``, ``video_id``, ``label``, ``method``, ``score``.
        agg: ``mean`` | ``max`` | ``topk`` (mean of the ``k`` highest frame scores).

    Raises:
        InputError: unknown ``agg``, or a video whose frames carry different labels.
    """
    if agg not in ("mean", "max", "topk"):
        raise InputError(f"video aggregation must be mean, max or topk, got {agg!r}")
    bad = frames.group_by("dataset", "video_id").agg(pl.col("label").n_unique()).filter(pl.col("label") > 1)
    if bad.height:
        raise InputError(f"video {bad['dataset'][0]}/{bad['video_id'][0]} has frames with different labels")
    expr = {"mean": pl.col("score").mean(), "max": pl.col("score").max(),
            "topk": pl.col("score").top_k(k).mean()}[agg]
    return (frames.group_by("dataset", "video_id", maintain_order=True)
            .agg(pl.col("label").first(), pl.col("method").first(), expr.alias("score"), pl.len().alias("frames"))
            .sort("dataset", "video_id"))


def metric_table(frames: pl.DataFrame, agg: str = "mean", k: int = 5) -> dict:
    """Frame- and video-level metrics overall, per dataset, and per manipulation method.

    Per method: that method's fakes against all real samples of the same dataset(s).

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
