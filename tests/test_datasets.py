"""Dataset adapters on synthetic trees that mimic each published layout (tiny real videos made here),
FF++ and DFDC on the shared real clips, leakage checks, and extract driven by a manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import polars as pl
import pytest

from facepipe.datasets import ManifestConfig, build_manifest, get_adapter, list_adapters
from facepipe.errors import InputError
from facepipe.stages.example import camera_frames, write_video
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from tests.conftest import REAL, needs_real


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, t1) -> Path:
    """A 6-frame 96x64 H.264 clip over a face of t1 (copied to every name a layout needs)."""
    p = tmp_path_factory.mktemp("tiny") / "tiny.mp4"
    write_video(p, camera_frames(t1, (96, 64), 6, (515, 300, 0.5), (520, 305, 0.5)), fps=10)
    return p


def put(root: Path, rel: str, src: Path) -> None:
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def by_path(df: pl.DataFrame) -> dict[str, dict]:
    return {r["path"]: r for r in df.iter_rows(named=True)}


def test_every_adapter_documents_its_layout():
    names = {a.name for a in list_adapters()}
    assert {"ffpp", "celebdf_v1", "celebdf_v2", "dfdc", "dfdc_preview", "deeperforensics", "dfd", "uadfv",
            "wilddeepfake", "df40", "folder", "csv"} <= names
    for a in list_adapters():
        assert "ROOT" in a.layout, a.name
    with pytest.raises(InputError, match="did you mean ffpp"):
        get_adapter("ffp")


def _ffpp_tree(root: Path, tiny: Path, comps=("c23",)) -> None:
    for comp in comps:
        for v in ("000", "003", "010", "011", "020", "021"):
            put(root, f"original_sequences/youtube/{comp}/videos/{v}.mp4", tiny)
        for m in ("Deepfakes", "FaceSwap"):
            for a, b in (("000", "003"), ("003", "000"), ("010", "011"), ("020", "021")):
                put(root, f"manipulated_sequences/{m}/{comp}/videos/{a}_{b}.mp4", tiny)
    put(root, "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4", tiny)
    (root / "splits").mkdir()
    for s, pairs in (("train", [["000", "003"]]), ("val", [["010", "011"]]), ("test", [["020", "021"]])):
        (root / "splits" / f"{s}.json").write_text(json.dumps(pairs))


def test_ffpp_official_pairs_keep_fakes_with_both_originals(tmp_path, tiny):
    _ffpp_tree(tmp_path, tiny, comps=("c23", "c40"))
    df = build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig(methods=("Deepfakes", "FaceSwap")))
    rows = by_path(df)
    assert len(rows) == 6 + 8 and set(df["compression"]) == {"c23"}  # c40 left out
    fake = rows["manipulated_sequences/FaceSwap/c23/videos/000_003.mp4"]
    assert fake["label"] == 1 and fake["method"] == "FaceSwap" and fake["split"] == "train"
    assert fake["source_ids"] == ["original_sequences-youtube-c23-videos-000",
                                  "original_sequences-youtube-c23-videos-003"]
    assert rows["original_sequences/youtube/c23/videos/011.mp4"]["split"] == "val"
    assert rows["manipulated_sequences/Deepfakes/c23/videos/020_021.mp4"]["split"] == "test"
    mask = rows["manipulated_sequences/Deepfakes/c23/videos/000_003.mp4"]["mask_path"]
    assert mask == "manipulated_sequences/Deepfakes/masks/videos/000_003.mp4"
    assert rows["original_sequences/youtube/c23/videos/000.mp4"]["method"] == "original"


def test_ffpp_bad_inputs(tmp_path, tiny):
    _ffpp_tree(tmp_path, tiny)
    (tmp_path / "splits" / "val.json").unlink()
    with pytest.raises(InputError, match=r"split files missing: expected train.json, val.json, test.json"):
        build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig())
    grouped = build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig(split_mode="group"))
    split = dict(zip(grouped["path"], grouped["split"]))
    for p, srcs in zip(grouped["path"], grouped["source_ids"]):
        for s in srcs:  # grouped: every fake with its originals
            assert split[p] == split["/".join(["original_sequences", "youtube", "c23", "videos", s.rsplit("-", 1)[1]])
                                     + ".mp4"]
    with pytest.raises(InputError, match=r"not a ffpp layout: no videos in original_sequences/youtube/c23/videos"
                                         r"(.|\n)*expected:(.|\n)*target_source"):
        build_manifest("ffpp", tmp_path / "manipulated_sequences", "ffpp", ManifestConfig())


@needs_real
def test_ffpp_adapter_on_the_shared_clips(tmp_path):
    """The shared FF++ c23 clips arranged (symlinks) in FF++'s layout with the official split entries."""
    link = lambda src, rel: (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True) or os.symlink(  # noqa: E731
        REAL / "videos" / "ffpp" / src, tmp_path / rel)
    link("original_634.mp4", "original_sequences/youtube/c23/videos/634.mp4")
    link("original_004.mp4", "original_sequences/youtube/c23/videos/004.mp4")
    link("FaceSwap_634_660.mp4", "manipulated_sequences/FaceSwap/c23/videos/634_660.mp4")
    link("NeuralTextures_004_982.mp4", "manipulated_sequences/NeuralTextures/c23/videos/004_982.mp4")
    (tmp_path / "splits").mkdir()
    for s, pairs in (("train", []), ("val", [["004", "982"]]), ("test", [["634", "660"]])):
        (tmp_path / "splits" / f"{s}.json").write_text(json.dumps(pairs))
    with pytest.raises(InputError, match=r"634_660.mp4: fake whose original .*660.mp4 is missing"):
        build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig())  # 660 and 982 are not in the shared set
    df = build_manifest("ffpp", tmp_path, "ffpp", ManifestConfig(missing_originals="warn"))
    got = {Path(p).name: (lab, m, s) for p, lab, m, s in df.select("path", "label", "method", "split").iter_rows()}
    assert got == {"634.mp4": (0, "original", "test"), "004.mp4": (0, "original", "val"),
                   "634_660.mp4": (1, "FaceSwap", "test"), "004_982.mp4": (1, "NeuralTextures", "val")}


