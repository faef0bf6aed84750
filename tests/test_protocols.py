"""Each dataset's published protocol and the leakage checks that cannot be bypassed: Celeb-DF's test list as
published, FF++'s four methods, manifests that name originals by path, blank splits, stratified group splits."""

from __future__ import annotations

import polars as pl
import pytest

from facepipe.datasets import ManifestConfig, build_manifest, split_report
from facepipe.errors import InputError
from facepipe.manifest import read_manifest
from tests.test_datasets import (  # noqa: F401  (fixture 'tiny' below)
    _ffpp_tree,
    by_path,
    put,
    tiny,  # noqa: F401
)


def test_ffpp_default_is_the_four_benchmark_methods(tmp_path, tiny):  # noqa: F811
    _ffpp_tree(tmp_path, tiny)
    for m in ("Face2Face", "NeuralTextures", "FaceShifter"):
        for a, b in (("000", "003"), ("003", "000"), ("010", "011"), ("020", "021")):
            put(tmp_path, f"manipulated_sequences/{m}/c23/videos/{a}_{b}.mp4", tiny)
    df = build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig())
    assert set(df["method"]) == {"original", "Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    opt_in = build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig(methods=("FaceShifter",)))
    assert set(opt_in["method"]) == {"original", "FaceShifter"}
    fake = by_path(df)["manipulated_sequences/Deepfakes/c23/videos/010_011.mp4"]
    assert fake["source_ids"][0].endswith("-010")  # the target (frames) first: per-face labels compare with it


def _celebdf_published(root, tiny):  # noqa: F811
    """Like the real list: test fakes whose originals are not listed (they stay in train), shared celebrities."""
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", "Celeb-real/id1_0001.mp4",
                "Celeb-real/id2_0000.mp4", "Celeb-real/id3_0001.mp4", "Celeb-real/id4_0002.mp4",
                "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id1_id0_0001.mp4",
                "Celeb-synthesis/id2_id3_0000.mp4", "Celeb-synthesis/id4_id3_0002.mp4",
                "YouTube-real/00000.mp4", "YouTube-real/00001.mp4", "YouTube-real/00002.mp4"):
        put(root, rel, tiny)
    (root / "List_of_testing_videos.txt").write_text(
        "1 YouTube-real/00001.mp4\n1 Celeb-real/id1_0001.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n"
        "0 Celeb-synthesis/id1_id0_0001.mp4\n")


def test_celebdf_official_test_list_runs_as_published(tmp_path, tiny, caplog):  # noqa: F811
    _celebdf_published(tmp_path, tiny)
    with caplog.at_level("WARNING"):
        df = build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig())
    rows = by_path(df)
    fake = rows["Celeb-synthesis/id0_id1_0000.mp4"]  # its original id0_0000 is not in the list: train
    assert fake["split"] == "test" and rows["Celeb-real/id0_0000.mp4"]["split"] == "train"
    assert "original is not listed" in fake["protocol_note"]
    assert rows["Celeb-synthesis/id1_id0_0001.mp4"]["protocol_note"] is None  # id1_0001 is listed
    assert "1 fake(s) of the official protocol have their original in another split" in caplog.text
    assert "identities appear in more than one split (official protocol)" in caplog.text
    # the same crossing without the adapter's note is a leak, and strict identity checking still fails
    with pytest.raises(InputError, match="identity celebdf:id0 in cdf:test, cdf:train"):
        build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig(identity_leakage="error"))


def test_celebdf_val_carve_moves_whole_groups(tmp_path, tiny):  # noqa: F811
    _celebdf_published(tmp_path, tiny)
    for i in range(5, 11):  # more unlisted celebrities with a fake each (Celeb-DF v2's train has 5,299 fakes)
        put(tmp_path, f"Celeb-real/id{i}_0000.mp4", tiny)
        put(tmp_path, f"Celeb-synthesis/id{i}_id{i - 1}_0000.mp4", tiny)
    cfg = ManifestConfig(options={"val_fraction": "0.3"}, both_classes=False)
    df = build_manifest("celebdf_v2", tmp_path, "cdf", cfg)
    train_val = df.filter(pl.col("split") != "test")
    split_of = dict(zip(train_val["video_id"], train_val["split"]))
    # every fake sits in the split of its original (the groups carved whole); celebrities are not kept apart
    # (the published protocol shares them between train and test: see celebdf._carve_val)
    fakes = train_val.filter(pl.col("label") == 1)
    assert fakes.height == 8
    for r in fakes.iter_rows(named=True):
        original = r["source_ids"][0].split(":", 1)[-1]
        assert split_of[original] == r["split"], (r["video_id"], original, split_of)
    val = df.filter(pl.col("split") == "val")
    assert set(val["label"]) == {0, 1}, "val carved by original holds both classes"
    assert set(df.filter(pl.col("split") == "test")["path"]) == {
        "YouTube-real/00001.mp4", "Celeb-real/id1_0001.mp4", "Celeb-synthesis/id0_id1_0000.mp4",
        "Celeb-synthesis/id1_id0_0001.mp4"}  # the carve never touches the published test list


