"""Per-face labels: faces of a fake compared with its original, the label policy, track quality; on clips made
here and on the shared FF++ pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from facepipe.example import camera_frames, self_blend, write_video
from facepipe.faces.config import LabelConfig
from facepipe.faces.labels import assign_labels, filter_tracks
from facepipe.ids import video_id_for
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from tests.conftest import REAL, needs_real

CFG = ExtractConfig.model_validate({"sampling": {"num_frames": 6}, "detector": {"name": "mtcnn", "max_side": 960},
                                    "align": {"size": 96}, "workers": 0})


def _manifest(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "method", "source_ids"])
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def two_people(tmp_path_factory, t1):
    """A clip of two people of t1.jpg and its 'fake' twin in which only the rightmost face was
    altered (self-blended); both encoded separately, as datasets ship them."""
    from facepipe.faces.mtcnn import MTCNN

    d = tmp_path_factory.mktemp("two")
    crop = np.ascontiguousarray(t1[150:450, 640:1280])
    faces = sorted(MTCNN(max_side=1280).detect([crop])[0], key=lambda f: f.box[0])
    assert len(faces) >= 2
    joey = max(faces, key=lambda f: f.box[0])  # the rightmost person (Phoebe, in this crop)
    fake = self_blend(crop, [joey], np.random.default_rng(3))
    path = ((330, 150, 1.0), (340, 155, 1.0))
    write_video(d / "pair.mp4", camera_frames(crop, (640, 300), 12, *path), fps=10, crf=18)
    write_video(d / "pair_fake.mp4", camera_frames(fake, (640, 300), 12, *path), fps=10, crf=23)
    # not the same frames: another camera path over the same altered photo
    write_video(d / "pair_moved.mp4", camera_frames(fake, (640, 300), 12, (250, 160, 1.1), (300, 140, 1.1)), fps=10)
    write_video(d / "pair_short.mp4", camera_frames(fake, (640, 300), 9, *path), fps=10)
    return d, float((joey.box[0] + joey.box[2]) / 2)


def test_only_the_altered_face_of_a_two_person_fake_is_fake(two_people, tmp_path):
    d, joey_x = two_people
    man = _manifest(tmp_path / "m.csv", [("pair.mp4", "real", "test", "", ""),
                                         ("pair_fake.mp4", "fake", "test", "SBI", "pair.mp4")])
    s = run_extract(d, tmp_path / "out", CFG, progress=False, manifest=man)
    assert s.statuses["ok"] == 2
    faces = pl.read_parquet(tmp_path / "out" / "faces.parquet")
    fake = faces.filter(pl.col("video_id") == "pair_fake")
    assert fake["track_id"].n_unique() == 2 and set(fake["label_source"]) == {"original_diff"}
    for r in fake.iter_rows(named=True):
        cx = (r["box"][0] + r["box"][2]) / 2 + 330 - 320  # camera centre 330 -> frame x 320 at zoom 1
        altered = abs(cx - joey_x) < 60
        assert r["label"] == (1 if altered else 0), (r["frame_index"], r["track_id"], r["manipulation_score"])
        assert r["video_label"] == 1 and r["mask_path"] is not None
    scores = fake.group_by("label").agg(pl.col("manipulation_score").min().alias("lo"),
                                        pl.col("manipulation_score").max().alias("hi"))
    lo_fake = scores.filter(pl.col("label") == 1)["lo"][0]
    hi_real = scores.filter(pl.col("label") == 0)["hi"][0]
    assert lo_fake > 5 * max(hi_real, 0.002), scores
    real = faces.filter(pl.col("video_id") == "pair")
    assert set(real["label"]) == {0} and set(real["label_source"]) == {"video"}
    assert real["manipulation_score"].is_null().all() and real["mask_path"].is_null().all()
    v = {r["video_id"]: r for r in pl.read_parquet(tmp_path / "out" / "videos.parquet").iter_rows(named=True)}
    assert v["pair_fake"]["original_id"] == "pair" and v["pair_fake"]["pair_check"].startswith("aligned")
    assert v["pair_fake"]["n_faces_fake"] == v["pair_fake"]["n_faces_real"] == fake.height // 2
    # the mask of the altered face marks its inner face, not the whole crop
    import cv2

    r = fake.filter(pl.col("label") == 1).row(0, named=True)
    mask = cv2.imread(str(tmp_path / "out" / r["mask_path"]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (96, 96) and 0.03 < (mask > 0).mean() < 0.6 and (mask[40:70, 30:66] > 0).mean() > 0.3


def test_pairs_that_are_not_frame_aligned_fall_back_to_the_policy_and_say_why(two_people, tmp_path):
    d, _ = two_people
    man = _manifest(tmp_path / "m.csv", [("pair.mp4", "real", "test", "", ""),
                                         ("pair_moved.mp4", "fake", "test", "SBI", "pair.mp4"),
                                         ("pair_short.mp4", "fake", "test", "SBI", "pair.mp4")])
    run_extract(d, tmp_path / "out", CFG, progress=False, manifest=man)
    v = {r["video_id"]: r for r in pl.read_parquet(tmp_path / "out" / "videos.parquet").iter_rows(named=True)}
    assert "background difference" in v["pair_moved"]["pair_check"] and v["pair_moved"]["label_source"] == "policy"
    assert "frame count 9 vs original 12" in v["pair_short"]["pair_check"]
    faces = pl.read_parquet(tmp_path / "out" / "faces.parquet")
    for vid in ("pair_moved", "pair_short"):
        f = faces.filter(pl.col("video_id") == vid)
        # policy 'main': the largest track is fake, the other (unknown) track is dropped
        assert set(f["label"]) == {1} and set(f["label_source"]) == {"policy"} and f["track_id"].n_unique() == 1
        assert f["manipulation_score"].is_null().all() and f["mask_path"].is_null().all()
        assert v[vid]["n_faces_dropped"] > 0 and v[vid]["n_tracks_dropped"] == 1


def test_label_policy_without_an_original(two_people, tmp_path):
    d, _ = two_people
    man = _manifest(tmp_path / "m.csv", [("pair_fake.mp4", "fake", "test", "SBI", "")])
    got = {}
    for policy in ("main", "all", "drop"):
        cfg = CFG.model_copy(update={"labels": LabelConfig(policy=policy)})
        run_extract(d, tmp_path / policy, cfg, progress=False, manifest=man)
        got[policy] = pl.read_parquet(tmp_path / policy / "faces.parquet")
    assert got["main"]["track_id"].unique().to_list() == [0] and set(got["main"]["label"]) == {1}
    assert got["all"]["track_id"].n_unique() == 2 and set(got["all"]["label"]) == {1}
    assert got["drop"].height == 0
    v = pl.read_parquet(tmp_path / "drop" / "videos.parquet").row(0, named=True)
    assert v["status"] == "no_face" and "label policy" in v["message"]


def test_a_changed_label_or_original_redoes_the_video(two_people, tmp_path):
    d, _ = two_people
    rows = [("pair.mp4", "real", "test", "", ""), ("pair_fake.mp4", "fake", "test", "SBI", "pair.mp4")]
    out = tmp_path / "out"
    run_extract(d, out, CFG, progress=False, manifest=_manifest(tmp_path / "a.csv", rows))
    again = run_extract(d, out, CFG, progress=False, manifest=_manifest(tmp_path / "b.csv", rows))
    assert again.processed == 0
    relabelled = [rows[0], ("pair_fake.mp4", "fake", "test", "SBI", "")]  # the link is gone
    s = run_extract(d, out, CFG, progress=False, manifest=_manifest(tmp_path / "c.csv", relabelled))
    assert s.processed == 1
    assert set(pl.read_parquet(out / "faces.parquet").filter(pl.col("video_id") == "pair_fake")["label_source"]) \
        == {"policy"}


def test_assign_labels_and_track_quality_rules():
    cfg = LabelConfig(min_score=0.01)
    tracks, areas = [0, 1, 0, 1], [100.0, 400.0, 100.0, 400.0]
    assert assign_labels(None, tracks, areas, None, cfg) == [(None, None)] * 4
    assert assign_labels(0, tracks, areas, None, cfg) == [(0, "video")] * 4
    assert assign_labels(1, tracks, areas, [0.2, 0.001, None, 0.0], cfg) == [
        (1, "original_diff"), (0, "original_diff"), (1, "original_diff"), (0, "original_diff")]  # None: track median
    drop = LabelConfig(unmanipulated="drop")
    assert assign_labels(1, tracks, areas, [0.2, 0.0, 0.3, 0.0], drop)[1] == (None, "original_diff")
    assert assign_labels(1, tracks, areas, None, cfg) == [(None, "policy"), (1, "policy")] * 2  # main = track 1
    assert assign_labels(1, tracks, areas, None, LabelConfig(policy="all")) == [(1, "policy")] * 4
    keep, dropped = filter_tracks([0, 0, 0, 1, 2, 2, 2], [0.99, 0.99, 0.99, 0.999, 0.96, 0.97, 0.97], 3, 0.5, 0.98)
    assert keep == {0} and "in 1 of 3 sampled frames" in dropped[1] and "mean detector score 0.967" in dropped[2]


def _transcode(src: Path, dst: Path, crf: int) -> None:
    """Re-encode every frame of ``src`` with x264 at ``crf`` (streaming): the same frames, compressed again."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        ist = i.streams.video[0]
        ost = o.add_stream("libx264", rate=ist.average_rate, options={"crf": str(crf), "preset": "veryfast"})
        ost.width, ost.height, ost.pix_fmt = ist.codec_context.width, ist.codec_context.height, "yuv420p"
        for frame in i.decode(ist):
            for p in ost.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                o.mux(p)
        for p in ost.encode():
            o.mux(p)


