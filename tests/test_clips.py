"""Clips of consecutive frames (issue 23): the clip plan, per-clip alignment, gaps, clip shards and the clip loader."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from facepipe.faces.config import AlignConfig
from facepipe.faces.types import Face
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from facepipe.video import SamplingConfig, clip_indices, sample_indices
from tests.conftest import REAL, needs_real

CLIPS = {"sampling": {"mode": "clips", "num_clips": 2, "clip_length": 4}, "face_detector": {"name": "mtcnn"},
         "align": {"size": 64}, "workers": 0}


def _torchcodec_starts(n: int, k: int, t: int, step: int) -> list[int]:
    """torchcodec's clips_at_regular_indices over the whole video (samplers/_index_based.py): the sampling range
    ends at max(n - span + 1, 1) (exclusive), starts = linspace(0, end - 1, k) truncated to int."""
    span = step * (t - 1) + 1
    end = max(n - span + 1, 1)
    return [int(x) for x in np.linspace(0, end - 1, k)]


@pytest.mark.parametrize("n,k,t,step", [(338, 4, 16, 1), (309, 2, 16, 1), (100, 3, 8, 2), (40, 8, 32, 1),
                                        (33, 2, 32, 1), (32, 5, 32, 1)])
def test_clip_plan_is_torchcodecs_regular_placement(n, k, t, step):
    cfg = SamplingConfig(mode="clips", num_clips=k, clip_length=t, frame_step=step)
    plan = clip_indices(n, cfg)
    assert plan.shape[1] == t and len(plan) >= 1
    assert plan[:, 0].tolist() == sorted(set(_torchcodec_starts(n, k, t, step)))  # repeated starts kept once
    assert (np.diff(plan, axis=1) == step).all() and plan.max() < n and plan.min() == 0
    assert sample_indices(n, 25.0, cfg).tolist() == sorted(set(plan.ravel().tolist()))  # each frame decoded once


def test_a_video_shorter_than_one_clip_has_no_clip():
    cfg = SamplingConfig(mode="clips", num_clips=2, clip_length=16, frame_step=2)
    assert cfg.clip_span == 31
    assert clip_indices(30, cfg).shape == (0, 16) and len(sample_indices(30, 25.0, cfg)) == 0
    assert clip_indices(31, cfg).shape == (1, 16)


def test_clip_matrix_fits_all_frames_at_once():
    """One frame: the clip's transform is the frame's own; a face moving within the clip gets one transform that
    sits between the per-frame ones (least squares over every frame's points), in both alignment modes."""
    from facepipe.faces.align import arcface_template, clip_matrix, face_matrix, similarity_matrix, transform_points

    rng = np.random.default_rng(0)
    lm0 = np.array([[100, 120], [140, 119], [121, 140], [104, 162], [137, 161]], np.float64)
    box0 = np.array([80, 90, 160, 180], np.float64)
    cfg = AlignConfig(size=224, margin=1.3)
    assert np.allclose(clip_matrix(box0[None], lm0[None], cfg), similarity_matrix(lm0, 224, 1.3))
    shifts = np.arange(8)[:, None] * np.array([3.0, 1.0]) + rng.normal(0, 0.5, (8, 2))
    lms = lm0[None] + shifts[:, None]
    boxes = box0[None] + np.tile(shifts, 2)
    m = clip_matrix(boxes, lms, cfg)
    per = [face_matrix(b, lm, cfg) for b, lm in zip(boxes, lms)]
    eyes = [transform_points(lm[:2], m).mean(0) for lm in lms]  # the eye centre moves in the fixed crop ...
    assert np.ptp([e[0] for e in eyes]) > 15
    dst = arcface_template(224, 1.3)

    def residual(mat):  # FTCN's objective: every frame's five points onto the template, one transform
        return sum(((transform_points(lm, mat) - dst) ** 2).sum() for lm in lms)

    assert residual(m) <= min(residual(p) for p in per) + 1e-6
    assert np.abs(transform_points(lms.mean(0), m) - dst).max() < 5  # the mean face sits on the template
    mb = clip_matrix(boxes, lms, AlignConfig(mode="box", size=224))
    assert np.allclose(mb, face_matrix(boxes.mean(0), None, AlignConfig(mode="box", size=224)))
    with pytest.raises(ValueError):
        clip_matrix(np.zeros((0, 4)), np.zeros((0, 5, 2)), cfg)


def test_gaps_are_interpolated_between_detected_frames():
    from facepipe.stages.extract.clips import fill_gaps

    def face(x: float) -> Face:
        return Face(box=[x, 0, x + 10, 10], landmarks=np.full((5, 2), x), score=0.99)

    faces, gaps = fill_gaps({1: face(10.0), 4: face(40.0)}, 6)
    assert gaps == [True, False, True, True, False, True]
    assert [float(f.box[0]) for f in faces] == [10.0, 10.0, 20.0, 30.0, 40.0, 40.0]
    assert np.isnan(faces[2].score) and faces[1].score == pytest.approx(0.99)


def test_preset_deepfakebench_refuses_clips():
    with pytest.raises(ValueError, match="cannot be combined with extract.sampling.mode clips"):
        ExtractConfig.model_validate({"sampling": {"mode": "clips"}, "align": {"preset": "deepfakebench"}})


def test_clip_extract_keeps_gap_frames_and_drops_clips_with_too_many(face_video_dir, tmp_path, monkeypatch):
    """The single-face clip (12 frames) in 2 clips of 4: every (track, clip) has 4 rows with consecutive frame
    indices and one affine. With the face missed on every third detected frame, the gap frames stay (interpolated,
    gap true, score null, frame index and crop kept); with max_gap_share 0.2 the clips holding a gap are dropped
    and counted."""
    from facepipe.faces.base import FaceDetector

    d = tmp_path / "v"
    d.mkdir()
    (d / "single.mp4").symlink_to(face_video_dir / "single.mp4")
    cfg = ExtractConfig.model_validate(CLIPS)
    run_extract(d, tmp_path / "full", cfg, progress=False)
    full = pl.read_parquet(tmp_path / "full" / "faces.parquet")
    per = full.group_by("clip_id", "track_id").agg(pl.col("frame_index"), pl.col("affine").n_unique().alias("n"))
    assert per.height == 2 and (per["n"] == 1).all()
    for idx in per["frame_index"]:
        assert np.diff(sorted(idx)).tolist() == [1, 1, 1]
    assert sorted(full["clip_start"].unique().to_list()) == [0, 8] and not full["gap"].any()

    real = FaceDetector.detect_many
    calls = {"n": 0}

    def missing(self, videos):
        out = real(self, videos)
        for frames in out:
            for i in range(len(frames)):
                calls["n"] += 1
                if calls["n"] % 3 == 0:
                    frames[i] = []
        return out

    monkeypatch.setattr(FaceDetector, "detect_many", missing)
    run_extract(d, tmp_path / "gaps", cfg, progress=False)
    gaps = pl.read_parquet(tmp_path / "gaps" / "faces.parquet")
    assert gaps.height == full.height and gaps["frame_index"].to_list() == full["frame_index"].to_list()
    g = gaps.filter(pl.col("gap"))
    assert g.height >= 1 and g["score"].null_count() == g.height
    assert all((tmp_path / "gaps" / p).is_file() for p in gaps["crop_path"])
    box_err = np.abs(np.stack(g["box"].to_numpy()) - np.stack(full.filter(pl.col("frame_index").is_in(
        g["frame_index"].to_list()))["box"].to_numpy())).max()
    assert box_err < 8  # interpolated from the neighbours of a slow pan: within a few pixels of the detection
    calls["n"] = 0
    strict = ExtractConfig.model_validate({**CLIPS, "track": {"max_gap_share": 0.2}})
    run_extract(d, tmp_path / "strict", strict, progress=False)
    v = pl.read_parquet(tmp_path / "strict" / "videos.parquet").row(0, named=True)
    kept = pl.read_parquet(tmp_path / "strict" / "faces.parquet")
    assert v["n_clips"] + v["n_clips_dropped"] == 2 and v["n_clips_dropped"] >= 1
    assert kept.height == 4 * v["n_clips"] and not kept["gap"].any()


def test_stills_and_short_videos_are_unsupported_in_clip_mode(face_video_dir, tmp_path, t1):
    import cv2

    d = tmp_path / "v"
    d.mkdir()
    cv2.imwrite(str(d / "photo.jpg"), cv2.cvtColor(t1, cv2.COLOR_RGB2BGR))
    (d / "single.mp4").symlink_to(face_video_dir / "single.mp4")
    cfg = ExtractConfig.model_validate({**CLIPS, "sampling": {"mode": "clips", "num_clips": 2, "clip_length": 13}})
    s = run_extract(d, tmp_path / "out", cfg, progress=False)
    v = {r["path"]: r for r in pl.read_parquet(tmp_path / "out" / "videos.parquet").iter_rows(named=True)}
    assert s.statuses["unsupported"] == 2
    assert "a still image has no clips" in v["photo.jpg"]["message"]
    assert "12 decodable frame(s), fewer than one clip spans" in v["single.mp4"]["message"]


def _clip_shards(face_video_dir: Path, tmp_path: Path, masks: bool = True) -> Path:
    from facepipe.stages import shard

    d = tmp_path / "v"
    d.mkdir()
    for name in ("single.mp4", "group/poker.pan.mp4"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).symlink_to(face_video_dir / name)
    man = tmp_path / "m.csv"
    with open(man, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], ["single.mp4", "real", "train"],
                                 ["group/poker.pan.mp4", "real", "train"]])
    run_extract(d, tmp_path / "ex", ExtractConfig.model_validate({**CLIPS, "track": {"select": "all"}}),
                progress=False, manifest=man)
    shard.run(tmp_path / "shards", shard.ShardConfig(
        inputs=(shard.ShardInput(dataset="toy", extract=str(tmp_path / "ex"), manifest=str(man)),), masks=masks,
        max_samples=4), progress=False)
    return tmp_path / "shards"


