from __future__ import annotations

import numpy as np
import pytest

from facepipe.errors import VideoError
from facepipe.stages.example import truncate_copy, write_audio_only, write_video
from facepipe.video import FrameSampler, SamplingConfig, probe, read_frames, sample_indices
from tests.conftest import REAL, needs_real


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 300, 1001])
def test_uniform_spreads_over_all_frames(n):
    idx = sample_indices(n, 25.0, SamplingConfig(num_frames=32))
    assert len(idx) == min(32, n)
    assert idx[0] == 0 and idx[-1] == n - 1
    assert np.all(np.diff(idx) > 0)
    if n > 32:  # evenly spread: gaps differ by at most one frame
        gaps = np.diff(idx)
        assert gaps.max() - gaps.min() <= 1


def test_stride_fps_and_cap():
    assert sample_indices(25, 25.0, SamplingConfig(strategy="stride", stride=10)).tolist() == [0, 10, 20]
    idx = sample_indices(250, 25.0, SamplingConfig(strategy="fps", fps=2.0))  # 10 s at 25 fps
    assert len(idx) == 20 and np.all(np.diff(idx) == 12) or np.all(np.isin(np.diff(idx), [12, 13]))
    capped = sample_indices(1000, 25.0, SamplingConfig(strategy="stride", stride=1, max_frames=7))
    assert len(capped) == 7 and capped[0] == 0 and capped[-1] == 999
    assert len(sample_indices(0, 25.0, SamplingConfig())) == 0


def _marker_frames(n: int, h: int, w: int) -> np.ndarray:
    """Frames with a white block in the top-left quarter and the frame number in a bottom bar."""
    f = np.zeros((n, h, w, 3), np.uint8)
    f[:, : h // 4, : w // 4] = 255
    for i in range(n):
        f[i, -16:, :] = (i * 20) % 256
    return f


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotation_metadata_gives_upright_frames(tmp_path, rotation):
    upright = _marker_frames(6, 320, 240) if rotation % 180 else _marker_frames(6, 240, 320)
    k = rotation // 90  # display = rot90(coded, k)  =>  coded = rot90(upright, -k)
    coded = np.ascontiguousarray(np.rot90(upright, -k, axes=(1, 2)))
    path = write_video(tmp_path / "rot.mp4", coded, fps=10, rotation=rotation)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.height, info.width) == upright.shape[1:3]
    got = read_frames(path, info, SamplingConfig(num_frames=6))
    assert got.frames.shape == upright.shape
    # The white block is back in the top-left quarter.
    tl = got.frames[:, : upright.shape[1] // 4, : upright.shape[2] // 4].mean()
    br = got.frames[:, upright.shape[1] // 2: -20, upright.shape[2] // 2:].mean()
    assert tl > 200 and br < 40


def test_truncated_file_samples_from_decodable_frames(tmp_path, t1):
    from facepipe.stages.example import camera_frames

    full = write_video(tmp_path / "full.mp4", camera_frames(t1, (320, 240), 60, (640, 400, 0.3), (660, 420, 0.35)))
    cut = truncate_copy(full, tmp_path / "cut.mp4", keep=0.4)
    info = probe(cut)
    assert info.frames_header == 60  # the header still claims every frame
    got = read_frames(cut, info, SamplingConfig(num_frames=8))
    assert 0 < got.frames_decodable < 60
    assert got.indices.max() < got.frames_decodable
    assert got.indices[-1] == got.frames_decodable - 1  # spread over what decodes, up to its end
    assert got.decode_error and "header frames" in got.decode_error


def test_bad_files_raise_with_status(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("hello\n" * 100)
    audio = write_audio_only(tmp_path / "audio.mp4")
    for path, status, words in [(empty, "decode_error", "empty file"), (text, "unsupported", "not a video"),
                                (audio, "unsupported", "no video stream")]:
        with pytest.raises(VideoError) as e:
            probe(path)
        assert e.value.status == status and words in str(e.value) and str(path) in str(e.value)


@needs_real
def test_real_corrupted_mp4_counts_decodable_frames():
    p = REAL / "videos/edge/corrupted.mp4"
    info = probe(p)
    got = read_frames(p, info, SamplingConfig(num_frames=32))
    assert info.frames_header == 50
    assert got.frames_decodable == 28  # PyAV/FFmpeg decode 28 frames, then invalid NAL units
    assert len(got.indices) == 28 and got.decode_error


@needs_real
def test_real_truncated_download_is_decode_error_with_hint(tmp_path):
    """The first 600 KB of a real FF++ clip (its moov atom comes after the media data): no index, so FFmpeg cannot
    open it; that is a damaged video (decode_error, with the likely cause), not 'not a video container'."""
    cut = tmp_path / "original_634.mp4"
    cut.write_bytes((REAL / "videos/ffpp/original_634.mp4").read_bytes()[:600 * 1024])
    with pytest.raises(VideoError) as e:
        probe(cut)
    assert e.value.status == "decode_error"
    assert "moov atom missing: truncated download?" in str(e.value) and str(cut) in str(e.value)
    p = tmp_path / "x.mp4"  # only a file whose first box is ftyp counts as a cut MP4
    p.write_bytes(b"\x00\x00\x00\x10abcdefghijklmnop" * 10)
    with pytest.raises(VideoError) as e:
        probe(p)
    assert e.value.status == "unsupported"


@needs_real
def test_real_rotated_mov_is_upright():
    p = REAL / "videos/noface/video_90.mov"
    info = probe(p)
    assert info.rotation == -90 and (info.width, info.height) == (320, 568)
    got = read_frames(p, info, SamplingConfig())
    assert got.frames.shape[1:] == (568, 320, 3)


def test_chunked_sampling_equals_one_batch(tmp_path, t1):
    from facepipe.stages.example import camera_frames

    path = write_video(tmp_path / "v.mp4", camera_frames(t1, (320, 240), 40, (640, 400, 0.3), (700, 420, 0.4)))
    info = probe(path)
    cfg = SamplingConfig(strategy="stride", stride=4)
    whole = read_frames(path, info, cfg)
    sampler = FrameSampler(path, info, cfg, chunk_size=3)
    chunks = list(sampler)
    assert [len(c.indices) for c in chunks] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate([c.indices for c in chunks]), whole.indices)
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), whole.frames)
    assert sampler.n_sampled == 10 and sampler.frames_decodable == 40 and sampler.decode_error is None


