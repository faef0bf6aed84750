"""Video probing and frame sampling. The only module that imports decord or decodes video with PyAV.

The container is probed first with PyAV, which reads the stream parameters and the display rotation without
decoding the whole file and gives precise errors for files that are not video at all.

Sampled frames of MP4/MOV/Matroska files are decoded with PyAV in one pass that skips the non-reference frames the
sample does not need (:meth:`FrameSampler._pyav_sampled`): bit-identical frames to decord's; on the FF++/DFDC bench
clips about 45 % of the frames are skipped and decoding takes about 15 % less CPU than decoding every frame
(``scripts/bench_extract.py``). Other containers (AVI, whose packets carry decode-order timestamps) go to decord
(which applies the container's rotation metadata, so a phone clip tagged -90
degrees comes out upright), unless their stream has B-frames: decord returns wrong frames for those now and then
(dmlc/decord#195), so PyAV decodes them in order.

Header frame counts can lie (truncated uploads, broken muxers): when neither can deliver the sampled frames, the
file is decoded sequentially with PyAV to count the frames that really decode, and the sample is drawn again from
those. When fewer frames decode than the header says and the container's own headers show the file cut short, the
sampler reports a decode error although the decoder stopped without one (FFmpeg ends a truncated AVI quietly).

Still images (``.jpg``, ``.png``, ``.webp``, ``.bmp``) are one-frame items, decoded with Pillow (:func:`read_image`:
EXIF orientation applied; palette, grey, CMYK, alpha and 16-bit images made 8-bit RGB; an animation's first frame;
images over :data:`MAX_IMAGE_PIXELS` refused before decoding); folders of images are image sequences (one frame per
file). Video frames over :data:`MAX_FRAME_PIXELS` are refused too, from the stream's parameters.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Optional

import numpy as np
from pydantic import Field

from facepipe.config import Section
from facepipe.errors import VideoError
from facepipe.ids import IMAGE_EXTS

log = logging.getLogger(__name__)

VERBOSE_ENV = "FACEPIPE_VERBOSE"
"""Set (to ``1``) by ``facepipe -v``, inherited by worker processes: FFmpeg's own log messages are shown."""


