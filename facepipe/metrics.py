"""Detection metrics at frame and video level: ``auc``, ``eer``, ``eer_nearest``, ``ap``, ``accuracy``.

Scores are fake probabilities in [0, 1]; labels 0 real / 1 fake. AUC and AP come from scikit-learn
(``roc_auc_score``, ``average_precision_score``). The EER is the standard one: the point of the ROC curve
(linear between its points) where the false negative rate equals the false positive rate, i.e.
``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)``. DeepfakeBench reports a different number,
``fpr[nanargmin(|fnr - fpr|)]`` at the nearest ROC point without interpolation
(``training/metrics/utils.py``); it is :func:`eer_nearest`, for comparison with its tables.

Frame level uses each face's own ``label``; video level aggregates a video's frame probabilities by mean
(default), max or the mean of the top-k, grouped by the unique (dataset, video_id) key, against the
video's ``video_label`` (a fake video may contain real faces). Fakes are scored against the reals of their
*reference* dataset (:func:`with_references`: DF40's methods against FF++ / Celeb-DF test reals); AUCs can carry
a bootstrap confidence interval over videos (:func:`auc_ci`).
"""

from __future__ import annotations

from typing import Mapping

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


UNCERTAIN = "original_diff_uncertain"
"""``label_source`` of a fake video's face that matched its original too closely to be called fake with margin
(:mod:`facepipe.faces.labels`): kept in the shards, left out of the loss and of frame-level metrics, as the DFDC
winners' per-face labels leave such faces out."""

VIDEO_AGGREGATIONS = ("mean", "max", "topk", "deepfakebench")
"""``mean`` (facepipe's default: every face of every sampled frame), ``max``, ``topk`` (mean of the k highest),
``deepfakebench`` (DeepfakeBench's video AUC, ``training/test.py`` at 8a4a7bf: frames grouped by video name and
averaged, one face per frame — the largest — since its preprocessing keeps one)."""


def video_scores(frames: pl.DataFrame, agg: str = "mean", k: int = 5) -> pl.DataFrame:
    """One row per (dataset, video_id): its label, method, reference dataset and the aggregated fake probability.

    Args:
        frames: per-face rows with ``dataset``, ``video_id``, ``label``, ``method``, ``score`` and, with
            per-face labels, ``video_label`` (the video's own label, used here when present); ``deepfakebench``
            also needs ``frame_index`` and ``face_size`` (source pixels: the largest face of a frame is kept).
        agg: one of :data:`VIDEO_AGGREGATIONS`.

    Returns:
        Columns ``dataset, video_id, label, method, score, frames`` (+ ``reference`` when ``frames`` has it).

    Raises:
        InputError: unknown ``agg``, ``deepfakebench`` without face sizes, or a video whose frames carry
            different video labels.
    """
    if agg not in VIDEO_AGGREGATIONS:
        raise InputError(f"video aggregation must be one of {', '.join(VIDEO_AGGREGATIONS)}, got {agg!r}")
    col = "video_label" if "video_label" in frames.columns else "label"
    bad = frames.group_by("dataset", "video_id").agg(pl.col(col).n_unique()).filter(pl.col(col) > 1)
    if bad.height:
        raise InputError(f"video {bad['dataset'][0]}/{bad['video_id'][0]} has frames with different labels")
    if agg == "deepfakebench":
        if "face_size" not in frames.columns or "frame_index" not in frames.columns:
            raise InputError("video aggregation deepfakebench needs per-face frame_index and face_size")
        frames = (frames.sort("face_size", descending=True, maintain_order=True)
                  .unique(["dataset", "video_id", "frame_index"], keep="first", maintain_order=True))
    expr = {"mean": pl.col("score").mean(), "max": pl.col("score").max(), "deepfakebench": pl.col("score").mean(),
            "topk": pl.col("score").top_k(k).mean()}[agg]
    extra = [pl.col("reference").first()] if "reference" in frames.columns else []
    return (frames.group_by("dataset", "video_id", maintain_order=True)
            .agg(pl.col(col).first().alias("label"), pl.col("method").first(), expr.alias("score"),
                 pl.len().alias("frames"), *extra)
            .sort("dataset", "video_id"))