def test_dfd_actors_default_to_test_and_group_mode(tmp_path, tiny):
    for rel in ("original_sequences/actors/c23/videos/01__kitchen_pan.mp4",
                "original_sequences/actors/c23/videos/02__kitchen_pan.mp4",
                "original_sequences/actors/c23/videos/03__podium.mp4",
                "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__kitchen_pan__ABCD1234.mp4"):
        put(tmp_path, rel, tiny)
    df = build_manifest("dfd", tmp_path, "dfd", ManifestConfig())
    assert set(df["split"]) == {"test"}
    fake = df.filter(pl.col("label") == 1).row(0, named=True)
    assert fake["identity_ids"] == ["actor01", "actor02"]
    from facepipe.ids import video_id_for

    assert fake["source_ids"] == [video_id_for("original_sequences/actors/c23/videos/01__kitchen_pan.mp4")]
    assert "__" not in fake["source_ids"][0]
    # the layout text promises it: a grouped split fails when one group is too large to honour the fractions
    with pytest.raises(InputError, match=r"one group of 3 videos .* is 75% of the 4 videos to split"):
        build_manifest("dfd", tmp_path, "dfd", ManifestConfig(split_mode="group", fractions=(1, 1, 1)))
    g = by_path(build_manifest("dfd", tmp_path, "dfd", ManifestConfig(split_mode="group", fractions=(1, 1, 1),
                                                                      max_group_share=0.8, both_classes=False)))
    linked = {g[p]["split"] for p in g if "kitchen_pan" in p}
    assert len(linked) == 1  # actors 01 and 02 are linked by the fake: one split


def _celebdf_tree(root: Path, tiny: Path) -> None:
    for rel in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", "Celeb-real/id2_0001.mp4",
                "Celeb-synthesis/id0_id1_0000.mp4", "Celeb-synthesis/id2_id3_0001.mp4", "YouTube-real/00000.mp4",
                "YouTube-real/00001.mp4"):
        put(root, rel, tiny)
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id2_0001.mp4\n0 Celeb-synthesis/id2_id3_0001.mp4\n1 YouTube-real/00001.mp4\n")


def test_celebdf_test_list_and_train_is_the_rest(tmp_path, tiny):
    _celebdf_tree(tmp_path, tiny)
    rows = by_path(build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig()))
    assert rows["Celeb-synthesis/id2_id3_0001.mp4"]["split"] == "test"
    assert rows["Celeb-synthesis/id2_id3_0001.mp4"]["label"] == 1  # the list's 0 means fake
    assert rows["YouTube-real/00001.mp4"] == {**rows["YouTube-real/00001.mp4"], "split": "test", "label": 0}
    assert rows["Celeb-synthesis/id0_id1_0000.mp4"]["split"] == "train"
    assert rows["Celeb-synthesis/id0_id1_0000.mp4"]["source_ids"] == ["Celeb-real-id0_0000"]