def test_clip_shards_and_the_clip_loader(face_video_dir, tmp_path):
    """One sample per (video, clip, track) keyed <dataset>__<video>__c<clip>__<track> with the T crops as they
    were written; the index records the kind, length and step; make_loader streams (B, T, 3, H, W) and refuses
    the wrong kind; views are computed per frame."""
    import tarfile

    from facepipe.data import make_loader
    from facepipe.errors import ConfigError
    from tests.conftest import shard_files

    out = _clip_shards(face_video_dir, tmp_path)
    index = json.loads((out / "index.json").read_text())
    assert (index["sample_kind"], index["clip_length"], index["frame_step"]) == ("clip", 4, 1)
    faces = pl.read_parquet(tmp_path / "ex" / "faces.parquet")
    n_clips = faces.select("video_id", "clip_id", "track_id").unique().height
    assert index["splits"]["train"]["samples"] == n_clips > 2
    tars = sorted(shard_files(out).glob("train-*.tar"))
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
    key = names[0].split(".")[0]
    assert key.split("__")[2].startswith("c") and {f"{key}.{t:02d}.png" for t in range(4)} <= set(names)
    row = faces.filter((pl.col("video_id") == key.split("__")[1]) & (pl.col("clip_id") == int(key.split("__")[2][1:]))
                       & (pl.col("track_id") == int(key.split("__")[3]))).sort("frame_index")
    with tarfile.open(tars[0]) as tf:
        assert tf.extractfile(f"{key}.00.png").read() == (tmp_path / "ex" / row["crop_path"][0]).read_bytes()
        meta = json.loads(tf.extractfile(f"{key}.json").read())
    assert meta["frame_indices"] == row["frame_index"].to_list() and meta["clip_length"] == 4

    dl = make_loader(out, "train", batch_size=2, num_workers=0, image_size=48, views=["srm"], masks=True)
    b = next(iter(dl))
    assert b["image"].shape == (2, 4, 3, 48, 48) and b["srm"].shape[:2] == (2, 4) and b["label"].shape == (2,)
    assert b["mask"].shape == (2, 4, 1, 48, 48) and len(b["frame_indices"][0]) == 4
    keys = [k for b in dl for k in b["key"]]
    assert len(keys) == len(set(keys)) == n_clips  # a pass reads every clip once
    with pytest.raises(ConfigError, match="clips=False, but this shard set holds clips of 4 frames"):
        make_loader(out, "train", num_workers=0, clips=False)