def ffmpeg_verbose() -> bool:
    """Whether FFmpeg's own log messages are shown (``facepipe -v``, i.e. :data:`VERBOSE_ENV` set)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def _av():
    """PyAV, its FFmpeg messages routed to Python logging (loggers ``libav.*``, level WARNING) under ``-v``; otherwise
    off (PyAV's default: nothing printed). facepipe reports what matters of a failure itself (the file's status
    and message)."""
    import av

    av.logging.set_level(av.logging.WARNING if ffmpeg_verbose() else None)  # None: PyAV's default, off
    return av


def _decord():
    """decord, its bundled FFmpeg quiet (it would print raw, colour-coded lines such as ``[mov,mp4,...] partial
    file`` to stderr); under ``-v`` its warnings are shown (on stderr: that FFmpeg copy has no Python callback)."""
    import decord

    decord.logging.set_level(decord.logging.WARNING if ffmpeg_verbose() else decord.logging.QUIET)
    return decord


class SamplingConfig(Section):
    """Which frames of a video are decoded (``extract.sampling``).

    ``mode: frames`` (default) samples isolated frames by ``strategy``:

    ``uniform``: ``num_frames`` indices spread evenly over the *decodable* frames, first and last
    included (``numpy.linspace`` rounded down), as in the FF++ / DeepfakeBench preprocessing (32 frames
    per video is the field's default). ``stride``: every ``stride``-th frame. ``fps``: ``fps`` frames per
    second of video time. ``max_frames`` caps ``stride`` and ``fps`` (evenly thinned when exceeded).

    ``mode: clips`` samples ``num_clips`` clips of ``clip_length`` frames, ``frame_step`` frames apart within a
    clip (1 = consecutive), for the video forgery detectors that read clips (FTCN, AltFreezing: 32 consecutive
    frames; TALL: 4; LipForensics: 25). The clips' start frames are spread evenly over the decodable frames, first
    and last possible start included, as torchcodec's ``clips_at_regular_indices`` places them (see
    :func:`clip_indices`); clips overlap when the video is shorter than ``num_clips`` clips. ``strategy`` and its
    options are not used in this mode.
    """

    mode: Literal["frames", "clips"] = "frames"
    strategy: Literal["uniform", "stride", "fps"] = "uniform"
    num_frames: int = Field(32, ge=1)
    stride: int = Field(10, ge=1)
    fps: float = Field(1.0, gt=0)
    max_frames: Optional[int] = Field(None, ge=1)
    frame_count: Literal["decodable", "header"] = "decodable"
    num_clips: int = Field(4, ge=1)
    clip_length: int = Field(16, ge=1)
    frame_step: int = Field(1, ge=1)

    @property
    def clip_span(self) -> int:
        """Source frames one clip covers, first to last inclusive: ``(clip_length - 1) * frame_step + 1``."""
        return (self.clip_length - 1) * self.frame_step + 1


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
    """Read stream parameters and rotation of ``path`` (decodes at most one frame). A still image (:func:`is_still`)
    is read from its header only (a truncated one fails when :class:`FrameSampler` decodes it): ``frames_header``
    1, ``fps`` 0, ``codec`` ``image/<format>``, ``rotation`` the EXIF orientation's, already applied to
    ``width``/``height``.

    Raises:
        VideoError: status ``decode_error`` for an empty or unreadable file (a dangling symlink or a symlink loop
            included), an MP4/MOV cut before its index (``ftyp`` but no ``moov`` box: "moov atom missing:
            truncated download?"), a file FFmpeg cannot open whose MP4/MOV boxes or AVI ``RIFF`` header claim
            more bytes than it holds ("truncated download?") or whose MP4 index FFmpeg cannot parse ("damaged"),
            or a first frame that does not decode; status ``unsupported`` for a file that is not a media
            container or has no video stream (e.g. audio only), and for a still image over :data:`MAX_IMAGE_PIXELS`
            or video frames over :data:`MAX_FRAME_PIXELS` (from the headers, before decoding).
    """
    av = _av()
    p = Path(path)
    if p.is_dir():
        return _probe_images(p)
    if is_still(p):
        return _probe_still(p)
    _check_file(p)
    try:
        container = av.open(str(p))
    except av.error.InvalidDataError:
        damage = _container_damage(p, opened=False)
        if damage:
            raise VideoError(f"{p}: {damage}") from None
        raise VideoError(f"{p}: not a video container FFmpeg can read", status="unsupported") from None
    except (av.error.FFmpegError, OSError) as e:
        damage = _container_damage(p, opened=False)
        raise VideoError(f"{p}: {damage or f'cannot open: {e}'}") from None
    with container:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(f"{p}: no video stream (streams: {', '.join(kinds)})", status="unsupported")
        st = container.streams.video[0]
        if st.codec_context is None:  # FFmpeg found the stream but not enough of it to set up a decoder
            raise VideoError(f"{p}: video stream without decodable parameters{_damage_note(p) or ': damaged file?'}")
        _check_frame_pixels(p, st.codec_context.width, st.codec_context.height)  # before decoding one
        rotation = 0
        try:
            first = next(container.decode(st))
            rotation = int(round(getattr(first, "rotation", 0) or 0))
            rotation = (rotation + 179) % 360 - 179  # one of 0, 90, -90, 180
        except StopIteration:
            raise VideoError(f"{p}: video stream holds no decodable frame{_damage_note(p)}") from None
        except av.error.FFmpegError as e:
            raise VideoError(f"{p}: first frame does not decode: {e}{_damage_note(p)}") from None
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


SEQUENCE_FPS = 25.0
"""Frame rate assumed for image-sequence folders (WildDeepfake, DF40 frames), which carry none."""


def image_sequence(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, in natural frame order (by the number in the name, then name)."""
    import re

    files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS]

    def order(f: Path):
        nums = re.findall(r"\d+", f.stem)
        return (int(nums[-1]) if nums else -1, f.name)

    return sorted(files, key=order)


_EXIF_ROTATION = {3: 180, 6: -90, 8: 90, 5: -90, 7: 90}
"""EXIF orientation tag -> the display rotation it implies, in FFmpeg's sign convention (counter-clockwise)."""