def with_references(frames: pl.DataFrame, reference_reals: Mapping[str, str] | None = None) -> pl.DataFrame:
    """Add ``reference``: for each fake face the dataset whose real faces it is scored against.

    A fake takes, in this order, ``reference_reals["<dataset>/<method>"]``, ``reference_reals["<dataset>"]``,
    the ``reference`` column already in ``frames`` (the evaluate stage derives it from a fake's cross-dataset
    original: a DF40 ``ff`` fake made from an FF++ video has ``ffpp``), or its own dataset. Reals keep ``None``:
    they belong to their dataset. DF40's known methods ship no reals; their published protocols score them
    against FF++ (``ff`` domain) and Celeb-DF (``cdf``) test reals (DF40 README, protocols 1-4).
    """
    ref = pl.col("reference") if "reference" in frames.columns else pl.lit(None, dtype=pl.String)
    m = dict(reference_reals or {})
    by_method = pl.concat_str([pl.col("dataset"), pl.col("method").fill_null("")], separator="/")
    chosen = (by_method.replace_strict(m, default=None, return_dtype=pl.String)
              .fill_null(pl.col("dataset").replace_strict(m, default=None, return_dtype=pl.String))
              .fill_null(ref).fill_null(pl.col("dataset")))
    video_label = pl.col("video_label") if "video_label" in frames.columns else pl.col("label")
    return frames.with_columns(pl.when(video_label == 1).then(chosen).otherwise(None).alias("reference"))


def _frame_rows(frames: pl.DataFrame) -> pl.DataFrame:
    """Faces that count at frame level: a decided label, not :data:`UNCERTAIN`."""
    keep = pl.col("label").is_not_null() & (pl.col("label") >= 0)
    if "label_source" in frames.columns:
        keep = keep & (pl.col("label_source").fill_null("") != UNCERTAIN)
    return frames.filter(keep)


def metric_table(frames: pl.DataFrame, agg: str = "mean", k: int = 5,
                 reference_reals: Mapping[str, str] | None = None, ci: int = 0, seed: int = 0) -> dict:
    """Frame- and video-level metrics overall, per dataset, and per manipulation method.

    Every fake is scored against the real faces (frames) or real videos of its *reference* dataset (see
    :func:`with_references`; its own dataset unless a protocol or a cross-dataset original says otherwise):

    - per dataset ``D``: ``D``'s fakes against the reals of ``D`` and of the datasets its fakes reference;
    - per method: that method's fakes against the reals of their reference dataset(s); a method whose fakes
      reference several datasets (DF40's ``simswap`` in the ``ff`` and ``cdf`` domains) gives one row per
      reference, ``<method>@<reference>``.

    Frame level leaves out faces whose label is undecided (``label_source`` :data:`UNCERTAIN`); video level
    scores every face (see :func:`video_scores`). With ``ci`` > 0, every AUC gets ``auc_ci``: a 95 % bootstrap
    interval over videos (:func:`auc_ci`, ``ci`` resamples, ``seed``).

    Returns:
        ``{"frame": {...}, "video": {...}, "per_dataset": {ds: {"frame", "video", "reference_reals"}},
        "per_method": {method: {"frame", "video", "reference_reals"}}}``.
    """
    frames = with_references(frames, reference_reals)
    videos = video_scores(frames, agg, k)
    fr = _frame_rows(frames)

    def both(sel: pl.Expr) -> dict:
        f, v = fr.filter(sel), videos.filter(sel)
        out = {"frame": binary_metrics(f["label"], f["score"]), "video": binary_metrics(v["label"], v["score"])}
        if ci:
            out["frame"]["auc_ci"] = auc_ci(f["label"], f["score"], _groups(f), ci, seed)
            out["video"]["auc_ci"] = auc_ci(v["label"], v["score"], None, ci, seed)
        return out

    out = {**both(pl.lit(True)), "per_dataset": {}, "per_method": {}}
    fakes = videos.filter(pl.col("label") == 1)
    for ds in frames["dataset"].unique(maintain_order=True).to_list():
        refs = sorted(set(fakes.filter(pl.col("dataset") == ds)["reference"].to_list()) | {ds})
        sel = ((pl.col("label") == 0) & pl.col("dataset").is_in(refs)) | ((pl.col("label") == 1)
                                                                          & (pl.col("dataset") == ds))
        out["per_dataset"][ds] = {**both(sel), "reference_reals": refs}
    for method in sorted(fakes["method"].drop_nulls().unique().to_list()):
        refs = sorted(set(fakes.filter(pl.col("method") == method)["reference"].to_list()))
        for ref in refs:
            sel = ((pl.col("label") == 0) & (pl.col("dataset") == ref)) | ((pl.col("label") == 1)
                                                                           & (pl.col("method") == method)
                                                                           & (pl.col("reference") == ref))
            name = method if len(refs) == 1 else f"{method}@{ref}"
            out["per_method"][name] = {**both(sel), "reference_reals": [ref]}
    return out


