"""The bundled example: short face videos made at run time from photos shipped inside installed packages.

No network and no third-party media in the repository: the photos are insightface's
``data/images/t1.jpg`` (six people round a table) and ``Tom_Hanks_54745.png`` (one aligned face).
Camera motion (pan and zoom) over the photos gives real-looking clips; a rotated phone clip, a
no-face clip and three broken files exercise the error paths. The example is synthetic and small.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from facepipe.errors import InputError

log = logging.getLogger(__name__)


def package_photo(name: str) -> np.ndarray:
    """An RGB photo from insightface's package data.

    Args:
        name: file name under ``insightface/data/images`` (``t1.jpg``, ``Tom_Hanks_54745.png``).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        InputError: insightface is not installed or lacks the file.
    """
    try:
        path = resources.files("insightface") / "data" / "images" / name
        data = path.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as e:
        raise InputError(f"package photo insightface/data/images/{name} not found: {e}") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"package photo insightface/data/images/{name} does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def camera_frames(photo: np.ndarray, size: tuple[int, int], n: int, start: tuple[float, float, float],
                  end: tuple[float, float, float]) -> np.ndarray:
    """Frames of a virtual camera moving over a photo.

    Args:
        photo: (H, W, 3) uint8.
        size: output (width, height) in pixels.
        n: number of frames.
        start: (centre x, centre y, zoom) at the first frame; centre in photo pixels, zoom = output
            pixels per photo pixel.
        end: the same at the last frame; motion is eased (smoothstep) in between.

    Returns:
        (n, height, width, 3) uint8.
    """
    w, h = size
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        t = i / max(n - 1, 1)
        t = t * t * (3 - 2 * t)
        cx, cy, z = (a + (b - a) * t for a, b in zip(start, end))
        m = np.array([[z, 0, w / 2 - z * cx], [0, z, h / 2 - z * cy]], dtype=np.float64)
        out[i] = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out


def write_video(path: str | Path, frames: np.ndarray, fps: int = 25, rotation: int = 0, crf: int = 20) -> Path:
    """Encode (N, H, W, 3) uint8 RGB frames as H.264 MP4 with PyAV.

    Args:
        path: output file (parent created).
        frames: the frames *as coded*; even width and height.
        fps: frame rate.
        rotation: display rotation metadata in degrees, counter-clockwise (FFmpeg convention); a player
            (and decord) rotates the coded frames by it.
        crf: x264 constant rate factor.

    Returns:
        The path.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = frames.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.thread_count = 1
        if rotation:
            s.set_display_rotation(rotation)
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def write_audio_only(path: str | Path, seconds: float = 1.0) -> Path:
    """An MP4 holding only an AAC tone (no video stream)."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 16000
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=rate)
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, len(tone), 1024):
            fr = av.AudioFrame.from_ndarray(tone[None, i:i + 1024], format="fltp", layout="mono")
            fr.sample_rate = rate
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def truncate_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy ``src`` with its index moved to the front (faststart), then cut to ``keep`` of its bytes.

    The header then still announces every frame while only the first part decodes: the
    "header frame count lies" case seen in scraped datasets.
    """
    import av

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".full.mp4")
    with av.open(str(src)) as i, av.open(str(tmp), "w", options={"movflags": "faststart"}) as o:
        ist = i.streams.video[0]
        ost = o.add_stream_from_template(ist)
        for pkt in i.demux(ist):
            if pkt.dts is None:
                continue
            pkt.stream = ost
            o.mux(pkt)
    data = tmp.read_bytes()
    tmp.unlink()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def build_example(out_dir: str | Path, seconds: float = 2.0, fps: int = 25) -> Path:
    """Write the example video folder.

    Contents (relative to ``out_dir``): ``friends/poker_pan.mp4`` (six faces, camera pan),
    ``friends/poker_zoom.mp4`` (zoom onto three faces), ``portrait/tom_hanks.mp4`` (one face moving),
    ``phone/rotated_-90.mp4`` (portrait clip stored sideways with -90 degree rotation metadata),
    ``noface/table.mp4`` (the poker table only), ``broken/truncated.mp4`` (header lies),
    ``broken/empty.mp4`` (0 bytes), ``broken/not_a_video.mp4`` (text), ``broken/audio_only.mp4``.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    n = max(2, int(seconds * fps))
    t1 = package_photo("t1.jpg")  # 1280x886, six faces
    log.info("building the example videos in %s", out)
    pan = camera_frames(t1, (640, 360), n, (420, 330, 0.62), (860, 330, 0.62))
    write_video(out / "friends" / "poker_pan.mp4", pan, fps)
    zoom = camera_frames(t1, (640, 360), n, (640, 300, 0.5), (800, 330, 0.9))
    write_video(out / "friends" / "poker_zoom.mp4", zoom, fps)

    tom = package_photo("Tom_Hanks_54745.png")  # 112x112 aligned face
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[:, :, 2] = 120
    big = cv2.resize(tom, (224, 224), interpolation=cv2.INTER_CUBIC)
    y0 = 68
    canvas[y0:y0 + 224, 208:432] = big
    tom_frames = camera_frames(canvas, (640, 360), n, (300, 180, 1.0), (340, 190, 1.15))
    write_video(out / "portrait" / "tom_hanks.mp4", tom_frames, fps)

    portrait = camera_frames(t1, (360, 640), n, (1000, 300, 1.0), (1000, 330, 1.1))
    coded = np.ascontiguousarray(np.rot90(portrait, 1, axes=(1, 2)))  # stored sideways
    write_video(out / "phone" / "rotated_-90.mp4", coded, fps, rotation=-90)

    table = camera_frames(t1, (640, 240), n, (500, 760, 1.0), (780, 760, 1.0))
    write_video(out / "noface" / "table.mp4", table, fps)

    broken = out / "broken"
    truncate_copy(out / "friends" / "poker_pan.mp4", broken / "truncated.mp4", keep=0.5)
    (broken / "empty.mp4").write_bytes(b"")
    (broken / "not_a_video.mp4").write_text("this is a text file with a video extension\n")
    write_audio_only(broken / "audio_only.mp4")
    return out
