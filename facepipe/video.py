"""Video probing and frame sampling. The only module that imports decord.

Frames are decoded with decord (which applies the container's rotation metadata, so a phone clip
tagged -90 degrees comes out upright). The container is probed first with PyAV, which reads the
stream parameters and the display rotation without decoding the whole file and gives precise errors
for files that are not video at all.

Header frame counts can lie (truncated uploads, broken muxers): when decord cannot deliver the
sampled frames, the file is decoded sequentially with PyAV to count the frames that really decode,
and the sample is drawn again from those.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facepipe.config import SamplingConfig
from facepipe.errors import VideoError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream.

    Attributes:
        fps: average frame rate, frames per second (0.0 when the container gives none).
        frames_header: frame count from the container header (may be wrong; 0 when absent).
        width: displayed width in pixels, after rotation.
        height: displayed height in pixels, after rotation.
        rotation: display rotation in degrees, counter-clockwise, as FFmpeg reports it (0, 90, -90, 180).
        duration_s: stream duration in seconds (0.0 when absent).
        codec: codec name, e.g. ``h264``.
    """

    fps: float
    frames_header: int
    width: int
    height: int
    rotation: int
    duration_s: float
    codec: str


@dataclass(frozen=True)
class SampledFrames:
    """Frames drawn from one video.

    Attributes:
        frames: (N, H, W, 3) uint8 RGB, upright (rotation applied), in increasing frame order.
        indices: (N,) int64 source frame indices (0-based, presentation order).
        timestamps_s: (N,) float64 presentation timestamps in seconds.
        frames_decodable: number of frames that really decode (the header count when decord
            delivered the sample without error).
        decode_error: the decoder's message when the file is damaged part-way, else ``None``.
    """

    frames: np.ndarray
    indices: np.ndarray
    timestamps_s: np.ndarray
    frames_decodable: int
    decode_error: str | None


def probe(path: str | Path) -> VideoInfo:
    """Read stream parameters and rotation of ``path`` (decodes at most one frame).

    Raises:
        VideoError: status ``decode_error`` for an empty or unreadable file or a first frame that
            does not decode; status ``unsupported`` for a file that is not a media container or has
            no video stream (e.g. audio only).
    """
    import av

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise VideoError(f"{p}: cannot read: {e.strerror}") from None
    if size == 0:
        raise VideoError(f"{p}: empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{p}: cannot read: permission denied")
    try:
        container = av.open(str(p))
    except av.error.InvalidDataError:
        raise VideoError(f"{p}: not a video container FFmpeg can read", status="unsupported") from None
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{p}: cannot open: {e}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"{p}: no video stream (streams: {', '.join(kinds)})", status="unsupported")
        st = container.streams.video[0]
        rotation = 0
        try:
            first = next(container.decode(st))
            rotation = int(round(getattr(first, "rotation", 0) or 0))
            rotation = (rotation + 179) % 360 - 179  # one of 0, 90, -90, 180
        except StopIteration:
            raise VideoError(f"{p}: video stream holds no decodable frame") from None
        except av.error.FFmpegError as e:
            raise VideoError(f"{p}: first frame does not decode: {e}") from None
        fps = float(st.average_rate) if st.average_rate else 0.0
        duration = float(st.duration * st.time_base) if st.duration and st.time_base else 0.0
        if not duration and container.duration:
            duration = container.duration / 1_000_000
        w, h = st.codec_context.width, st.codec_context.height
        if rotation % 180:
            w, h = h, w
        return VideoInfo(
            fps=fps,
            frames_header=int(st.frames or 0),
            width=int(w),
            height=int(h),
            rotation=rotation,
            duration_s=duration,
            codec=st.codec_context.name,
        )


