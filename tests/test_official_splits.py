"""Official test sets exactly as published, on trees with the real layouts (names, lists, metadata files; empty
files where only names matter): Celeb-DF v2's 518-video test list, DFDC's test = labels.csv, DeeperForensics'
FF++ targets against FF++'s splits. Each of these failed on the code before the protocols issue (21)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pytest

from facepipe.datasets import ManifestConfig, build_manifest
from facepipe.errors import InputError

CDF_LIST = Path(__file__).parent / "data" / "celebdf_v2" / "List_of_testing_videos.txt"
"""Celeb-DF v2's published ``List_of_testing_videos.txt`` (github.com/yuezunli/celeb-deepfakeforensics), as
released: 518 lines, 178 real (label 1) and 340 fake (label 0)."""


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.touch()


def _celebdf_v2_tree(root: Path) -> set[str]:
    """Every listed video, 59 celebrities x 10 Celeb-real videos, 300 YouTube-real, and for each Celeb-real video
    fakes with three donors (as Celeb-synthesis is made); returns the listed paths."""
    listed = {line.split()[1] for line in CDF_LIST.read_text().splitlines() if line.strip()}
    rels = set(listed) | {f"YouTube-real/{i:05d}.mp4" for i in range(300)}
    reals = {f"Celeb-real/id{a}_{k:04d}.mp4" for a in range(59) for k in range(10)}
    reals |= {p for p in listed if p.startswith("Celeb-real/")}
    for p in listed:  # the originals of listed fakes exist (most are unlisted: they are train videos)
        m = re.fullmatch(r"Celeb-synthesis/(id\d+)_id\d+_(\d+)\.mp4", p)
        if m:
            reals.add(f"Celeb-real/{m.group(1)}_{m.group(2)}.mp4")
    rels |= reals
    for r in sorted(reals):
        a, k = re.fullmatch(r"Celeb-real/id(\d+)_(\d+)\.mp4", r).groups()
        for b in (int(a) + 1, int(a) + 7, int(a) + 16):
            rels.add(f"Celeb-synthesis/id{a}_id{b % 59}_{k}.mp4")
    for rel in rels:
        _touch(root, rel)
    (root / "List_of_testing_videos.txt").write_text(CDF_LIST.read_text())
    return listed


def test_celebdf_v2_published_list_builds_with_exactly_its_518_test_videos(tmp_path, caplog):
    listed = _celebdf_v2_tree(tmp_path)
    assert len(listed) == 518
    assert "Celeb-real/id0_0001.mp4" in listed and "Celeb-synthesis/id0_id16_0001.mp4" not in listed
    report: dict = {}
    with caplog.at_level("WARNING"):
        df = build_manifest("celebdf_v2", tmp_path, "celebdf_v2", ManifestConfig(options={"val_fraction": "0.1"}),
                            report=report)
    test = df.filter(pl.col("split") == "test")
    assert set(test["path"]) == listed
    assert (test["label"] == 0).sum() == 178 and (test["label"] == 1).sum() == 340
    # the unlisted fake of a listed original would put test frames in train: left out, counted, reported
    assert "Celeb-synthesis/id0_id16_0001.mp4" not in set(df["path"])
    on_disk = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "Celeb-synthesis").iterdir()}
    leaking = {f for f in on_disk - listed
               if re.sub(r"Celeb-synthesis/(id\d+)_id\d+_(\d+)", r"Celeb-real/\1_\2", f) in listed}
    (reason, info), = report["excluded"].items()
    assert "test-listed original" in reason and info["n"] == len(leaking) > 300
    assert "left out by the official protocol" in caplog.text
    # no train or val fake has a test original; val holds both classes, carved by original
    split = dict(zip(df["video_id"], df["split"]))
    for srcs, s in df.filter(pl.col("label") == 1).select("source_ids", "split").iter_rows():
        assert not (s != "test" and split[srcs[0]] == "test")
    val = df.filter(pl.col("split") == "val")
    assert set(val["label"]) == {0, 1}
    n_trainval = df.filter(pl.col("split") != "test").height
    assert abs(val.height / n_trainval - 0.1) < 0.03
    for srcs, s in df.filter((pl.col("label") == 1) & (pl.col("split") != "test")).select("source_ids",
                                                                                         "split").iter_rows():
        assert split[srcs[0]] == s  # every fake in the split of its original


def _dfdc_tree(root: Path) -> tuple[set[str], dict]:
    """Two training parts with originals across parts and people recurring over originals; a public test set."""
    meta0, meta1 = {}, {}
    people = []
    for i in range(24):
        part = meta0 if i % 2 else meta1
        orig = f"orig{i:02d}.mp4"
        part[orig] = {"label": "REAL", "split": "train", "original": None}
        for k in range(3):
            (meta1 if k == 0 else meta0)[f"fake{i:02d}_{k}.mp4"] = {"label": "FAKE", "split": "train",
                                                                   "original": orig}
        people.append((orig, f"person{i // 2}"))  # originals 2j and 2j+1 show the same person
    for name, meta in (("dfdc_train_part_0", meta0), ("dfdc_train_part_1", meta1)):
        (root / name).mkdir(parents=True)
        (root / name / "metadata.json").write_text(json.dumps(meta))
        for f in meta:
            _touch(root / name, f)
    (root / "identities.csv").write_text("filename,identity\n" + "".join(f"{f},{p}\n" for f, p in people))
    test = {f"test/videos/t{i:03d}.mp4": i % 2 for i in range(20)}
    (root / "test" / "videos").mkdir(parents=True)
    (root / "test" / "labels.csv").write_text("filename,label\n" + "".join(
        f"{Path(p).name},{lab}\n" for p, lab in test.items()))
    for p in test:
        _touch(root, p)
    return set(test), {f: p for f, p in people}


def test_dfdc_test_split_is_labels_csv_and_training_parts_only_train_val(tmp_path):
    test, people = _dfdc_tree(tmp_path)
    df = build_manifest("dfdc", tmp_path, "dfdc", ManifestConfig(fractions=(0.8, 0.1, 0.1)))
    assert set(df.filter(pl.col("split") == "test")["path"]) == test
    parts = df.filter(pl.col("path").str.starts_with("dfdc_train_part_"))
    assert set(parts["split"]) == {"train", "val"}
    val = parts.filter(pl.col("split") == "val")
    assert set(val["label"]) == {0, 1}
    # a person's originals (and so their fakes) never straddle train and val
    split = dict(zip(df["path"].map_elements(lambda p: Path(p).name, return_dtype=pl.String), df["split"]))
    by_person: dict[str, set] = {}
    for f, p in people.items():
        by_person.setdefault(p, set()).add(split[f])
    assert all(len(s) == 1 for s in by_person.values()), by_person
    # group mode still re-splits everything (test included)
    grouped = build_manifest("dfdc", tmp_path, "dfdc", ManifestConfig(split_mode="group", max_group_share=1.0))
    assert set(grouped.filter(pl.col("split") == "test")["path"]) != test
    with pytest.raises(InputError, match="identities file not found"):
        build_manifest("dfdc", tmp_path, "dfdc", ManifestConfig(options={"identities": str(tmp_path / "no.csv")}))


def test_deeperforensics_test_targets_that_are_ffpp_train_videos_are_left_out(tmp_path):
    dfo, ff = tmp_path / "dfo", tmp_path / "ff"
    fakes = {"000_M101.mp4": "train", "001_M102.mp4": "test", "002_M103.mp4": "test", "003_M104.mp4": "val"}
    for name in fakes:
        _touch(dfo, f"manipulated_videos/end_to_end/{name}")
    (dfo / "lists" / "splits").mkdir(parents=True)
    for s in ("train", "val", "test"):
        (dfo / "lists" / "splits" / f"{s}.txt").write_text("".join(f"{n}\n" for n, sp in fakes.items() if sp == s))
    for t in ("000", "001", "002", "003", "010"):
        _touch(ff, f"original_sequences/youtube/c23/videos/{t}.mp4")
    (ff / "splits").mkdir(parents=True)
    # FF++'s own split: 001 is an FF++ train video, 002 an FF++ test video
    for s, pairs in (("train", [["001", "010"]]), ("val", [["003", "000"]]), ("test", [["002", "011"]])):
        (ff / "splits" / f"{s}.json").write_text(json.dumps(pairs))
    report: dict = {}
    cfg = ManifestConfig(options={"ffpp_root": str(ff)}, both_classes=False)
    df = build_manifest("deeperforensics", dfo, "dfo", cfg, report=report)
    test = df.filter(pl.col("split") == "test")
    assert sorted(test["video_id"]) == ["ffpp-c23-002", "manipulated_videos-end_to_end-002_M103"]
    (reason, info), = report["excluded"].items()
    assert "FF++ train video" in reason and info["n"] == 2  # the real 001 and the fake made on it
    kept = build_manifest("deeperforensics", dfo, "dfo",
                          cfg.model_copy(update={"options": {"ffpp_root": str(ff), "ffpp_overlap": "keep"}}))
    assert kept.filter(pl.col("split") == "test").height == 4
