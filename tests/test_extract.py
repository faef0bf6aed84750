from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from facepipe.errors import InputError
from facepipe.faces.align import warp_crop
from facepipe.ids import video_id_for
from facepipe.stages.example import write_audio_only
from facepipe.stages.extract import FACE_SCHEMA, VIDEO_SCHEMA, discover_videos
from facepipe.stages.extract import run as run_extract
from facepipe.video import probe, read_frames


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture()
def videos(tmp_path, face_video_dir) -> Path:
    d = tmp_path / "in"
    shutil.copytree(face_video_dir, d)
    return d


def test_video_ids_are_stable_unique_and_key_safe(tmp_path):
    assert video_id_for("ffpp/original_634.mp4") == "ffpp-original_634"
    assert video_id_for("dfdc_train_part_0/abc.mp4") == "dfdc_train_part_0-abc"
    weird = video_id_for("a b/clip.v2__final.mp4")
    assert "." not in weird and "__" not in weird and " " not in weird
    assert weird == video_id_for("a b/clip.v2__final.mp4")
    assert video_id_for("x/clip.v2.mp4") != video_id_for("x/clip_v2.mp4")
    for name in ("same.mp4", "same.avi"):
        (tmp_path / name).write_bytes(b"x")
    ids = [j.video_id for j in discover_videos(tmp_path, (".mp4", ".avi"))]
    assert len(set(ids)) == 2 and all(i.startswith("same-") for i in ids)


def test_extract_writes_crops_and_tables(videos, tmp_path, small_cfg):
    out = tmp_path / "out"
    s = run_extract(videos, out, small_cfg, progress=False)
    assert s.processed == 2 and s.statuses["ok"] == 2
    v = pl.read_parquet(out / "videos.parquet")
    f = pl.read_parquet(out / "faces.parquet")
    assert dict(v.schema) == VIDEO_SCHEMA and dict(f.schema) == FACE_SCHEMA
    ids = sorted(v["video_id"])
    assert ids[1] == "single" and ids[0].startswith("group-poker_pan-")  # the dot forced a hash suffix
    assert v.filter(pl.col("video_id") == "single")["path"].to_list() == ["single.mp4"]
    single = f.filter(pl.col("video_id") == "single")
    assert single.height == 8 and single["track_id"].unique().to_list() == [0]
    group = f.filter(pl.col("video_id") != "single")
    assert group["track_id"].n_unique() >= 5  # six people pan through the frame
    # Every row's crop exists, has the configured size, and the stored matrix regenerates it.
    for r in f.iter_rows(named=True):
        assert (out / r["crop_path"]).is_file()
    row = single.row(3, named=True)
    info = probe(videos / "single.mp4")
    frames = read_frames(videos / "single.mp4", info, small_cfg.sampling)
    k = int(np.flatnonzero(frames.indices == row["frame_index"])[0])
    regen = warp_crop(frames.frames[k], np.array(row["affine"]), row["crop_size"])
    saved = cv2.cvtColor(cv2.imread(str(out / row["crop_path"])), cv2.COLOR_BGR2RGB)
    assert saved.shape == (128, 128, 3) and np.array_equal(regen, saved)  # PNG is lossless
    assert row["timestamp_s"] == pytest.approx(row["frame_index"] / 10.0, abs=1e-3)
    assert Path(row["crop_path"]).name == f"{row['frame_index']:06d}_0.png"


def test_rerun_does_no_work_and_changes_are_redone(videos, tmp_path, small_cfg):
    out = tmp_path / "out"
    run_extract(videos, out, small_cfg, progress=False)
    crops_before = _mtimes(out / "faces")
    s2 = run_extract(videos, out, small_cfg, progress=False)
    assert s2.processed == 0 and s2.skipped == 2
    assert _mtimes(out / "faces") == crops_before
    # A changed file is redone, the other one is not.
    p = videos / "single.mp4"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    s3 = run_extract(videos, out, small_cfg, progress=False)
    assert s3.processed == 1 and s3.skipped == 1
    # A changed parameter redoes everything.
    cfg2 = small_cfg.model_copy(update={"align": small_cfg.align.model_copy(update={"size": 96})})
    s4 = run_extract(videos, out, cfg2, progress=False)
    assert s4.processed == 2
    f = pl.read_parquet(out / "faces.parquet")
    assert f["crop_size"].unique().to_list() == [96]
    assert cv2.imread(str(out / f["crop_path"][0])).shape == (96, 96, 3)