def _decord_only(path, info, cfg, chunk_size=16):
    s = FrameSampler(path, info, cfg, chunk_size=chunk_size)
    s._pyav_plan = lambda: None  # the decord path, as before the one-pass PyAV decoder
    return list(s), s


@needs_real
@pytest.mark.parametrize("rel", ["ffpp/FaceSwap_634_660.mp4", "ffpp/original_004.mp4", "dfdc/brtujopkby.mp4",
                                 "misc/short_hamilton_clip.mp4", "noface/video_90.mov"])
def test_one_pass_pyav_equals_decord_on_real_clips(rel):
    """The one-pass PyAV decode that skips unneeded non-reference frames gives decord's frame numbering, pixels
    (bit-identical) and timestamps, in chunks, for uniform and stride samples: B-frame clips (FF++ c23, DFDC), a
    stream with a start offset (hamilton) and a rotation-tagged MOV."""
    p = REAL / "videos" / rel
    info = probe(p)
    for cfg in (SamplingConfig(num_frames=32), SamplingConfig(strategy="stride", stride=7)):
        sampler = FrameSampler(p, info, cfg, chunk_size=16)
        assert sampler._pyav_plan() is not None
        fast = list(sampler)
        ref, ref_sampler = _decord_only(p, info, cfg)
        assert sampler._fast_done
        assert [len(c.indices) for c in fast] == [len(c.indices) for c in ref]
        for a, b in zip(fast, ref):
            np.testing.assert_array_equal(a.indices, b.indices)
            np.testing.assert_array_equal(a.frames, b.frames)
            np.testing.assert_allclose(a.timestamps_s, b.timestamps_s, atol=1e-5)
        assert sampler.frames_decodable == ref_sampler.frames_decodable


@needs_real
def test_avi_with_b_frames_is_decoded_in_order_by_pyav(monkeypatch):
    """AVI packets carry decode-order timestamps (pts 1, 2, 3 ... while frames come out 1, 2, 4, 3 ...), so frame
    numbering by packet timestamp would be wrong there; decord's get_batch gave another sampled frame's pixels for
    frame 102 of this file in 2 to 3 of 20 readers (dmlc/decord#195). Such files are decoded in order with PyAV:
    the sample is a full decode's frames at the sampled indices, every time."""
    import hashlib

    import av

    p = REAL / "videos/misc/S001C001P001R001A001_rgb.avi"
    info = probe(p)
    assert FrameSampler(p, info, SamplingConfig())._pyav_plan() is None
    with av.open(str(p)) as c:
        full = [hashlib.sha1(f.to_ndarray(format="rgb24").tobytes()).hexdigest() for f in c.decode(video=0)]
    monkeypatch.setattr("facepipe.video._decord", lambda: pytest.fail("decord read an AVI with B-frames"))
    for _ in range(3):
        s = FrameSampler(p, info, SamplingConfig(num_frames=8))
        got = [(int(i), hashlib.sha1(f.tobytes()).hexdigest()) for c in s for i, f in zip(c.indices, c.frames)]
        assert s._reorders and got == [(i, full[i]) for i in sample_indices(len(full), info.fps, s.cfg).tolist()]