def is_still(path: str | Path) -> bool:
    """``path`` is a single image file (one-frame item), judged by its extension."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTS and not p.is_dir()


def _bmff_boxes(f, size: int) -> tuple[list[bytes], int]:
    """The types of the top-level ISO-BMFF boxes of the open file ``f`` of ``size`` bytes (box headers only, at most
    10 000) and the offset where the last one ends by its header (past ``size`` when the file is cut short)."""
    import struct

    types, off = [], 0
    while off + 8 <= size and len(types) < 10_000:
        f.seek(off)
        n, kind = struct.unpack(">I4s", f.read(8))
        if n == 1:
            if off + 16 > size:
                break
            n = struct.unpack(">Q", f.read(8))[0]
        elif n == 0:  # the box runs to the end of the file
            n = size - off
        if n < 8:
            break
        types.append(kind)
        off += n
    return types, off


def _container_damage(p: Path, *, opened: bool) -> str | None:
    """Why ``p`` is a damaged video rather than no video, read from its container's headers (nothing decoded);
    ``None`` when nothing says so.

    An ISO-BMFF file (MP4/MOV: an ``ftyp`` box first) without a ``moov`` box (the index of the samples, written last
    unless the file was made with ``faststart``), as a download cut short leaves it; or whose last top-level box
    claims bytes past the end of the file; or with an index but no samples (no ``mdat``, nor fragments: a
    ``faststart`` file cut right after its index); or, when FFmpeg could not open it (``opened`` False), whose boxes
    are all there but unreadable to FFmpeg (a damaged index). An AVI (``RIFF....AVI ``) whose ``RIFF`` size claims
    more bytes than the file holds."""
    import struct

    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(12)
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                claimed = struct.unpack("<I", head[4:8])[0] + 8
                return (f"AVI file cut short: its RIFF header claims {claimed} bytes, the file holds {size}: "
                        "truncated download?") if claimed > size else None
            types, off = _bmff_boxes(f, size)
    except OSError:
        return None
    if not types or types[0] != b"ftyp":
        return None
    boxes = ", ".join(t.decode("latin-1") for t in types[:6]) + (", ..." if len(types) > 6 else "")
    cut = f"; its last box claims {off - size} bytes past the end of the file ({size} bytes)" if off > size else ""
    if b"moov" not in types:
        return (f"MP4 container without its index (top-level boxes: {boxes}{cut}): moov atom missing: "
                "truncated download?")
    if cut:
        return f"MP4 container cut short (top-level boxes: {boxes}{cut}): truncated download?"
    if b"mdat" not in types and b"moof" not in types:
        return f"MP4 container without its samples (top-level boxes: {boxes}; no mdat box): truncated download?"
    if not opened:
        return f"MP4 container whose index FFmpeg cannot read (top-level boxes: {boxes}): damaged file?"
    return None


def _damage_note(p: Path) -> str:
    """``"; "`` and :func:`_container_damage`'s finding for an opened file, or ``""``."""
    damage = _container_damage(p, opened=True)
    return f"; {damage}" if damage else ""


