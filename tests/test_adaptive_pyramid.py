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
    """``det`` with the input bytes of its P-Net calls added to ``work[det.adaptive, "pnet"]`` and its R-Net
    candidates to ``work[det.adaptive, "rnet"]``."""
    run = det._run

    def wrapped(net, n, item_bytes, build):
        key = (det.adaptive, net)
        work[key] = work.get(key, 0) + (n * item_bytes if net == "pnet" else n)
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
    """Every frame's faces (boxes, landmarks, scores) equal the full pyramid's; with one face (a third of the frame's
    height, on a textured background) for less P-Net input and fewer R-Net candidates (5 of 24 frames are anchors, the
    others searched only around the face). Six faces
    round a table merge into one region of most of the frame: every level is searched whole, as the full pyramid
    does, so there is no saving (and no more work)."""
    import cv2

    from facepipe.faces.mtcnn import MTCNN
    from facepipe.stages.example import camera_frames, package_photo

    if scene == "six faces panning":
        frames = camera_frames(t1, (640, 360), 20, (420, 330, 0.62), (860, 330, 0.62))
    else:
        # a natural background without a face: the t1 photo cut into 24 px blocks, shuffled
        photo = cv2.resize(t1, (648, 360), interpolation=cv2.INTER_AREA)[:, :648]
        blocks = photo.reshape(15, 24, 27, 24, 3).swapaxes(1, 2).reshape(-1, 24, 24, 3)
        blocks = blocks[np.random.default_rng(0).permutation(len(blocks))].reshape(15, 27, 24, 24, 3)
        canvas = np.ascontiguousarray(blocks.swapaxes(1, 2).reshape(360, 648, 3)[:, :640])
        canvas[120:240, 260:380] = cv2.resize(package_photo("Tom_Hanks_54745.png"), (120, 120),
                                              interpolation=cv2.INTER_AREA)
        frames = camera_frames(canvas, (640, 360), 24, (310, 180, 1.0), (330, 185, 1.2))
    work: dict[tuple[bool, str], int] = {}
    full = _counted(MTCNN(min_score=0.95, threads=1), work).detect(frames)
    adaptive = _counted(MTCNN(min_score=0.95, threads=1, adaptive=True, anchor_every=8), work).detect(frames)
    assert sum(map(len, full)) >= len(frames) * (4 if scene == "six faces panning" else 1)
    _same_faces(full, adaptive)
    if scene == "one face zooming":
        assert work[True, "pnet"] < 0.6 * work[False, "pnet"]
        assert work[True, "rnet"] < 0.6 * work[False, "rnet"]
    else:
        assert work == {(True, k[1]): v for k, v in work.items()} | {(False, k[1]): v for k, v in work.items()}