def test_celebdf_identity_leak_fails_unless_accepted(tmp_path, tiny):
    _celebdf_tree(tmp_path, tiny)
    put(tmp_path, "Celeb-real/id2_0002.mp4", tiny)  # id2 now also in train: the official protocol leaks
    with pytest.raises(InputError, match="identity celebdf:id2 in cdf:test, cdf:train"):
        build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig(identity_leakage="error", both_classes=False))
    # the official protocol as published: identity overlap reported, not an error (identity_leakage: auto)
    df = build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig(both_classes=False))
    assert df.height == 8
    regroup = build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig(split_mode="group", both_classes=False,
                                                                            max_group_share=1.0))
    assert regroup.height == 8  # leak-free re-split exists
    (tmp_path / "List_of_testing_videos.txt").write_text("0 Celeb-real/id2_0001.mp4\n")
    with pytest.raises(InputError, match="conflicts with its folder Celeb-real"):
        build_manifest("celebdf_v2", tmp_path, "cdf", ManifestConfig(identity_leakage="warn", both_classes=False))


def test_dfdc_parts_originals_across_parts_and_test_labels(tmp_path, tiny):
    for rel in ("dfdc_train_part_0/aaa.mp4", "dfdc_train_part_0/bbb.mp4", "dfdc_train_part_1/ccc.mp4",
                "dfdc_train_part_1/ddd.mp4", "test/t1.mp4", "test/t2.mp4"):
        put(tmp_path, rel, tiny)
    (tmp_path / "dfdc_train_part_0" / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbb.mp4": {"label": "FAKE", "split": "train", "original": "ccc.mp4"}}))
    (tmp_path / "dfdc_train_part_1" / "metadata.json").write_text(json.dumps({
        "ccc.mp4": {"label": "REAL", "split": "train", "original": None},
        "ddd.mp4": {"label": "FAKE", "split": "train", "original": "ccc.mp4"},
        "gone.mp4": {"label": "FAKE", "split": "train", "original": "ccc.mp4"}}))
    (tmp_path / "test" / "labels.csv").write_text("filename,label\nt1.mp4,1\nt2.mp4,0\n")
    tiny_cfg = ManifestConfig(fractions=(1, 1, 0), max_group_share=1.0, both_classes=False)
    with pytest.raises(InputError, match=r"dfdc_train_part_1/gone.mp4: listed but missing \(1 missing files\)"):
        build_manifest("dfdc", tmp_path, "dfdc", tiny_cfg)
    rows = by_path(build_manifest("dfdc", tmp_path, "dfdc", tiny_cfg.model_copy(update={"missing_files": "warn"})))
    assert rows["dfdc_train_part_0/bbb.mp4"]["source_ids"] == ["dfdc_train_part_1-ccc"]
    assert rows["dfdc_train_part_0/bbb.mp4"]["split"] == rows["dfdc_train_part_1/ccc.mp4"]["split"] \
        == rows["dfdc_train_part_1/ddd.mp4"]["split"]
    assert rows["test/t1.mp4"]["label"] == 1 and rows["test/t1.mp4"]["split"] == "test"
    assert "dfdc_train_part_1/gone.mp4" not in rows  # listed in metadata, not downloaded: counted and skipped
    (tmp_path / "dfdc_train_part_1" / "metadata.json").write_text(json.dumps({
        "ccc.mp4": {"label": "REAL"}, "ddd.mp4": {"label": "FAKE", "original": "ccc.mp4"},
        "bbb.mp4": {"label": "REAL"}}))
    with pytest.raises(InputError, match="bbb.mp4 labelled REAL here and FAKE"):
        build_manifest("dfdc", tmp_path, "dfdc", ManifestConfig())


@needs_real
def test_dfdc_adapter_on_the_shared_metadata(tmp_path):
    part = tmp_path / "dfdc_train_part_0"
    part.mkdir()
    shutil.copyfile(REAL / "labels" / "dfdc_train_part_0_metadata.json", part / "metadata.json")
    os.symlink(REAL / "videos" / "dfdc" / "brtujopkby.mp4", part / "brtujopkby.mp4")
    # the shared metadata names two videos; only one is here: an error naming the other, unless asked to skip
    with pytest.raises(InputError, match=r"dfdc_train_part_0/awnfpubqmo.mp4: listed but missing \(1 missing files"):
        build_manifest("dfdc", tmp_path, "dfdc", ManifestConfig())
    cfg = ManifestConfig(missing_files="warn", both_classes=False)
    with pytest.raises(InputError, match="brtujopkby.mp4: fake whose original .*gnmmhlbzge.mp4 is missing"):
        build_manifest("dfdc", tmp_path, "dfdc", cfg)
    df = build_manifest("dfdc", tmp_path, "dfdc", cfg.model_copy(update={"missing_originals": "warn"}))
    assert df.select("path", "label", "method").rows() == [("dfdc_train_part_0/brtujopkby.mp4", 1, "DFDC")]


def test_dfdc_preview(tmp_path, tiny):
    meta = {"original_videos/111/111_A.mp4": {"label": "real", "set": "train"},
            "method_A/111/111_A/222_A_001.mp4": {"label": "fake", "set": "train", "target_id": "111"},
            "original_videos/333/333_B.mp4": {"label": "real", "set": "test"}}
    for rel in meta:
        put(tmp_path, rel, tiny)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    rows = by_path(build_manifest("dfdc_preview", tmp_path, "prev", ManifestConfig(both_classes=False)))
    assert rows["method_A/111/111_A/222_A_001.mp4"]["method"] == "method_A"
    assert rows["original_videos/333/333_B.mp4"]["split"] == "test"


def test_deeperforensics_reals_are_the_ffpp_c23_targets(tmp_path, tiny):
    """DeeperForensics' README: the real class is the FF++ C23 target videos; the actors' recordings are sources."""
    dfo, ff = tmp_path / "dfo", tmp_path / "ff"
    for rel in ("manipulated_videos/end_to_end/000_M101.mp4", "manipulated_videos/end_to_end/001_M102.mp4",
                "source_videos/M101/light_uniform/front.mp4", "source_videos/M102/light_uniform/front.mp4"):
        put(dfo, rel, tiny)
    for t in ("000", "001"):
        put(ff, f"original_sequences/youtube/c23/videos/{t}.mp4", tiny)
    (dfo / "lists" / "splits").mkdir(parents=True)
    (dfo / "lists" / "splits" / "train.txt").write_text("000_M101.mp4\n")
    (dfo / "lists" / "splits" / "val.txt").write_text("")
    (dfo / "lists" / "splits" / "test.txt").write_text("001_M102.mp4\n")
    with pytest.raises(InputError, match=r"real class is the FF\+\+ C23 target videos .*ffpp_root"):
        build_manifest("deeperforensics", dfo, "dfo", ManifestConfig())
    cfg = ManifestConfig(options={"ffpp_root": str(ff)})
    df = build_manifest("deeperforensics", dfo, "dfo", cfg)
    rows = {r["video_id"]: r for r in df.iter_rows(named=True)}
    assert rows["ffpp-c23-001"]["label"] == 0 and rows["ffpp-c23-001"]["split"] == "test"
    assert rows["ffpp-c23-001"]["path"] == str((ff / "original_sequences/youtube/c23/videos/001.mp4").resolve())
    fake = rows["manipulated_videos-end_to_end-001_M102"]
    assert fake["method"] == "DeeperForensics-end_to_end" and fake["source_ids"] == ["ffpp-c23-001"]
    assert "yt001" in fake["identity_ids"]  # the same identity the ffpp adapter gives video 001
    assert not any("source_videos" in p for p in df["path"])  # the actors' recordings are not the real class
    with_src = build_manifest("deeperforensics", dfo, "dfo", ManifestConfig(
        options={"ffpp_root": str(ff), "source_videos": "include"}, both_classes=False))
    assert set(with_src.filter(pl.col("method") == "actor_source")["label"]) == {0}
    (dfo / "lists" / "splits" / "test.txt").unlink()
    with pytest.raises(InputError, match=r"test.txt: DeeperForensics split file missing"):
        build_manifest("deeperforensics", dfo, "dfo", cfg)


def test_uadfv_pairs_stay_together(tmp_path, tiny):
    for i in range(6):
        put(tmp_path, f"real/{i:04d}.mp4", tiny)
        put(tmp_path, f"fake/{i:04d}_fake.mp4", tiny)
    df = build_manifest("uadfv", tmp_path, "uadfv", ManifestConfig(fractions=(1, 1, 1)))
    rows = by_path(df)
    for i in range(6):
        assert rows[f"real/{i:04d}.mp4"]["split"] == rows[f"fake/{i:04d}_fake.mp4"]["split"]
    assert set(df["split"]) == {"train", "val", "test"}


def _seq(root: Path, rel: str, t1, n=4) -> None:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    face = cv2.cvtColor(t1[230:420, 420:610], cv2.COLOR_RGB2BGR)  # Ross's face, roughly
    for i in range(n):
        cv2.imwrite(str(d / f"{i}.png"), face)


def test_wilddeepfake_sequences_and_extract_reads_them(tmp_path, t1):
    _seq(tmp_path, "real_train/7/1", t1)
    _seq(tmp_path, "fake_test/9/2", t1)
    df = build_manifest("wilddeepfake", tmp_path, "wdf", ManifestConfig(both_classes=False))
    assert df.select("path", "label", "split").rows() == [("fake_test/9/2", 1, "test"), ("real_train/7/1", 0, "train")]
    man = tmp_path / "m.parquet"
    df.write_parquet(man)
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 3}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "workers": 0})
    run_extract(tmp_path, tmp_path / "out", cfg, progress=False, manifest=man)
    v = pl.read_parquet(tmp_path / "out" / "videos.parquet")
    assert set(v["status"]) == {"ok"} and set(v["codec"]) == {"images"} and set(v["frames_sampled"]) == {3}
    assert set(v["video_id"]) == set(df["video_id"])