@needs_real
def test_shared_ffpp_fakes_score_far_above_faces_that_only_differ_by_compression(real_run, tmp_path):
    """FaceSwap_634_660 and NeuralTextures_004_982 against their originals (scripts/real/shared_real.csv), and a
    control: original_634 re-encoded at CRF 28, labelled fake with original_634 as its original."""
    out, _, videos, faces = real_run
    score = {}
    for vid in ("ffpp-FaceSwap_634_660", "ffpp-NeuralTextures_004_982"):
        f = faces.filter(pl.col("video_id") == vid)
        assert set(f["label"]) == {1} and set(f["label_source"]) == {"original_diff"}
        assert f.height == 32 and f["track_id"].unique().to_list() == [0]  # background tracks are gone
        assert f["mask_path"].is_not_null().all()
        score[vid] = f["manipulation_score"].min()
    nt = videos["ffpp/NeuralTextures_004_982.mp4"]
    assert nt["n_tracks_dropped"] == 2 and nt["n_faces_dropped"] == 6 and nt["pair_check"].startswith("aligned")
    d = tmp_path / "v"
    d.mkdir()
    (d / "original_634.mp4").symlink_to(REAL / "videos" / "ffpp" / "original_634.mp4")
    _transcode(REAL / "videos" / "ffpp" / "original_634.mp4", d / "reencoded_634.mp4", crf=28)
    man = _manifest(tmp_path / "m.csv", [("original_634.mp4", "real", "test", "", ""),
                                         ("reencoded_634.mp4", "fake", "test", "Reencode", "original_634.mp4")])
    run_extract(d, tmp_path / "out", ExtractConfig(workers=0), progress=False, manifest=man)
    control = pl.read_parquet(tmp_path / "out" / "faces.parquet").filter(pl.col("video_id") == "reencoded_634")
    assert control.height == 32 and set(control["label"]) == {0} and set(control["label_source"]) == {"original_diff"}
    worst = control["manipulation_score"].max()
    # measured: FaceSwap >= 0.54, NeuralTextures (mouth only, very low-bitrate original) >= 0.019, control <= 0.003
    assert score["ffpp-FaceSwap_634_660"] > 0.3 and score["ffpp-NeuralTextures_004_982"] > 0.012
    assert worst < 0.006 and score["ffpp-NeuralTextures_004_982"] > 3 * worst
    assert video_id_for("ffpp/original_634.mp4") in set(faces["video_id"])


