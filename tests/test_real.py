"""extract on the shared real clips (FF++ c23 real/fake pairs, DFDC, crowd, tiny face, rotated, corrupted)."""

from __future__ import annotations

import cv2
import numpy as np
import polars as pl

from facepipe.faces.align import arcface_template
from facepipe.ids import video_id_for
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from tests.conftest import REAL, REAL_MANIFEST

FRONTAL = ["videos/ffpp/original_634.mp4", "videos/ffpp/FaceSwap_634_660.mp4", "videos/ffpp/original_004.mp4",
           "videos/ffpp/NeuralTextures_004_982.mp4", "videos/dfdc/lynaeydofd.mp4"]


def test_every_video_is_listed_with_its_status(real_run, real_manifest):
    out, summary, videos, faces = real_run
    manifest_videos = {p[len("videos/"):]: r for p, r in real_manifest.items() if r["kind"] == "video"}
    assert set(videos) == set(manifest_videos)
    assert videos["edge/corrupted.mp4"]["status"] == "decode_error"
    assert videos["edge/corrupted.mp4"]["frames_decoded"] == 28  # of 50 in the header
    assert "header frames" in videos["edge/corrupted.mp4"]["message"]
    for p in ("noface/video_90.mov", "edge/unordered.mov"):
        assert videos[p]["status"] == "no_face", p
    for p, r in manifest_videos.items():
        if r["label"] in ("real", "fake"):
            assert videos[p]["status"] == "ok", (p, videos[p]["message"])
            assert videos[p]["frames_decoded"] == int(r["frames"]), p  # what FFmpeg really decodes


def test_rotated_clip_comes_out_upright(real_run):
    v = real_run[2]["noface/video_90.mov"]
    assert v["rotation"] == -90 and (v["width"], v["height"]) == (320, 568)


def test_single_subject_videos_give_one_main_track(real_run, real_manifest):
    _, _, videos, faces = real_run
    for p, r in real_manifest.items():
        if r["kind"] != "video" or r["faces"] != "1":
            continue
        vid = video_id_for(p[len("videos/"):])
        v = videos[p[len("videos/"):]]
        # one person: one track kept, and it is that person's (it covers the frames, below)
        assert v["n_tracks"] == 1, (p, v["n_tracks"], v["n_tracks_dropped"])
        mine = faces.filter(pl.col("video_id") == vid)
        assert set(mine["track_id"]) == {0}, p
        # the face is found on at least 80 % of the sampled frames (26 of 32 on the small NTU RGB+D subject)
        assert mine.height >= 0.8 * v["frames_sampled"], (p, mine.height, v["frames_sampled"])
        assert mine["frame_index"].n_unique() == mine.height  # one face per frame in a track


def test_crowd_and_stage_clips_have_several_tracks(real_run):
    """Several people are tracked; by default (track.select: main, one face rule for reals and fakes) only the
    main one is kept, the others counted as dropped."""
    videos = real_run[2]
    for clip, people in (("misc/facenet_pytorch_video.mp4", 4), ("misc/short_hamilton_clip.mp4", 3)):
        v = videos[clip]
        assert v["n_tracks"] == 1 and v["n_tracks"] + v["n_tracks_dropped"] >= people, (clip, v)


def test_frontal_crops_put_the_eyes_on_the_template(real_run, mtcnn):
    """Re-detect on the aligned crops of frontal FF++/DFDC faces: eyes within 8 px (3% of 256)."""
    out, _, _, faces = real_run
    tmpl = arcface_template(256, 1.3)[:2]
    errors = []
    for p in FRONTAL:
        main = faces.filter((pl.col("video_id") == video_id_for(p[len("videos/"):])) & (pl.col("track_id") == 0))
        for crop_path in main["crop_path"].to_list()[::4]:
            crop = cv2.cvtColor(cv2.imread(str(out / crop_path)), cv2.COLOR_BGR2RGB)
            again = mtcnn.detect([crop])[0]
            assert again, crop_path
            errors.append(np.abs(again[0].landmarks[:2] - tmpl).max())
    assert max(errors) < 8.0 and np.median(errors) < 4.0


def test_second_run_does_no_work(real_run):
    out, _, _, faces = real_run
    again = run_extract(REAL / "videos", out, ExtractConfig(), progress=False, manifest=REAL_MANIFEST)
    assert again.processed == 0 and again.skipped == len(real_run[2])
    assert pl.read_parquet(out / "faces.parquet").equals(faces)
