"""The adaptive pyramid (MTCNN, ``face_detector.adaptive``, on by default; issue 26) finds what the full pyramid
finds: on every shared real clip (the crowd and stage clips included) the extract stage keeps the same tracks with
the same faces, landmarks within 2 % of the face width; the frame-level detector gives the same faces."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from tests.conftest import REAL


def _cfg(adaptive: bool) -> ExtractConfig:
    return ExtractConfig.model_validate({"face_detector": {"name": "mtcnn", "adaptive": adaptive},
                                         "track": {"select": "all"}, "workers": 2})


@pytest.mark.slow
@pytest.mark.real_data
def test_the_adaptive_pyramid_keeps_the_tracks_and_landmarks_of_the_full_one(tmp_path):
    full = run_extract(REAL / "videos", tmp_path / "full", _cfg(False), progress=False)
    adaptive = run_extract(REAL / "videos", tmp_path / "adaptive", _cfg(True), progress=False)
    assert full.fingerprint != adaptive.fingerprint  # a result parameter: the stage reruns when it changes
    a = pl.read_parquet(tmp_path / "full" / "faces.parquet")
    b = pl.read_parquet(tmp_path / "adaptive" / "faces.parquet")
    tracks = lambda d: set(d.select("video_id", "track_id").unique().iter_rows())  # noqa: E731
    assert tracks(a) == tracks(b) and len(tracks(a)) >= 12
    assert a.height >= 300
    keys = ["video_id", "frame_index", "track_id"]
    j = a.join(b, on=keys, how="full", suffix="_ad", coalesce=True)
    assert j.height == a.height == b.height  # the same faces of every kept track
    lm, lm_ad = np.stack(j["landmarks"].to_numpy()), np.stack(j["landmarks_ad"].to_numpy())
    width = np.stack(j["box"].to_numpy())[:, 2] - np.stack(j["box"].to_numpy())[:, 0]
    err = np.abs(lm - lm_ad).max(axis=(1, 2)) / width
    assert err.max() <= 0.02, j.filter(pl.Series(err > 0.02)).select(keys)
    for name in ("videos.parquet",):
        va, vb = pl.read_parquet(tmp_path / "full" / name), pl.read_parquet(tmp_path / "adaptive" / name)
        assert va.select("video_id", "status").sort("video_id").equals(vb.select("video_id", "status").sort("video_id"))


def _counted(det, work: dict):
    """``det`` with the input bytes of its P-Net calls added to ``work[det.adaptive]``."""
    run = det._run

    def wrapped(net, n, item_bytes, build):
        work[det.adaptive] = work.get(det.adaptive, 0) + (n * item_bytes if net == "pnet" else 0)
        return run(net, n, item_bytes, build)

    det._run = wrapped
    return det


def _same_faces(full, adaptive) -> None:
    for fa, fb in zip(full, adaptive, strict=True):
        assert len(fa) == len(fb)
        for a, b in zip(fa, fb):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
            assert abs(a.score - b.score) < 1e-5


@pytest.mark.parametrize("scene", ["six faces panning", "one face zooming"])
def test_adaptive_detection_equals_the_full_pyramid_for_less_work(t1, scene):
    """Every frame's faces (boxes, landmarks, scores) equal the full pyramid's, for less P-Net input: with one face
    (a third of the frame's height) 77 % of the full pyramid's pixels (5 of 24 frames are anchors, the fine levels of
    the others only around the face); six faces round a table merge into one region of most of the frame, so there
    the saving is small."""
    import cv2

    from facepipe.faces.mtcnn import MTCNN
    from facepipe.stages.example import camera_frames, package_photo

    if scene == "six faces panning":
        frames = camera_frames(t1, (640, 360), 20, (420, 330, 0.62), (860, 330, 0.62))
    else:
        canvas = np.full((360, 640, 3), 100, np.uint8)
        canvas[68:292, 208:432] = cv2.resize(package_photo("Tom_Hanks_54745.png"), (224, 224),
                                             interpolation=cv2.INTER_CUBIC)
        frames = camera_frames(canvas, (640, 360), 24, (310, 180, 1.0), (330, 185, 1.2))
    work: dict[bool, int] = {}
    full = _counted(MTCNN(min_score=0.95, threads=1), work).detect(frames)
    adaptive = _counted(MTCNN(min_score=0.95, threads=1, adaptive=True, anchor_every=8), work).detect(frames)
    assert sum(map(len, full)) >= len(frames) * (4 if scene == "six faces panning" else 1)
    _same_faces(full, adaptive)
    assert work[True] < (0.85 if scene == "one face zooming" else 1.0) * work[False]