def test_a_manipulated_face_the_detector_missed_does_not_hide_the_others():
    """Frame-level evidence on synthetic frames: grain everywhere (separate compression), a detected face altered
    by a few grey levels, and a second altered face the detector missed, lying in the 'background'. Without
    leaving compact differing areas out of the background, its 99.9th percentile lands inside the missed face
    and the detected face scores ~0."""
    from facepipe.faces.labels import frame_evidence
    from facepipe.faces.types import Face

    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, (360, 640, 3)).astype(np.float32)
    base = np.asarray(__import__("cv2").GaussianBlur(base, (0, 0), 3))
    grain = lambda: rng.normal(0, 1.5, base.shape)  # noqa: E731
    original = np.clip(base + grain(), 0, 255).astype(np.uint8)
    fake = base + grain()
    fake[100:200, 100:200] += 6  # the detected face, subtly altered
    fake[100:200, 400:500] += 25  # a face the detector missed, strongly altered
    fake = np.clip(fake, 0, 255).astype(np.uint8)
    face = Face(box=np.array([100, 100, 200, 200]), landmarks=np.zeros((5, 2)) + 150, score=1.0)
    m = np.array([[1.0, 0, -100], [0, 1.0, -100]])
    ev = frame_evidence(fake, original, [face], [m], 100, LabelConfig())
    assert ev.scores[0] > 0.5 and ev.masks[0].mean() > 100
    untouched = frame_evidence(np.clip(base + grain(), 0, 255).astype(np.uint8), original, [face], [m], 100,
                               LabelConfig())
    assert untouched.scores[0] < 0.01


def test_a_failing_batched_detection_falls_back_to_video_by_video(two_people, tmp_path, monkeypatch):
    """An original and its fake are detected in one batch (``detect_many``); when that call raises, each video is
    detected alone and the tables equal the batched run's (nothing is recorded as an error)."""
    from facepipe.faces.base import FaceDetector

    d, _ = two_people
    man = _manifest(tmp_path / "m.csv", [("pair.mp4", "real", "test", "", ""),
                                         ("pair_fake.mp4", "fake", "test", "SBI", "pair.mp4")])
    calls: list[int] = []
    orig = FaceDetector.detect_many

    def spy(self, batches):
        calls.append(len(batches))
        return orig(self, batches)

    monkeypatch.setattr(FaceDetector, "detect_many", spy)
    run_extract(d, tmp_path / "batched", CFG, progress=False, manifest=man)
    assert 2 in calls  # the pair went through one batched call

    def flaky(self, batches):
        if len(batches) > 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return orig(self, batches)

    monkeypatch.setattr(FaceDetector, "detect_many", flaky)
    s = run_extract(d, tmp_path / "alone", CFG, progress=False, manifest=man)
    assert s.statuses["ok"] == 2
    a, b = (pl.read_parquet(tmp_path / o / "faces.parquet") for o in ("batched", "alone"))
    assert a.height > 0 and a.equals(b)