def sample_indices(n_frames: int, fps: float, cfg: SamplingConfig) -> np.ndarray:
    """Frame indices to decode from a video of ``n_frames`` decodable frames.

    Args:
        n_frames: number of decodable frames (>= 0).
        fps: average frame rate, used by the ``fps`` strategy (falls back to 25 when unknown).
        cfg: the sampling strategy and its parameters.

    Returns:
        (K,) int64, strictly increasing, each in ``[0, n_frames)``; empty when ``n_frames == 0``.
        ``uniform`` returns ``min(num_frames, n_frames)`` indices including the first and last frame.
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if cfg.strategy == "uniform":
        if n_frames <= cfg.num_frames:
            return np.arange(n_frames, dtype=np.int64)
        return np.unique(np.linspace(0, n_frames - 1, cfg.num_frames).astype(np.int64))
    if cfg.strategy == "stride":
        idx = np.arange(0, n_frames, cfg.stride, dtype=np.int64)
    else:
        rate = fps if fps > 0 else 25.0
        step = rate / cfg.fps
        idx = np.unique(np.floor(np.arange(0, n_frames, step)).astype(np.int64))
        idx = idx[idx < n_frames]
    if cfg.max_frames is not None and len(idx) > cfg.max_frames:
        idx = idx[np.linspace(0, len(idx) - 1, cfg.max_frames).astype(np.int64)]
    return idx


def read_frames(path: str | Path, info: VideoInfo, cfg: SamplingConfig) -> SampledFrames:
    """Decode the sampled frames of ``path``.

    Tries decord first (``get_batch`` decodes only up to the last sampled frame and skips
    conversion of the rest); when decord fails, counts decodable frames with PyAV and samples again.

    Args:
        path: the video file.
        info: its :func:`probe` result.
        cfg: the sampling strategy.

    Raises:
        VideoError: no frame decodes at all.
    """
    import decord

    p = str(path)
    try:
        vr = decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        idx = sample_indices(n, info.fps, cfg)
        if len(idx) == 0:
            raise VideoError(f"{p}: decord found no frames")
        frames = vr.get_batch(idx.tolist()).asnumpy()
        ts = vr.get_frame_timestamp(idx.tolist())[:, 0].astype(np.float64)
        del vr
        if frames.shape[1:] != (info.height, info.width, 3):
            # decord's rotation filter mis-sizes some small rotated streams; trust PyAV then.
            raise RuntimeError(f"decord gave frames of shape {frames.shape[1:]}, expected "
                               f"{(info.height, info.width, 3)}")
        return SampledFrames(frames, idx, ts, n, None)
    except VideoError:
        raise
    except Exception as e:  # decord raises DECORDError / RuntimeError without a stable type
        log.info("%s: decord could not deliver the sample (%s); recounting decodable frames with PyAV",
                 p, str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__)
    return _read_frames_pyav(p, info, cfg)


def _read_frames_pyav(path: str, info: VideoInfo, cfg: SamplingConfig) -> SampledFrames:
    import av

    def decode(keep: set[int] | None):
        kept: list[tuple[int, float, np.ndarray]] = []
        count, err = 0, None
        try:
            with av.open(path) as c:
                st = c.streams.video[0]
                for frame in c.decode(st):
                    if keep is not None and count in keep:
                        arr = frame.to_ndarray(format="rgb24")
                        k = int(round(info.rotation / 90)) % 4
                        if k:
                            arr = np.ascontiguousarray(np.rot90(arr, k))
                        t = float(frame.time) if frame.time is not None else count / (info.fps or 25.0)
                        kept.append((count, t, arr))
                    count += 1
        except av.error.FFmpegError as e:
            err = str(e)
        return count, err, kept

    n, err, _ = decode(None)
    if n == 0:
        raise VideoError(f"{path}: no frame decodes" + (f": {err}" if err else ""))
    idx = sample_indices(n, info.fps, cfg)
    _, _, kept = decode(set(idx.tolist()))
    kept = [k for k in kept if k[0] < n]
    frames = np.stack([k[2] for k in kept])
    message = None
    if err is not None:
        message = f"decoder error after {n} of {info.frames_header} header frames: {err}"
    return SampledFrames(
        frames,
        np.array([k[0] for k in kept], dtype=np.int64),
        np.array([k[1] for k in kept], dtype=np.float64),
        n,
        message,
    )