def _df40_json(root: Path, name: str, label_prefix: str, entries: dict[str, tuple[str, str]]) -> None:
    """entries: video -> (split, Real|Fake), in DeepfakeBench's dataset JSON structure."""
    doc: dict = {name: {}}
    for video, (split, kind) in entries.items():
        doc[name].setdefault(f"{label_prefix}_{kind}", {}).setdefault(split, {})[video] = {
            "label": f"{label_prefix}_{kind}", "frames": [f"/somewhere/{video}/000.png"]}
    (root / "dataset_json").mkdir(parents=True, exist_ok=True)
    (root / "dataset_json" / f"{name}.json").write_text(json.dumps(doc))


def test_df40_known_and_unknown_methods_and_json_splits(tmp_path, tiny, t1):
    put(tmp_path, "simswap/ff/000_003.mp4", tiny)
    put(tmp_path, "simswap/ff/004_005.mp4", tiny)
    _seq(tmp_path, "e4s/cdf/id0_id1_0000", t1, n=2)
    put(tmp_path, "heygen/fake/clip_a.mp4", tiny)   # an 'unknown' method with its own real data
    put(tmp_path, "heygen/real/clip_b.mp4", tiny)
    _df40_json(tmp_path, "simswap_ff", "roop", {"000_003": ("test", "Fake"), "004_005": ("train", "Fake")})
    _df40_json(tmp_path, "e4s_cdf", "e4s", {"id0_id1_0000": ("test", "Fake")})
    _df40_json(tmp_path, "heygen", "heygen", {"clip_a": ("test", "Fake"), "clip_b": ("test", "Real")})
    rows = by_path(build_manifest("df40", tmp_path, "df40", ManifestConfig(both_classes=False)))
    assert rows["simswap/ff/000_003.mp4"]["split"] == "test" and rows["simswap/ff/004_005.mp4"]["split"] == "train"
    assert rows["e4s/cdf/id0_id1_0000"]["method"] == "e4s"
    assert rows["heygen/real/clip_b.mp4"]["label"] == 0 and rows["heygen/real/clip_b.mp4"]["method"] == "original"
    assert rows["heygen/fake/clip_a.mp4"]["label"] == 1
    # fakes link to the FF++ / Celeb-DF originals they were made from (checked by the shard stage)
    assert rows["simswap/ff/000_003.mp4"]["source_ids"] == ["ffpp:original_sequences-youtube-c23-videos-000"]
    assert rows["simswap/ff/000_003.mp4"]["identity_ids"] == ["yt000", "yt003"]
    assert rows["e4s/cdf/id0_id1_0000"]["source_ids"] == ["celebdf:Celeb-real-id0_0000"]
    # no official split for a video: an error naming it; a JSON disagreeing with the folder: an error
    put(tmp_path, "simswap/ff/010_011.mp4", tiny)
    with pytest.raises(InputError, match=r"simswap/ff/010_011.mp4: in none of DF40's split lists"):
        build_manifest("df40", tmp_path, "df40", ManifestConfig(both_classes=False))
    (tmp_path / "simswap" / "ff" / "010_011.mp4").unlink()
    _df40_json(tmp_path, "heygen", "heygen", {"clip_a": ("test", "Fake"), "clip_b": ("test", "Fake")})
    with pytest.raises(InputError, match=r"clip_b.mp4: DF40 lists it as fake, its folder heygen/real/ says real"):
        build_manifest("df40", tmp_path, "df40", ManifestConfig(both_classes=False))


