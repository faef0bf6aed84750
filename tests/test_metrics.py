"""Metrics checked against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from facepipe.errors import InputError
from facepipe.metrics import (
    accuracy,
    ap,
    auc,
    binary_metrics,
    eer,
    eer_nearest,
    metric_table,
    roc_points,
    video_scores,
)


def test_hand_computed_case():
    # reals 0.1 0.4 0.35, fakes 0.8 0.35 -> pairs (fake > real): 0.8 beats all 3; 0.35 beats 0.1, ties 0.35
    y = [0, 0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8, 0.35]
    m = binary_metrics(y, s)
    assert m["auc"] == pytest.approx((3 + 1 + 0.5) / 6)
    assert m["acc"] == pytest.approx(4 / 5)  # 0.35 fake predicted real
    assert (m["real_acc"], m["fake_acc"]) == (1.0, 0.5)
    # AP: ranking 0.8(F) 0.4(R) 0.35(F,R tie) 0.1(R): precision at recall 0.5 = 1, at recall 1 = 2/4 -> 0.75
    assert m["ap"] == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert (m["n"], m["n_real"], m["n_fake"]) == (5, 3, 2)


def test_eer_perfect_inverted_and_balanced():
    assert eer(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert eer(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    # scores: R .1 .3 .6, F .2 .5 .9 -> at threshold 0.5: FPR 1/3 (0.6), FNR 1/3 (0.2): EER 1/3
    assert eer(np.array([0, 0, 0, 1, 1, 1]), np.array([0.1, 0.3, 0.6, 0.2, 0.5, 0.9])) == pytest.approx(1 / 3)
    assert math.isnan(binary_metrics([1, 1], [0.2, 0.9])["auc"])


def _frames():
    return pl.DataFrame({
        "dataset": ["a"] * 6 + ["b"] * 2,
        "video_id": ["r1", "r1", "f1", "f1", "f2", "f2", "r2", "f3"],
        "label": [0, 0, 1, 1, 1, 1, 0, 1],
        "method": ["original", "original", "X", "X", "Y", "Y", "original", "Z"],
        "score": [0.1, 0.7, 0.2, 0.9, 0.6, 0.6, 0.3, 0.4],
    })


def test_video_aggregation():
    v = video_scores(_frames(), "mean")
    assert dict(zip(v["video_id"], v["score"])) == pytest.approx({"r1": 0.4, "f1": 0.55, "f2": 0.6, "r2": 0.3,
                                                                  "f3": 0.4})
    assert dict(zip(video_scores(_frames(), "max")["video_id"], video_scores(_frames(), "max")["score"]))["r1"] == 0.7
    assert video_scores(_frames(), "topk", k=1)["score"].to_list() == video_scores(_frames(), "max")["score"].to_list()
    with pytest.raises(InputError, match="different labels"):
        video_scores(_frames().with_columns(pl.Series("label", [0, 1, 1, 1, 1, 1, 0, 1])))


def test_metric_table_per_dataset_and_method():
    t = metric_table(_frames())
    assert t["video"]["n"] == 5 and t["frame"]["n"] == 8
    assert set(t["per_dataset"]) == {"a", "b"} and set(t["per_method"]) == {"X", "Y", "Z"}
    # method X in dataset a: fakes f1 (mean .55) vs reals of a (r1 .4): video AUC 1
    assert t["per_method"]["X"]["video"]["auc"] == 1.0 and t["per_method"]["X"]["video"]["n"] == 2
    assert t["per_dataset"]["b"]["video"]["auc"] == 1.0  # f3 .4 > r2 .3
    roc = roc_points(_frames()["label"], _frames()["score"])
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and (roc["threshold"] <= 1).all()


def test_eer_is_the_interpolated_crossing_on_many_random_cases():
    """The standard EER: brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1) (the old search looked only to the
    right of the nearest ROC point and missed the crossing in about a third of these cases)."""
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(0)
    off_nearest = 0
    for _ in range(300):
        n = int(rng.integers(6, 60))
        y = rng.integers(0, 2, n)
        if len(set(y)) < 2:
            continue
        s = rng.normal(size=n) + rng.uniform(0, 2) * y
        fpr, tpr, _ = roc_curve(y, s)
        roc = interp1d(fpr, tpr)
        ref = brentq(lambda x, roc=roc: 1.0 - x - roc(x), 0.0, 1.0)
        assert eer(y, s) == pytest.approx(ref, abs=1e-9)
        nearest = fpr[np.nanargmin(np.abs((1 - tpr) - fpr))]  # DeepfakeBench training/metrics/utils.py
        assert eer_nearest(y, s) == nearest
        off_nearest += abs(nearest - ref) > 1e-9
    assert off_nearest > 50  # the two definitions really differ: report them under their own names


def test_public_metric_functions():
    y, s = np.array([0, 0, 1, 1, 1]), np.array([0.2, 0.6, 0.4, 0.7, 0.9])
    assert auc(y, s) == pytest.approx(5 / 6) and ap(y, s) == pytest.approx((1 + 1 + 0.75) / 3)
    assert accuracy(y, s) == {"acc": 0.6, "real_acc": 0.5, "fake_acc": pytest.approx(2 / 3)}
    m = binary_metrics(y, s)
    assert m["eer_nearest"] == eer_nearest(y, s) and m["eer"] == eer(y, s)


def test_video_level_uses_the_video_label_when_faces_carry_their_own():
    f = _frames().with_columns(pl.col("label").alias("video_label"))
    f = f.with_columns(pl.when(pl.col("score") == 0.2).then(0).otherwise(pl.col("label")).alias("label"))  # a real
    v = video_scores(f)                                                            # bystander in fake video f1
    assert dict(zip(v["video_id"], v["label"]))["f1"] == 1
    t = metric_table(f)
    assert t["frame"]["n_real"] == 4 and t["video"]["n_fake"] == 3


def _df40_frames() -> pl.DataFrame:
    """FF++ and Celeb-DF test reals; DF40 fakes of one method in both domains, no DF40 reals (as published)."""
    rows = []
    for i in range(4):
        rows.append(("ffpp", f"r{i}", 0, "original", 0.1 + 0.05 * i, None))
        rows.append(("celebdf", f"c{i}", 0, "original", 0.5 + 0.05 * i, None))
        rows.append(("df40", f"simswap-ff-{i}", 1, "simswap", 0.6 + 0.05 * i, "ffpp"))
        rows.append(("df40", f"simswap-cdf-{i}", 1, "simswap", 0.45 + 0.1 * i, "celebdf"))
    return pl.DataFrame(rows, schema=["dataset", "video_id", "label", "method", "score", "reference"], orient="row")


def test_df40_fakes_are_scored_against_their_reference_reals():
    t = metric_table(_df40_frames())
    df40 = t["per_dataset"]["df40"]
    assert df40["reference_reals"] == ["celebdf", "df40", "ffpp"]
    assert df40["video"]["n_real"] == 8 and df40["video"]["n_fake"] == 8 and not math.isnan(df40["video"]["auc"])
    ff, cdf = t["per_method"]["simswap@ffpp"], t["per_method"]["simswap@celebdf"]
    assert ff["video"]["auc"] == 1.0 and ff["video"]["n_real"] == 4  # only FF++ reals
    # cdf fakes 0.45 0.55 0.65 0.75 vs Celeb-DF reals 0.5 0.55 0.6 0.65: (0 + 1.5 + 3.5 + 4) / 16
    assert cdf["video"]["auc"] == pytest.approx(9 / 16) and cdf["reference_reals"] == ["celebdf"]
    # a protocol's mapping overrides the data's own reference: every DF40 fake against FF++ reals
    forced = metric_table(_df40_frames(), reference_reals={"df40": "ffpp"})
    assert list(forced["per_method"]) == ["simswap"] and forced["per_method"]["simswap"]["reference_reals"] == ["ffpp"]


def test_deepfakebench_aggregation_keeps_the_largest_face_per_frame():
    f = pl.DataFrame({"dataset": ["d"] * 4, "video_id": ["v"] * 4, "label": [1] * 4, "method": ["m"] * 4,
                      "frame_index": [0, 0, 1, 1], "face_size": [100.0, 30.0, 20.0, 90.0],
                      "score": [0.9, 0.1, 0.0, 0.7]})
    assert video_scores(f, "deepfakebench")["score"][0] == pytest.approx(0.8)
    assert video_scores(f, "mean")["score"][0] == pytest.approx(0.425)
    with pytest.raises(InputError, match="needs per-face frame_index and face_size"):
        video_scores(f.drop("face_size"), "deepfakebench")


def test_uncertain_faces_are_left_out_of_frame_metrics_only():
    f = pl.DataFrame({"dataset": ["d"] * 4, "video_id": ["a", "a", "b", "b"], "label": [0, 0, 1, 0],
                      "video_label": [0, 0, 1, 1], "method": ["original", "original", "m", "m"],
                      "label_source": ["video", "video", "original_diff", "original_diff_uncertain"],
                      "score": [0.2, 0.3, 0.9, 0.95]})
    t = metric_table(f)
    assert t["frame"]["n"] == 3 and t["frame"]["auc"] == 1.0  # counted as a real, the uncertain 0.95 gives 2/3
    assert t["video"]["n"] == 2 and t["video"]["auc"] == 1.0  # video level scores every face of video b


def test_weighted_auc_equals_scikit_learn_with_sample_weights():
    from sklearn.metrics import roc_auc_score

    from facepipe.metrics import weighted_auc

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        y[:2] = [0, 1]
        s = rng.integers(0, 10, 50) / 10  # many ties
        w = rng.integers(0, 4, 50).astype(float)
        w[:2] = 1
        lv = np.unique(s, return_inverse=True)[1]
        assert weighted_auc(lv, int(lv.max()) + 1, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w))


def test_bootstrap_ci_matches_delong_variance_and_resamples_videos():
    from facepipe.metrics import auc_ci

    rng = np.random.default_rng(1)
    neg, pos = rng.normal(0, 1, 150), rng.normal(1, 1, 120)
    y = np.r_[np.zeros(150), np.ones(120)].astype(int)
    s = np.r_[neg, pos]
    # DeLong et al. 1988: placement values give the AUC's variance in closed form
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(1), psi.mean(0)
    se = math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))
    lo, hi = auc_ci(y, s, n_boot=2000, seed=0)
    assert lo < auc(y, s) < hi
    assert (hi - lo) == pytest.approx(2 * 1.959964 * se, rel=0.15)
    assert auc_ci(y, s, n_boot=200, seed=3) == auc_ci(y, s, n_boot=200, seed=3)  # seeded
    assert auc_ci([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_boot=50) == [1.0, 1.0]
    assert auc_ci([1, 1], [0.1, 0.9]) is None
    assert auc_ci([0, 1, 1], [0.1, 0.9, 0.8]) is None  # one real video: no interval, not a point
    # faces of a video move together: 10 identical faces per video give the interval of one face per video
    g = np.repeat(np.arange(len(y)), 10)
    assert auc_ci(np.repeat(y, 10), np.repeat(s, 10), g, n_boot=300, seed=5) == pytest.approx(
        auc_ci(y, s, None, n_boot=300, seed=5))


def test_roc_tables_leave_uncertain_faces_out_of_the_frame_curve():
    """A test split with an uncertain face (label -1) made evaluate's frame ROC raise sklearn's "multiclass format is
    not supported" (found by scripts/bench_scale.py); the frame curve counts decided faces only, as the metrics do."""
    from facepipe.metrics import roc_points
    from facepipe.stages.evaluate import roc_tables

    preds = pl.DataFrame({"dataset": ["d"] * 6, "video_id": ["r", "r", "f", "f", "f", "g"],
                          "label": [0, 0, 1, -1, 1, 1], "video_label": [0, 0, 1, 1, 1, 1],
                          "method": [None, None, "m", "m", "m", "m"], "score": [0.1, 0.3, 0.8, 0.2, 0.7, 0.6]})
    tables = roc_tables(preds)
    assert tables["roc_frame.csv"].height > 0 and tables["roc_video.csv"].height > 0
    decided = preds.filter(pl.col("label") >= 0)
    assert tables["roc_frame.csv"].equals(roc_points(decided["label"], decided["score"]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_points(preds["label"], preds["score"])


def test_the_empty_mask_is_encoded_once_per_size(monkeypatch):
    from facepipe.data import schema

    calls = []
    real = schema._png_zeros
    monkeypatch.setattr(schema, "_png_zeros", lambda size: calls.append(size) or real(size))
    monkeypatch.setattr(schema, "_EMPTY_MASKS", {})
    assert schema.empty_mask_png(24) == schema.empty_mask_png(24) == real(24)
    assert calls == [24]


def test_auc_ci_equals_the_per_resample_weighted_auc():
    """auc_ci sums each resample's weights over faces sorted once by score; the interval equals the one computed with
    weighted_auc (scikit-learn's weighted AUC, test above) on the same resamples, ties included."""
    from facepipe.metrics import auc_ci, weighted_auc

    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(60), 5)
    y = (g % 3 == 0).astype(int)
    s = np.round(rng.random(len(g)) * 0.5 + 0.3 * y, 2)  # rounded: many ties
    got = auc_ci(y, s, g, n_boot=200, seed=7)
    level_of = np.unique(s, return_inverse=True)[1]
    draw = np.random.default_rng(7)
    pools = [np.flatnonzero(np.bincount(g, weights=y) == 0), np.flatnonzero(np.bincount(g, weights=y) > 0)]
    stats = []
    for _ in range(200):
        counts = np.zeros(60)
        for pool in pools:
            counts += np.bincount(draw.choice(pool, size=len(pool)), minlength=60)
        stats.append(weighted_auc(level_of, int(level_of.max()) + 1, y, counts[g]))
    assert got == pytest.approx(list(np.nanquantile(stats, [0.025, 0.975])), abs=1e-12)