def test_sha256_fingerprint_survives_touch(videos, tmp_path, small_cfg):
    out = tmp_path / "out"
    run_extract(videos, out, small_cfg.model_copy(update={"file_fingerprint": "sha256"}), progress=False)
    p = videos / "single.mp4"
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    s = run_extract(videos, out, small_cfg.model_copy(update={"file_fingerprint": "sha256"}), progress=False)
    assert s.processed == 0


def test_killed_run_leaves_finished_videos_and_no_half_files(videos, tmp_path, small_cfg):
    out = tmp_path / "out"
    run_extract(videos, out, small_cfg, progress=False)
    # Simulate a kill while "single" was being written: its part marker is gone, a temp crop folder
    # and a half-written crop are left behind.
    (out / "_parts" / "single.json").unlink()
    tmp = out / "faces" / ".single.tmp-99999"
    tmp.mkdir()
    (tmp / "000000_0.png").write_bytes(b"\x89PNG half")
    s = run_extract(videos, out, small_cfg, progress=False)
    assert s.processed == 1 and s.skipped == 1
    assert not tmp.exists()
    assert not list(out.rglob(".*tmp*"))
    f = pl.read_parquet(out / "faces.parquet")
    assert f.filter(pl.col("video_id") == "single").height == 8


def test_bad_inputs_are_recorded_and_the_run_goes_on(videos, tmp_path, small_cfg):
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "notes.mp4").write_text("not a video\n")
    write_audio_only(videos / "audio.mp4")
    data = (videos / "single.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(data[: len(data) // 3])  # index at the end: unreadable
    out = tmp_path / "out"
    s = run_extract(videos, out, small_cfg, progress=False)
    v = {r["video_id"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)}
    assert v["empty"]["status"] == "decode_error" and "empty file" in v["empty"]["message"]
    assert v["notes"]["status"] == "unsupported" and "notes.mp4" in v["notes"]["message"]
    assert v["audio"]["status"] == "unsupported" and "no video stream" in v["audio"]["message"]
    assert v["cut"]["status"] in ("decode_error", "unsupported") and "cut.mp4" in v["cut"]["message"]
    assert v["single"]["status"] == "ok" and s.statuses["ok"] == 2


def test_no_face_video(tmp_path, small_cfg, t1):
    from facepipe.stages.example import camera_frames, write_video

    write_video(tmp_path / "in" / "table.mp4", camera_frames(t1, (640, 240), 10, (500, 760, 1.0), (780, 760, 1.0)))
    run_extract(tmp_path / "in", tmp_path / "out", small_cfg, progress=False)
    v = pl.read_parquet(tmp_path / "out" / "videos.parquet")
    assert v["status"].to_list() == ["no_face"] and v["n_faces"].to_list() == [0]
    assert pl.read_parquet(tmp_path / "out" / "faces.parquet").height == 0


def _jpeg_sampling(data: bytes) -> list[tuple[int, int]]:
    """(horizontal, vertical) sampling factors of each component, read from the JPEG's SOF marker."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            n = data[i + 9]
            return [(data[i + 11 + 3 * c] >> 4, data[i + 11 + 3 * c] & 15) for c in range(n)]
        i += 2 + length
    raise AssertionError("no SOF marker")


def test_largest_keeps_one_track_and_box_mode(videos, tmp_path, small_cfg):
    cfg = small_cfg.model_copy(update={
        "track": small_cfg.track.model_copy(update={"select": "largest"}),
        "align": small_cfg.align.model_copy(update={"mode": "box", "margin": 1.3}),
        "output": small_cfg.output.model_copy(update={"format": "jpg", "jpeg_quality": 90}),
    })
    run_extract(videos, tmp_path / "out", cfg, progress=False)
    f = pl.read_parquet(tmp_path / "out" / "faces.parquet")
    assert f.group_by("video_id").agg(pl.col("track_id").n_unique())["track_id"].to_list() == [1, 1]
    assert set(f["crop_mode"]) == {"box"} and all(p.endswith(".jpg") for p in f["crop_path"])
    assert _jpeg_sampling((tmp_path / "out" / f["crop_path"][0]).read_bytes()) == [(1, 1)] * 3  # 4:4:4 by default
    a = np.array(f["affine"][0].to_list())
    assert a[0, 1] == 0 and a[1, 0] == 0 and a[0, 0] == pytest.approx(a[1, 1])  # no rotation, square


def test_worker_processes_give_the_same_tables(videos, tmp_path, small_cfg):
    run_extract(videos, tmp_path / "a", small_cfg, progress=False)
    run_extract(videos, tmp_path / "b", small_cfg.model_copy(update={"workers": 2}), progress=False)
    fa = pl.read_parquet(tmp_path / "a" / "faces.parquet")
    fb = pl.read_parquet(tmp_path / "b" / "faces.parquet")
    assert fa.drop("box", "landmarks", "affine", "score").equals(fb.drop("box", "landmarks", "affine", "score"))
    np.testing.assert_allclose(np.stack(fa["box"].to_numpy()), np.stack(fb["box"].to_numpy()), atol=1e-3)


def test_missing_or_empty_video_dir_writes_nothing(tmp_path, small_cfg):
    with pytest.raises(InputError, match="does not exist"):
        run_extract(tmp_path / "nope", tmp_path / "out", small_cfg, progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos here")
    with pytest.raises(InputError, match="no video files"):
        run_extract(tmp_path / "empty", tmp_path / "out", small_cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_part_files_record_params_and_fingerprint(videos, tmp_path, small_cfg):
    out = tmp_path / "out"
    run_extract(videos, out, small_cfg, progress=False)
    row = json.loads((out / "_parts" / "single.json").read_text())
    assert row["file_size"] == (videos / "single.mp4").stat().st_size
    assert row["detector"].startswith("mtcnn@") and len(row["item_key"]) == 16


def test_decode_error_video_gives_no_shard_face_unless_asked(tmp_path):
    """The example's broken/truncated.mp4 (2 s clips, as 'facepipe example' makes them) decodes part-way: extract
    keeps the faces of its decodable frames and says decode_error; the shard stage leaves them out (counted) unless
    shard.statuses lists decode_error."""
    from facepipe.datasets import ManifestConfig, build_manifest
    from facepipe.deepfakebench import faces_from_shards
    from facepipe.stages import shard
    from facepipe.stages.example import build_example
    from facepipe.stages.extract import ExtractConfig

    videos = build_example(tmp_path / "videos")
    lines = (videos / "manifest.csv").read_text().splitlines()
    keep = [ln for ln in lines[1:] if ln.startswith(("broken/truncated.mp4,", "friends/left_pan.mp4,"))]
    (videos / "manifest.csv").write_text("\n".join([lines[0], *keep]) + "\n")
    build_manifest("csv", videos, "example", ManifestConfig()).write_parquet(tmp_path / "manifest.parquet")
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 6}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "workers": 0})
    run_extract(videos, tmp_path / "extract", cfg, progress=False, manifest=tmp_path / "manifest.parquet")
    vid = video_id_for("broken/truncated.mp4")
    status = pl.read_parquet(tmp_path / "extract" / "videos.parquet").filter(pl.col("video_id") == vid)["status"]
    assert status.to_list() == ["decode_error"]
    n = pl.read_parquet(tmp_path / "extract" / "faces.parquet").filter(pl.col("video_id") == vid).height
    assert n > 0  # the decodable frames had faces
    inp = shard.ShardInput(dataset="example", extract=str(tmp_path / "extract"),
                           manifest=str(tmp_path / "manifest.parquet"))
    s = shard.run(tmp_path / "ok", shard.ShardConfig(inputs=(inp,), max_samples=16), progress=False)
    assert s.left_out == {"example:decode_error": n}
    got = [f.video_id for f in faces_from_shards(str(tmp_path / "ok"))]
    assert got and vid not in got
    s = shard.run(tmp_path / "all", shard.ShardConfig(inputs=(inp,), max_samples=16, statuses=("ok", "decode_error")),
                  progress=False)
    assert not s.left_out
    assert sum(f.video_id == vid for f in faces_from_shards(str(tmp_path / "all"))) == n