def _check_file(p: Path) -> None:
    """Raise :class:`VideoError`: ``decode_error`` for a missing (a dangling symlink, a symlink loop), unreadable or
    empty file; ``unsupported`` for what is no regular file (a FIFO, which FFmpeg and Pillow would wait on forever,
    a device)."""
    import stat

    try:
        st = p.stat()
    except OSError as e:
        link = f" (a symbolic link to {os.readlink(p)})" if p.is_symlink() else ""
        raise VideoError(f"{p}: cannot read: {e.strerror}{link}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
        raise VideoError(f"{p}: not a regular file ({kind}): not read", status="unsupported")
    size = st.st_size
    if size == 0:
        raise VideoError(f"{p}: empty file (0 bytes)")
    if not os.access(p, os.R_OK):
        raise VideoError(f"{p}: cannot read: permission denied")


MAX_IMAGE_PIXELS = 89_478_485
"""The largest still image decoded, in pixels: Pillow's default ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb
threshold; 0.25 GiB as 8-bit RGB). Pillow refuses images over twice that but only warns between the two; facepipe
refuses every image over it, from the header, before decoding (status ``unsupported``): a 13 000 x 13 000 PNG of
168 KB (zeros deflated 1000:1) took a worker to 2 GB and 14 s before."""


MAX_FRAME_PIXELS = 8192 * 4320
"""The largest video frame decoded, in pixels: DCI 8K (UHD 8K is 7680 x 4320). Larger frames are refused from the
stream's parameters, before a frame is decoded (status ``unsupported``): a decoder holds several frames (H.264 up to
16 reference frames), and an 8192 x 8192 H.264 MP4 of 198 KB took 2.1 GB to sample 8 frames, a 260-byte GIF whose
screen is 16 000 x 16 000 5 GB and 13 s."""


@contextmanager
def _pillow(p: Path):
    """Pillow's errors as :class:`VideoError`: no image format -> ``unsupported``, truncated/corrupt ->
    ``decode_error``; Pillow's decompression-bomb warning silenced (:func:`_check_pixels` refuses those images)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except UnidentifiedImageError:
        raise VideoError(f"{p}: not an image format Pillow can read", status="unsupported") from None
    except Image.DecompressionBombError as e:
        raise VideoError(f"{p}: {e}", status="unsupported") from None
    except (OSError, SyntaxError, ValueError) as e:  # Pillow's truncated / corrupt stream errors
        raise VideoError(f"{p}: image is truncated or corrupt: {e}") from None


def _check_pixels(p: Path, im) -> None:
    """Raise :class:`VideoError` (``unsupported``) for an image over :data:`MAX_IMAGE_PIXELS` (from its header)."""
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        raise VideoError(f"{p}: image of {w} x {h} pixels is over the limit of {MAX_IMAGE_PIXELS} pixels "
                         "(facepipe.video.MAX_IMAGE_PIXELS): not decoded (a decompression bomb?)", status="unsupported")


def _check_frame_pixels(p: Path, w: int, h: int) -> None:
    """Raise :class:`VideoError` (``unsupported``) for video frames over :data:`MAX_FRAME_PIXELS`."""
    if w * h > MAX_FRAME_PIXELS:
        raise VideoError(f"{p}: frames of {w} x {h} pixels are over the limit of {MAX_FRAME_PIXELS} pixels "
                         "(facepipe.video.MAX_FRAME_PIXELS): not decoded (a decompression bomb?)", status="unsupported")


def _orientation(im) -> int:
    return int(im.getexif().get(0x0112, 1) or 1)


def read_image(path: str | Path) -> tuple[np.ndarray, int, str]:
    """Decode a still image the way a viewer shows it.

    EXIF orientation is applied (pixels come out upright); palette, 1-bit, grey, CMYK and YCbCr images are
    converted to RGB; transparency is composited over white; 16-bit images are scaled to 8 bits (``/ 257``). An
    animated image (GIF, APNG, WebP; whatever its extension) gives its first frame.

    Returns:
        ((H, W, 3) uint8 RGB upright, rotation in degrees the EXIF tag implied (FFmpeg's counter-clockwise
        sign; 0 without one), Pillow's format name, e.g. ``JPEG``).

    Raises:
        VideoError: status ``decode_error`` for an empty, unreadable, truncated or corrupt image; ``unsupported``
            for a file that is no image format Pillow reads, and for an image over :data:`MAX_IMAGE_PIXELS` (refused
            from its header, before decoding).
    """
    from PIL import Image, ImageOps

    p = Path(path)
    _check_file(p)
    with _pillow(p), Image.open(p) as im:
        _check_pixels(p, im)
        fmt, orientation = im.format or "image", _orientation(im)
        im.load()
        return _rgb8(ImageOps.exif_transpose(im)), _EXIF_ROTATION.get(orientation, 0), fmt


def _rgb8(im) -> np.ndarray:
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def _probe_still(p: Path) -> VideoInfo:
    """From the image header only (the pixels are decoded once, by :class:`FrameSampler`)."""
    from PIL import Image

    _check_file(p)
    with _pillow(p), Image.open(p) as im:
        _check_pixels(p, im)
        (w, h), fmt, orientation = im.size, im.format or "image", _orientation(im)
    if orientation in (5, 6, 7, 8):  # a quarter turn: displayed sideways
        w, h = h, w
    return VideoInfo(fps=0.0, frames_header=1, width=w, height=h, rotation=_EXIF_ROTATION.get(orientation, 0),
                     duration_s=0.0, codec=f"image/{fmt.lower()}")


def _probe_images(folder: Path) -> VideoInfo:
    import cv2

    files = image_sequence(folder)
    if not files:
        raise VideoError(f"{folder}: folder holds no images ({', '.join(IMAGE_EXTS)})", status="unsupported")
    first = cv2.imread(str(files[0]), cv2.IMREAD_COLOR)
    if first is None:
        raise VideoError(f"{files[0]}: first image of the sequence does not decode")
    h, w = first.shape[:2]
    return VideoInfo(fps=SEQUENCE_FPS, frames_header=len(files), width=w, height=h, rotation=0,
                     duration_s=len(files) / SEQUENCE_FPS, codec="images")


def header_frame_count(info: VideoInfo) -> int:
    """The frame count OpenCV's ``CAP_PROP_FRAME_COUNT`` reports: the stream's ``nb_frames``, else
    ``floor(duration_s * fps + 0.5)`` (OpenCV's FFmpeg backend estimate)."""
    if info.frames_header > 0:
        return int(info.frames_header)
    return int(np.floor(info.duration_s * info.fps + 0.5)) if info.duration_s > 0 and info.fps > 0 else 0


def clip_indices(n_frames: int, cfg: SamplingConfig) -> np.ndarray:
    """The frames of each clip (``mode: clips``) of a video of ``n_frames`` decodable frames.

    Clip ``k`` starts at ``floor(linspace(0, n_frames - span, num_clips))[k]`` (``span`` =
    :attr:`SamplingConfig.clip_span`): starts spread evenly from the first frame to the last start at which a whole
    clip fits, torchcodec's ``clips_at_regular_indices`` rule over the whole video; a start repeated by the rounding
    (a video barely longer than a clip) is kept once, so fewer than ``num_clips`` clips may come back.

    Args:
        n_frames: number of decodable frames (>= 0).
        cfg: ``num_clips``, ``clip_length``, ``frame_step``.

    Returns:
        (K, clip_length) int64 source frame indices, each row increasing by ``frame_step``; K = 0 when the video is
        shorter than one clip (``n_frames < span``).
    """
    span = cfg.clip_span
    if n_frames < span:
        return np.zeros((0, cfg.clip_length), dtype=np.int64)
    starts = np.unique(np.linspace(0, n_frames - span, cfg.num_clips).astype(np.int64))
    return starts[:, None] + np.arange(cfg.clip_length, dtype=np.int64)[None, :] * cfg.frame_step


def sample_indices(n_frames: int, fps: float, cfg: SamplingConfig) -> np.ndarray:
    """Frame indices to decode from a video of ``n_frames`` decodable frames.

    Args:
        n_frames: number of decodable frames (>= 0).
        fps: average frame rate, used by the ``fps`` strategy (falls back to 25 when unknown).
        cfg: the sampling strategy and its parameters.

    Returns:
        (K,) int64, strictly increasing, each in ``[0, n_frames)``; empty when ``n_frames == 0``.
        ``uniform`` returns ``min(num_frames, n_frames)`` indices including the first and last frame; ``mode:
        clips`` the union of :func:`clip_indices` (empty when the video is shorter than one clip).
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=np.int64)
    if cfg.mode == "clips":  # every clip's frames, each decoded once (clips may share frames)
        return np.unique(clip_indices(n_frames, cfg))
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


class FrameSampler:
    """Decode the sampled frames of one video in chunks of bounded memory.

    Iterating yields :class:`SampledFrames` chunks of at most ``chunk_size`` frames in increasing frame
    order. MP4/MOV/Matroska files are decoded with PyAV in one pass that skips unneeded non-reference frames
    (:meth:`_pyav_sampled`); other containers, and files where that pass cannot start, with decord (``get_batch``
    decodes only up to each chunk's last frame and skips converting the others), except streams with B-frames:
    decord's ``get_batch`` returns a wrong frame for some of those now and then (on the shared NTU AVI, H.264 with
    B-frames: in 2 to 3 of 20 readers, another sampled frame's pixels in place of frame 102; dmlc/decord#195), so
    they are decoded sequentially with PyAV, as below (as fast there). When both fail, the frames
    that really decode are counted with PyAV
    and the sample is drawn again from those; chunks already delivered are kept and the new sample
    continues after the last delivered frame (with the default ``uniform`` 32 frames there is a single
    chunk, so the sample is exactly the one drawn over the decodable frames).

    After iteration, ``frames_decodable`` and ``decode_error`` describe the file (``decode_error`` is also set when
    fewer frames decode than the header says and the container's headers show the file cut short, see
    :func:`_container_damage`). With ``mode: clips``, ``clips``
    is the clip plan ((K, clip_length) int64 frame indices, :func:`clip_indices`) from the moment the first chunk
    is yielded; it is drawn again, like the sample, when the frames that decode are recounted.

    Args:
        path: the video file.
        info: its :func:`probe` result.
        cfg: the sampling strategy.
        chunk_size: frames per chunk (memory: ``chunk_size * H * W * 3`` bytes).

    Raises:
        VideoError: (while iterating) no frame decodes at all; ``unsupported`` with ``mode: clips`` for a still
            image or a video shorter than one clip.
    """

    def __init__(self, path: str | Path, info: VideoInfo, cfg: SamplingConfig, chunk_size: int = 64) -> None:
        self.path = str(path)
        self.info = info
        self.cfg = cfg
        self.chunk_size = int(chunk_size)
        self.frames_decodable = 0
        self.decode_error: str | None = None
        self.n_sampled = 0
        self.clips = np.zeros((0, cfg.clip_length), dtype=np.int64)
        self._reorders = False

    def __iter__(self) -> Iterator[SampledFrames]:
        yield from self._decode()
        self._note_truncation()

    def _note_truncation(self) -> None:
        """When fewer frames decoded than the header says and the container's headers show the file cut short
        (:func:`_container_damage`), say so in ``decode_error``, setting it when the decoder stopped without an
        error: a truncated download, not a header that lies."""
        header = self.info.frames_header
        if not header or self.frames_decodable >= header or is_still(self.path):
            return
        cut = _container_damage(Path(self.path), opened=True)
        if cut and self.decode_error:
            self.decode_error += f"; {cut}"
        elif cut:
            self.decode_error = f"{self.frames_decodable} of {header} header frames decode: {cut}"

    def _decode(self) -> Iterator[SampledFrames]:
        if Path(self.path).is_dir():
            yield from self._images()
            return
        if is_still(self.path) and self.cfg.mode == "clips":
            raise VideoError(f"{self.path}: a still image has no clips (sampling.mode clips)", status="unsupported")
        if is_still(self.path):  # one frame, whatever the sampling
            img, _, _ = read_image(self.path)
            self.frames_decodable = 1
            yield self._chunk([(0, 0.0, img)], 1)
            return
        last = -1
        plan = self._pyav_plan()
        if plan is not None:
            self._fast_done = False
            for chunk in self._pyav_sampled(*plan):
                last = int(chunk.indices[-1])
                yield chunk
            if self._fast_done:
                return
            if last >= 0:  # part of the sample delivered, then the decoder failed: count what decodes
                yield from self._pyav(after=last)
                return
        if self._reorders:  # decord returns wrong frames for those now and then: PyAV decodes them in order
            yield from self._pyav(after=-1)
            return
        decord = _decord()
        try:
            vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=1)
            n = len(vr)
            idx = self._indices(n)
            if len(idx) == 0:
                raise VideoError(f"{self.path}: decord found no frames")
            expected = (self.info.height, self.info.width, 3)
            for k in range(0, len(idx), self.chunk_size):
                part = idx[k:k + self.chunk_size]
                frames = vr.get_batch(part.tolist()).asnumpy()
                if frames.shape[1:] != expected:
                    # decord's rotation filter mis-sizes some small rotated streams; trust PyAV then.
                    raise RuntimeError(f"decord gave frames of shape {frames.shape[1:]}, expected {expected}")
                ts = vr.get_frame_timestamp(part.tolist())[:, 0].astype(np.float64)
                self.frames_decodable = n
                self.n_sampled += len(part)
                last = int(part[-1])
                yield SampledFrames(frames, part, ts, n, None)
            return
        except VideoError:
            raise
        except Exception as e:  # decord raises DECORDError / RuntimeError without a stable type
            msg = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
            log.debug("%s: decord could not deliver the sample (%s); recounting decodable frames with PyAV",
                     self.path, msg)
        yield from self._pyav(after=last)

    def _pyav_plan(self) -> Optional[tuple[int, dict[int, int]]]:
        """``(number of frames, {presentation timestamp: frame index} of the sample)`` for the one-pass PyAV
        decode, or None to leave the file to decord.

        Frame ``i`` is the packet with the ``i``-th smallest presentation timestamp (decord's numbering); the count
        is the number of packets, as decord's ``len``. Only MP4/MOV/Matroska, whose packets carry presentation
        timestamps (AVI's carry decode order); None when a packet has no or a repeated timestamp. Demuxing only:
        no frame is decoded. Sets ``self._reorders`` when the stream has B-frames (frames leave the decoder in
        another order than they enter it).
        """
        av = _av()

        try:
            with av.open(self.path) as c:
                self._reorders = bool(c.streams.video and c.streams.video[0].codec_context.has_b_frames)
                if not ({"mp4", "mov", "matroska", "webm"} & set(c.format.name.split(","))) or not c.streams.video:
                    return None
                pts = [p.pts for p in c.demux(c.streams.video[0]) if p.size]
        except (av.error.FFmpegError, OSError) as e:
            log.debug("%s: PyAV could not demux (%s); trying decord", self.path, e)
            return None
        if not pts or any(p is None for p in pts) or len(set(pts)) != len(pts):
            return None
        pts.sort()
        idx = self._indices(len(pts))
        if len(idx) == 0:
            return None
        return len(pts), {pts[i]: int(i) for i in idx.tolist()}

    def _pyav_sampled(self, n: int, want: dict[int, int]) -> Iterator[SampledFrames]:
        """Decode the planned sample in one PyAV pass; sets ``self._fast_done`` when every sampled frame came out.

        Packets of frames outside the sample are sent with ``skip_frame = NONREF``: the decoder drops them when no
        other frame references them (H.264/HEVC B-frames) and decodes them otherwise, so the sampled frames come out
        bit-identical to a full decode (test against decord on the shared clips). Decoding stops after the last
        sampled frame. Frames leave the decoder in presentation order, so chunks are in increasing frame order.
        """
        av = _av()

        rot = int(round(self.info.rotation / 90)) % 4
        expected = (self.info.height, self.info.width, 3)
        total = len(want)
        seen, last = 0, -1
        block = idx = ts = None  # the chunk being filled, written in place (no second copy of the frames)
        try:
            with av.open(self.path) as c:
                st = c.streams.video[0]
                cc = st.codec_context
                cc.thread_count = 1
                start, tb = (st.start_time or 0), float(st.time_base)
                for pkt in c.demux(st):
                    cc.skip_frame = "DEFAULT" if pkt.pts in want else "NONREF"
                    for fr in cc.decode(pkt if pkt.size else None):
                        i = want.get(fr.pts)
                        if i is None or i <= last:
                            continue
                        arr = fr.to_ndarray(format="rgb24")
                        if rot:
                            arr = np.rot90(arr, rot)
                        if arr.shape != expected:
                            log.debug("%s: PyAV gave frames of shape %s, expected %s", self.path, arr.shape, expected)
                            return
                        if block is None:
                            m = min(self.chunk_size, total - seen)
                            block, idx, ts = np.empty((m, *expected), np.uint8), np.empty(m, np.int64), np.empty(m)
                            j = 0
                        block[j], idx[j], ts[j] = arr, i, (fr.pts - start) * tb
                        j, seen, last = j + 1, seen + 1, i
                        if j == len(block):
                            self.frames_decodable = n
                            self.n_sampled += j
                            yield SampledFrames(block, idx, ts, n, None)
                            block = None
                    if seen == total:
                        break
        except (av.error.FFmpegError, ValueError) as e:
            log.debug("%s: PyAV could not deliver the sample (%s)", self.path, e)
            return
        if seen == total:
            self._fast_done = True

    def _indices(self, decodable: int, fps: float | None = None) -> np.ndarray:
        """The sample over ``decodable`` frames, or over the header's count (``frame_count: header``) cut to the
        decodable ones."""
        fps = self.info.fps if fps is None else fps
        if self.cfg.mode == "clips":  # clips lie within the decodable frames, whatever the header says
            self.clips = clip_indices(decodable, self.cfg)
            if not len(self.clips):
                raise VideoError(f"{self.path}: {decodable} decodable frame(s), fewer than one clip spans "
                                 f"(clip_length {self.cfg.clip_length}, frame_step {self.cfg.frame_step}: "
                                 f"{self.cfg.clip_span} frames)", status="unsupported")
            return np.unique(self.clips)
        if self.cfg.frame_count == "header":
            idx = sample_indices(header_frame_count(self.info) or decodable, fps, self.cfg)
            return idx[idx < decodable]
        return sample_indices(decodable, fps, self.cfg)

    def _images(self) -> Iterator[SampledFrames]:
        """An image-sequence folder: frame i is the i-th image; undecodable images end the sequence."""
        import cv2

        files = image_sequence(Path(self.path))
        idx = self._indices(len(files), SEQUENCE_FPS)
        buf: list[tuple[int, float, np.ndarray]] = []
        self.frames_decodable = len(files)
        for i in idx.tolist():
            img = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            if img is None:
                self.decode_error = f"{files[i]}: image does not decode"
                break
            if img.shape[:2] != (self.info.height, self.info.width):  # odd sizes in a sequence: conform
                img = cv2.resize(img, (self.info.width, self.info.height), interpolation=cv2.INTER_AREA)
            buf.append((i, i / SEQUENCE_FPS, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)))
            if len(buf) == self.chunk_size:
                yield self._chunk(buf, len(files))
                buf = []
        if buf:
            yield self._chunk(buf, len(files))
        if not self.n_sampled:
            raise VideoError(f"{self.path}: no image of the sequence decodes")

    def _pyav(self, after: int) -> Iterator[SampledFrames]:
        av = _av()

        n, err = 0, None
        try:
            with av.open(self.path) as c:
                for _ in c.decode(c.streams.video[0]):
                    n += 1
        except av.error.FFmpegError as e:
            err = str(e)
        if n == 0:
            raise VideoError(f"{self.path}: no frame decodes" + (f": {err}" if err else ""))
        self.frames_decodable = n
        if err is not None:
            self.decode_error = f"decoder error after {n} of {self.info.frames_header} header frames: {err}"
        idx = self._indices(n)
        keep = set(idx[idx > after].tolist())
        rot = int(round(self.info.rotation / 90)) % 4
        buf: list[tuple[int, float, np.ndarray]] = []
        count = 0
        try:
            with av.open(self.path) as c:
                for frame in c.decode(c.streams.video[0]):
                    if count >= n:
                        break
                    if count in keep:
                        arr = frame.to_ndarray(format="rgb24")
                        if rot:
                            arr = np.ascontiguousarray(np.rot90(arr, rot))
                        t = float(frame.time) if frame.time is not None else count / (self.info.fps or 25.0)
                        buf.append((count, t, arr))
                        if len(buf) == self.chunk_size:
                            yield self._chunk(buf, n)
                            buf = []
                    count += 1
        except av.error.FFmpegError:
            pass  # the error was recorded by the counting pass
        if buf:
            yield self._chunk(buf, n)

    def _chunk(self, buf: list[tuple[int, float, np.ndarray]], n: int) -> SampledFrames:
        self.n_sampled += len(buf)
        return SampledFrames(np.stack([b[2] for b in buf]), np.array([b[0] for b in buf], dtype=np.int64),
                             np.array([b[1] for b in buf], dtype=np.float64), n, self.decode_error)


def read_frames(path: str | Path, info: VideoInfo, cfg: SamplingConfig) -> SampledFrames:
    """Decode all sampled frames of ``path`` at once (see :class:`FrameSampler` for the streaming form).

    Returns:
        One :class:`SampledFrames` holding every sampled frame.

    Raises:
        VideoError: no frame decodes at all.
    """
    sampler = FrameSampler(path, info, cfg)
    chunks = list(sampler)
    return SampledFrames(
        np.concatenate([c.frames for c in chunks]),
        np.concatenate([c.indices for c in chunks]),
        np.concatenate([c.timestamps_s for c in chunks]),
        sampler.frames_decodable,
        sampler.decode_error,
    )