def test_frame_sets_refuse_clips(example_shards):
    from facepipe.data import make_loader
    from facepipe.errors import ConfigError

    with pytest.raises(ConfigError, match="holds frame samples"):
        make_loader(example_shards, "train", num_workers=0, clips=True)


def test_clip_augmentation_draws_once_per_clip():
    """A clip of four identical frames stays four identical frames under the default augmentation (flip,
    rotation, blur, resize, colour, JPEG), for many seeds; a frame-by-frame transform would differ."""
    from facepipe.data.pipeline import _clip_transform, default_augmentation

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for seed in range(12):
        t = _clip_transform(default_augmentation(48, seed=seed), 4, masks=False)
        res = t(image=frame, image1=frame, image2=frame, image3=frame)
        outs = [res["image"], res["image1"], res["image2"], res["image3"]]
        assert all(np.array_equal(outs[0], o) for o in outs[1:]), seed


def test_clip_label_rule():
    from facepipe.data.schema import clip_label

    assert clip_label([-1, 1, -1], ["original_diff_uncertain", "original_diff", "original_diff_uncertain"]) == (
        1, "original_diff")
    assert clip_label([-1, -1], ["original_diff_uncertain"] * 2) == (-1, "original_diff_uncertain")
    assert clip_label([0, 0], ["video", "video"]) == (0, "video")