def test_folder_layout_with_and_without_splits(tmp_path, tiny):
    put(tmp_path / "a", "real/x.mp4", tiny)
    put(tmp_path / "a", "fake/Deepfakes/y.mp4", tiny)
    put(tmp_path / "a", "fake/z.mp4", tiny)
    rows = by_path(build_manifest("folder", tmp_path / "a", "a", ManifestConfig()))
    assert (rows["fake/Deepfakes/y.mp4"]["method"], rows["fake/z.mp4"]["method"]) == ("Deepfakes", "fake")
    put(tmp_path / "b", "train/real/x.mp4", tiny)
    put(tmp_path / "b", "test/fake/y.mp4", tiny)
    rows = by_path(build_manifest("folder", tmp_path / "b", "b", ManifestConfig(both_classes=False)))
    assert rows["train/real/x.mp4"]["split"] == "train" and rows["test/fake/y.mp4"]["split"] == "test"
    with pytest.raises(InputError, match="neither real/ nor fake/(.|\n)*expected"):
        build_manifest("folder", tmp_path / "b" / "train" / "real", "c", ManifestConfig())


def test_planted_leaks_are_caught(tmp_path, tiny):
    for n in ("o.mp4", "f.mp4", "p.mp4", "q.mp4"):
        put(tmp_path, n, tiny)
    (tmp_path / "manifest.csv").write_text("path,label,split,source_ids,identity_ids\n"
                                           "o.mp4,real,test,,alice\nf.mp4,fake,train,o.mp4,alice\n"
                                           "p.mp4,real,train,,bob\nq.mp4,real,val,,bob\n")
    with pytest.raises(InputError, match=r"leakage\): x:f \(train\) from x:o \(test\)"):
        build_manifest("csv", tmp_path, "x", ManifestConfig())
    (tmp_path / "manifest.csv").write_text("path,label,split,source_ids,identity_ids\n"
                                           "o.mp4,real,train,,alice\nf.mp4,fake,train,o.mp4,alice\n"
                                           "p.mp4,real,train,,bob\nq.mp4,real,val,,bob\n")
    with pytest.raises(InputError, match="identity bob in x:train, x:val"):
        build_manifest("csv", tmp_path, "x", ManifestConfig())
    assert build_manifest("csv", tmp_path, "x", ManifestConfig(identity_leakage="warn", both_classes=False)).height == 4
    (tmp_path / "manifest.csv").write_text("path,label\no.mp4,real\nf.mp4,maybe\n")
    with pytest.raises(InputError, match=r"manifest.csv:3: label 'maybe' for f.mp4"):
        build_manifest("csv", tmp_path, "x", ManifestConfig())
    (tmp_path / "manifest.csv").write_text("path,label\no.mp4,real\nmissing.mp4,fake\n")
    with pytest.raises(InputError, match=r"missing.mp4: listed but missing"):
        build_manifest("csv", tmp_path, "x", ManifestConfig())
    with pytest.raises(InputError, match="unknown dataset adapter 'csvv'"):
        build_manifest("csvv", tmp_path, "x", ManifestConfig())


def test_extract_with_a_manifest_processes_only_listed_videos(tmp_path, tiny):
    _ffpp_tree(tmp_path / "ff", tiny, comps=("c23", "c40"))
    df = build_manifest("ffpp", tmp_path / "ff", "ffpp", ManifestConfig(methods=("Deepfakes",)))
    man = tmp_path / "m.parquet"
    df.write_parquet(man)
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 2}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "workers": 0})
    s = run_extract(tmp_path / "ff", tmp_path / "out", cfg, progress=False, manifest=man)
    v = pl.read_parquet(tmp_path / "out" / "videos.parquet")
    assert s.processed == df.height == 10 and sorted(v["video_id"]) == sorted(df["video_id"])
    assert all("/c23/" in p for p in v["path"])
