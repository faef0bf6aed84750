"""Rotation robustness: a real FF++ clip turned sideways (pixels rotated, or upright pixels with a rotation tag) or
upside down gives the same faces and upright crops as the upright clip."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import REAL, needs_real

from facepipe.stages.example import write_video
from facepipe.stages.extract import ExtractConfig, run
from facepipe.video import SamplingConfig, probe, read_frames

N = 8


def _cfg(rotations: bool) -> ExtractConfig:
    return ExtractConfig.model_validate({"sampling": {"num_frames": N}, "face_detector": {"name": "mtcnn",
                                         "rotations": rotations}, "align": {"size": 128}, "workers": 0})


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    src = REAL / "videos" / "ffpp" / "original_634.mp4"
    s = read_frames(src, probe(src), SamplingConfig(num_frames=N))
    frames = s.frames[:, ::2, ::2]  # 640x360: quicker, still a large face
    d = tmp_path_factory.mktemp("rot")
    write_video(d / "upright.mp4", frames, fps=5)
    write_video(d / "sideways.mp4", np.ascontiguousarray(np.rot90(frames, 1, axes=(1, 2))), fps=5)
    write_video(d / "upside_down.mp4", np.ascontiguousarray(np.rot90(frames, 2, axes=(1, 2))), fps=5)
    write_video(d / "tagged.mp4", frames, fps=5, rotation=90)  # upright pixels, displayed sideways
    return d


def _crops(out) -> dict[str, list[np.ndarray]]:
    import cv2

    faces = pl.read_parquet(out / "faces.parquet").sort("video_id", "frame_index")
    res: dict[str, list[np.ndarray]] = {}
    for r in faces.iter_rows(named=True):
        img = cv2.imread(str(out / r["crop_path"]))
        res.setdefault(r["video_id"], []).append(cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA).astype(float))
    return res


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two 32 px thumbnails (blind to a pixel of landmark jitter, not to rotation)."""
    return float(np.abs(a - b).mean())


@needs_real
def test_rotated_clips_give_upright_crops(clips, tmp_path):
    run(clips, tmp_path / "on", _cfg(True), progress=False)
    crops = _crops(tmp_path / "on")
    assert len(crops["upright"]) == N
    for vid in ("sideways", "upside_down", "tagged"):
        assert len(crops[vid]) == N, vid
        for a, b in zip(crops[vid], crops["upright"]):
            # the same face, upright: re-encoding and landmark jitter give 0-5.5, a quarter turn ~40
            assert _diff(a, b) < 10, (vid, _diff(a, b))
    for a in crops["upright"]:  # the measure sees a crop turned by 90 or 180 degrees
        assert min(_diff(np.rot90(a, 1), a), _diff(np.rot90(a, 2), a)) > 15
    videos = {r["video_id"]: r for r in pl.read_parquet(tmp_path / "on" / "videos.parquet").iter_rows(named=True)}
    assert videos["tagged"]["rotation"] == 90 and (videos["tagged"]["width"], videos["tagged"]["height"]) == (360, 640)


@needs_real
def test_without_rotation_retries_sideways_faces_are_lost_or_tilted(clips, tmp_path):
    """What rotations fix: MTCNN alone misses the sideways face or returns landmarks that tilt the crop."""
    run(clips, tmp_path / "off", _cfg(False), progress=False)
    crops = _crops(tmp_path / "off")
    bad = 0
    for vid in ("sideways", "upside_down", "tagged"):
        got = crops.get(vid, [])
        bad += N - len(got)
        bad += sum(_diff(a, b) >= 10 for a, b in zip(got, crops["upright"]))
    assert bad >= N