@needs_real
def test_ffpp_pairs_in_clip_mode_through_the_cli(tmp_path):
    """Issue 23's check on the shared FF++ pairs: `facepipe extract --sampling clips --num-clips 2 --clip-length
    16` writes 2 clips per track of 16 faces with consecutive frame indices, one affine per (track, clip),
    per-face labels from the original (every FaceSwap face fake, compared with original_634)."""
    from typer.testing import CliRunner

    from facepipe.cli import app

    ff = REAL / "videos" / "ffpp"
    d = tmp_path / "v"
    d.mkdir()
    rows = [["path", "label", "split", "method", "source_ids"]]
    for o, fake in (("634", "FaceSwap_634_660"), ("004", "NeuralTextures_004_982")):
        (d / f"original_{o}.mp4").symlink_to(ff / f"original_{o}.mp4")
        (d / f"{fake}.mp4").symlink_to(ff / f"{fake}.mp4")
        rows += [[f"original_{o}.mp4", "real", "test", "", ""],
                 [f"{fake}.mp4", "fake", "test", fake.split("_")[0], f"original_{o}.mp4"]]
    with open(tmp_path / "m.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    r = CliRunner().invoke(app, ["extract", "--video-dir", str(d), "--out", str(tmp_path / "out"), "--manifest",
                                 str(tmp_path / "m.csv"), "--sampling", "clips", "--num-clips", "2",
                                 "--clip-length", "16", "--no-progress", "--no-contact-sheet"])
    assert r.exit_code == 0, r.output
    faces = pl.read_parquet(tmp_path / "out" / "faces.parquet")
    per = faces.group_by("video_id", "clip_id", "track_id").agg(
        pl.col("frame_index").sort(), pl.col("affine").n_unique().alias("affines"), pl.col("label"),
        pl.col("label_source"))
    assert per.group_by("video_id").len()["len"].to_list() == [2] * 4  # 2 clips of one track per video
    for r_ in per.iter_rows(named=True):
        assert len(r_["frame_index"]) == 16 and np.diff(r_["frame_index"]).tolist() == [1] * 15
        assert r_["affines"] == 1
        if r_["video_id"].startswith("original"):
            assert set(r_["label"]) == {0}
        if r_["video_id"].startswith("FaceSwap"):
            assert set(r_["label"]) == {1} and set(r_["label_source"]) == {"original_diff"}
    nt = faces.filter(pl.col("video_id") == "NeuralTextures_004_982")
    assert (nt["label"] == 1).sum() >= 28 and (nt["label"] == 0).sum() == 0  # compared; undecided faces are -1
    # ... and `facepipe shard` + make_loader(clips=True) stream (B, 16, 3, H, W)
    from facepipe.data import make_loader

    r = CliRunner().invoke(app, ["shard", "--out", str(tmp_path / "shards"), "--input",
                                 f"dataset=ffpp,extract={tmp_path / 'out'},manifest={tmp_path / 'm.csv'}",
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    b = next(iter(make_loader(tmp_path / "shards", "test", batch_size=2, num_workers=0, clips=True, image_size=112,
                              shuffle=False)))
    assert b["image"].shape == (2, 16, 3, 112, 112) and [len(f) for f in b["frame_indices"]] == [16, 16]


def test_clip_contact_sheets(face_video_dir, tmp_path):
    """`facepipe inspect` on a clip set and extract's contact sheet in clip mode: one row per clip, its frames
    left to right (consecutive indices captioned), every clip counted."""
    import cv2
    from typer.testing import CliRunner

    from facepipe.cli import app
    from facepipe.report import MAX_CLIP_TILES, contact_sheet

    out = _clip_shards(face_video_dir, tmp_path, masks=False)
    n_clips = pl.read_parquet(tmp_path / "ex" / "faces.parquet").select("video_id", "clip_id", "track_id").unique()
    r = CliRunner().invoke(app, ["inspect", str(out), "--n", "3"])
    assert r.exit_code == 0, r.output
    assert f"total: {n_clips.height} samples" in r.output
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] == 3 * (96 + 24) and sheet.shape[1] == 4 * 96 <= MAX_CLIP_TILES * 96
    ex_sheet = cv2.imread(str(contact_sheet(tmp_path / "ex")))
    assert ex_sheet.shape[0] == n_clips.height * (96 + 24)


def test_landmarks68_in_crop_pixels_agree_with_the_five_points(face_video_dir, tmp_path):
    """extract.landmarks68: dlib's 68 points of every face in crop pixels, in frame and in clip mode; the five points
    they imply (eye centres from 36-41 / 42-47, nose tip 30, mouth corners 48 / 54) lie within 6 % of the crop side
    of the detector's five landmarks mapped into the crop; they travel into clip samples and clip batches."""
    from facepipe.faces.align import transform_points

    d = tmp_path / "v"
    d.mkdir()
    (d / "single.mp4").symlink_to(face_video_dir / "single.mp4")
    for name, sampling in (("frames", {"num_frames": 4}), ("clips", {"mode": "clips", "num_clips": 1,
                                                                      "clip_length": 4})):
        cfg = ExtractConfig.model_validate({**CLIPS, "sampling": sampling, "align": {"size": 128},
                                            "landmarks68": True})
        run_extract(d, tmp_path / name, cfg, progress=False)
        faces = pl.read_parquet(tmp_path / name / "faces.parquet")
        assert faces.height == 4
        for r in faces.iter_rows(named=True):
            lm68 = np.asarray(r["crop_landmarks"], np.float64)
            assert lm68.shape == (68, 2) and (lm68 > -5).all() and (lm68 < 133).all()
            five = np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])
            det = transform_points(np.asarray(r["landmarks"]), np.asarray(r["affine"]))
            assert np.abs(five - det).max() < 0.06 * 128, (name, np.abs(five - det).max())
    plain = run_extract(d, tmp_path / "plain", ExtractConfig.model_validate(CLIPS), progress=False)
    assert plain.statuses["ok"] == 1
    assert pl.read_parquet(tmp_path / "plain" / "faces.parquet")["crop_landmarks"].null_count() == 8