def _groups(frames: pl.DataFrame) -> np.ndarray:
    """Per face, an integer id of its video."""
    return frames.select(pl.struct("dataset", "video_id").rank("dense")).to_series().to_numpy()


def weighted_auc(level_of: np.ndarray, n_levels: int, y: np.ndarray, w: np.ndarray) -> float:
    """AUC of weighted samples given each sample's rank among the distinct scores (``level_of``, from
    ``np.unique(scores, return_inverse=True)``): P(fake scores higher) + P(tie) / 2; ``nan`` without weight in a
    class."""
    wn = np.bincount(level_of, weights=w * (y == 0), minlength=n_levels)
    wp = np.bincount(level_of, weights=w * (y == 1), minlength=n_levels)
    tn, tp = wn.sum(), wp.sum()
    if not tn or not tp:
        return float("nan")
    below = np.cumsum(wn) - wn
    return float((wp * (below + 0.5 * wn)).sum() / (tn * tp))


def auc_ci(labels, scores, groups=None, n_boot: int = 1000, seed: int = 0,
           level: float = 0.95) -> list[float] | None:
    """Bootstrap confidence interval of the ROC AUC, resampling *videos* (stratified by class).

    Faces of one video are not independent: the interval resamples whole videos with replacement, the reals
    and the fakes separately (so every resample has both classes, as pROC's stratified bootstrap; Efron &
    Tibshirani 1993, percentile interval), and computes the AUC with each face weighted by how often its
    video was drawn (the Mann-Whitney form with ties counted half, equal to scikit-learn's ``roc_auc_score``
    with ``sample_weight``; linear per resample after one sort, so 1000 resamples of 3M faces take seconds).

    Args:
        labels, scores: per face (or per video), 0/1 and fake probabilities.
        groups: per face, its video (any hashable ids); ``None`` = every row is its own video.
        n_boot: resamples.
        seed: numpy generator seed.
        level: coverage of the interval.

    Returns:
        ``[low, high]``, or ``None`` when a class has fewer than two videos (one video per class resamples
        to itself: the interval would be a point, not an uncertainty). A video holding faces of both labels
        (a fake video's untouched bystander) is drawn with the fake videos.
    """
    y, s = _check(labels, scores)
    if len(np.unique(y)) < 2:
        return None
    g = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    n_g = int(g.max()) + 1
    cls = np.zeros(n_g, np.int64)
    np.maximum.at(cls, g, y)
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(cls == c) for c in (0, 1)]
    if min(len(p) for p in pools) < 2:
        return None
    # faces in score order once: each resample then sums weights per distinct score over consecutive runs
    # (np.add.reduceat, sequential) instead of scattering into per-score bins (np.bincount, random writes whose
    # cache misses grew faster than the faces: 10 ns a face at 320k, 20 ns at 3.2M)
    order = np.argsort(s, kind="stable")
    s_sorted, g_sorted, pos = s[order], g[order], (y[order] == 1)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    stats = np.empty(n_boot)
    for b in range(n_boot):
        counts = np.zeros(n_g)
        for pool in pools:
            counts += np.bincount(rng.choice(pool, size=len(pool)), minlength=n_g)
        w = counts[g_sorted]
        wp = np.add.reduceat(np.where(pos, w, 0.0), starts)
        wn = np.add.reduceat(np.where(pos, 0.0, w), starts)
        tn, tp = wn.sum(), wp.sum()
        stats[b] = (wp * (np.cumsum(wn) - 0.5 * wn)).sum() / (tn * tp) if tn and tp else float("nan")
    a = (1 - level) / 2
    lo, hi = np.nanquantile(stats, [a, 1 - a])
    return [float(lo), float(hi)]


def roc_points(labels, scores) -> pl.DataFrame:
    """ROC curve as a table (fpr, tpr, threshold) for DVC plots; empty when one class is absent.

    Raises:
        ValueError: a label other than 0 and 1 (leave uncertain faces, label -1, out first).
    """
    y = np.asarray(labels)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"roc_points: labels must be 0 or 1, got {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    if len(np.unique(y)) < 2:
        return pl.DataFrame({"fpr": [], "tpr": [], "threshold": []}, schema={"fpr": pl.Float64, "tpr": pl.Float64,
                                                                              "threshold": pl.Float64})
    fpr, tpr, thr = roc_curve(y, np.asarray(scores))
    return pl.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})