def _write_csv(path, rows):
    path.write_text("path,label,split,source_ids,identity_ids\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_read_manifest_cannot_be_bypassed(tmp_path):
    # sources given as paths (as the csv layout documents) are resolved: this leak was invisible before
    m = _write_csv(tmp_path / "m.csv", [("o.mp4", "real", "test", "", ""), ("f.mp4", "fake", "train", "o.mp4", "")])
    with pytest.raises(InputError, match=r"leakage.*x:f \(train\) from x:o \(test\)"):
        read_manifest(m, dataset="x")
    m = _write_csv(tmp_path / "m.csv", [("o.mp4", "real", "train", "", ""), ("f.mp4", "fake", "train", "o.mp4", "")])
    assert read_manifest(m, dataset="x").filter(pl.col("label") == 1)["source_ids"].to_list() == [["o"]]
    m = _write_csv(tmp_path / "m.csv", [("o.mp4", "real", "train", "", ""), ("f.mp4", "fake", "train", "gone.mp4", "")])
    with pytest.raises(InputError, match=r"source 'gone.mp4' of f.mp4 names no video of the manifest"):
        read_manifest(m, dataset="x")
    # blank or unknown splits are errors naming the rows (blank rows used to vanish from every shard)
    m = _write_csv(tmp_path / "m.csv", [("o.mp4", "real", "train", "", ""), ("p.mp4", "real", "", "", ""),
                                        ("q.mp4", "fake", " ", "", "")])
    with pytest.raises(InputError, match=r"blank split for 2 row\(s\): p.mp4, q.mp4"):
        read_manifest(m, dataset="x")
    m = _write_csv(tmp_path / "m.csv", [("o.mp4", "real", "training", "", "")])
    with pytest.raises(InputError, match=r"unknown split 'training' for 1 row\(s\): o.mp4"):
        read_manifest(m, dataset="x")
    # another dataset's video: kept as dataset:video_id, checked where both datasets meet (the shard stage)
    m = _write_csv(tmp_path / "m.csv", [("f.mp4", "fake", "train", "ffpp:original_000", "")])
    assert read_manifest(m, dataset="x")["source_ids"].to_list() == [["ffpp:original_000"]]


def test_group_splits_are_stratified_reported_and_checked(tmp_path, tiny):  # noqa: F811
    rows = []
    for i in range(60):  # 60 originals with two fakes each, 90 reals without fakes, no official split
        rows.append((f"o{i}.mp4", "real", "", "", f"p{i}"))
        rows += [(f"f{i}_{k}.mp4", "fake", "", f"o{i}.mp4", f"p{i}") for k in range(2)]
    rows += [(f"r{i}.mp4", "real", "", "", f"q{i}") for i in range(90)]
    for r in rows:
        put(tmp_path, r[0], tiny)
    _write_csv(tmp_path / "manifest.csv", rows)
    df = build_manifest("csv", tmp_path, "x", ManifestConfig(fractions=(0.7, 0.15, 0.15), seed=1))
    rep = split_report(df)
    overall = 120 / 270
    for s, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        n = rep[s]["real"] + rep[s]["fake"]
        assert abs(n / 270 - share) < 0.05, rep
        assert abs(rep[s]["fake"] / n - overall) < 0.12, rep  # stratified: each split keeps the class ratio
    split = dict(zip(df["video_id"], df["split"]))
    assert all(split[f"f{i}_{k}"] == split[f"o{i}"] for i in range(60) for k in range(2))
    # a val or test split without one class is refused
    reals_only = [(f"r{i}.mp4", "real", "", "", f"q{i}") for i in range(5)] + [("o0.mp4", "real", "", "", "p0"),
                                                                              ("f0_0.mp4", "fake", "", "o0.mp4", "p0")]
    _write_csv(tmp_path / "manifest.csv", reals_only)
    with pytest.raises(InputError, match=r"the (val|test) split has no fake video"):
        build_manifest("csv", tmp_path, "x", ManifestConfig(fractions=(0.4, 0.3, 0.3)))
    # one group too large to split is refused, naming its members
    chained = [("o0.mp4", "real", "", "", "p0")] + [(f"f0_{k}.mp4", "fake", "", "o0.mp4", "p0") for k in range(2)] \
        + [(f"r{i}.mp4", "real", "", "", "p0" if i < 4 else f"q{i}") for i in range(6)]
    _write_csv(tmp_path / "manifest.csv", chained)
    with pytest.raises(InputError, match=r"one group of 7 videos .* 78% of the 9 videos to split .*: o0.mp4, f0_0.mp4"):
        build_manifest("csv", tmp_path, "x", ManifestConfig())