def test_landmarks68_reach_clip_samples_and_batches(tmp_path, face_video_dir):
    from facepipe.data import make_loader
    from facepipe.stages import shard

    d = tmp_path / "v"
    d.mkdir()
    (d / "single.mp4").symlink_to(face_video_dir / "single.mp4")
    man = tmp_path / "m.csv"
    man.write_text("path,label,split\nsingle.mp4,real,train\n")
    cfg = ExtractConfig.model_validate({**CLIPS, "landmarks68": True})
    run_extract(d, tmp_path / "ex", cfg, progress=False, manifest=man)
    shard.run(tmp_path / "sh", shard.ShardConfig(inputs=(shard.ShardInput(dataset="toy", extract=str(tmp_path / "ex"),
                                                                         manifest=str(man)),)), progress=False)
    b = next(iter(make_loader(tmp_path / "sh", "train", batch_size=2, num_workers=0)))
    assert len(b["crop_landmarks"][0]) == 4 and np.asarray(b["crop_landmarks"][0][0]).shape == (68, 2)


def test_hugging_face_datasets_loads_a_clip_set(face_video_dir, tmp_path, monkeypatch):
    """datasets' webdataset builder reads a clip set with hf_features: T image members per sample and the per-frame
    json lists."""
    datasets = pytest.importorskip("datasets")
    from facepipe.data import hf_features

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = _clip_shards(face_video_dir, tmp_path)
    index = json.loads((out / "index.json").read_text())
    files = {"train": [str(out / s["url"]) for s in index["splits"]["train"]["shards"]]}
    ds = datasets.load_dataset("webdataset", data_files=files, cache_dir=str(tmp_path / "hf"),
                               features=hf_features(out))
    assert ds["train"].num_rows == index["splits"]["train"]["samples"]
    row = ds["train"][0]
    assert row["00.png"].size == (64, 64) and row["03.mask.png"].size == (64, 64)
    assert len(row["json"]["frame_indices"]) == 4 and row["cls"] == row["json"]["label"]
