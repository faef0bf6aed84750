"""The bundled example: short face videos made at run time from photos shipped inside installed packages.

No network and no third-party media in the repository: the photos are insightface's
``data/images/t1.jpg`` (six people round a table) and ``Tom_Hanks_54745.png`` (one aligned face).
Camera motion (pan and zoom) over the photos gives real-looking clips, self-blended fakes (SBI) give
their fake twins; a rotated phone clip, a no-face clip and four broken files exercise the error paths.
The example is synthetic and small.
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


def faststart_copy(src: str | Path, dst: str | Path) -> Path:
    """``src``'s video stream remuxed into ``dst`` with its index (``moov``) first (``faststart``; packets copied,
    nothing re-encoded)."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), "w", options={"movflags": "faststart"}) as o:
        ist = i.streams.video[0]
        ost = o.add_stream_from_template(ist)
        for pkt in i.demux(ist):
            if pkt.dts is None:
                continue
            pkt.stream = ost
            o.mux(pkt)
    return Path(dst)


def truncate_copy(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy ``src`` with its index moved to the front (:func:`faststart_copy`), then cut to ``keep`` of its bytes.

    The header then still announces every frame while only the first part decodes: the
    "header frame count lies" case seen in scraped datasets.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = faststart_copy(src, dst.with_name(dst.name + ".full.mp4"))
    data = tmp.read_bytes()
    tmp.unlink()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def self_blend(photo: np.ndarray, faces, rng: np.random.Generator) -> np.ndarray:
    """Self-blended image (Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images", CVPR 2022).

    Each face is blended with a slightly altered copy of itself (a small colour shift: gains within ±5 %, offsets
    within ±4 grey levels; Gaussian blur; 1-5% rescale and a small shift about the face centre) through a soft
    elliptical mask around the inner face (eyes, nose, mouth from the five landmarks), leaving the blending boundary,
    colour mismatch and the smoother, resampled inner face that forgery detectors must find (a face swap's generated
    face is usually smoother than its frame). The blur is always applied, not drawn against sharpening as SBI's
    training transforms are: with one test identity and three training ones, a per-face coin flip decides the
    example's test AUC (a model learns "blurred = fake" from the training faces and the test face was sharpened), not
    what the model learned; for the same reason the colour shift is small (a model fitted to three faces' random
    colour directions ranks the others' backwards).

    Args:
        photo: (H, W, 3) uint8 RGB.
        faces: :class:`facepipe.faces.types.Face` objects in ``photo``'s pixels.
        rng: seeded generator (the result is a function of it).

    Returns:
        (H, W, 3) uint8 RGB, the photo with every face self-blended.
    """
    out = photo.astype(np.float32)
    h, w = photo.shape[:2]
    for f in faces:
        lm = f.landmarks.astype(np.float64)
        centre = lm.mean(axis=0)
        eye_d = float(np.linalg.norm(lm[1] - lm[0]))
        # source: the same face, altered
        src = photo.astype(np.float32)
        src = src * rng.uniform(0.95, 1.05, size=3) + rng.uniform(-4, 4, size=3)
        src = cv2.GaussianBlur(src, (0, 0), rng.uniform(0.8, 1.6))
        s = rng.uniform(1.01, 1.05)
        t = rng.uniform(-0.03, 0.03, size=2) * eye_d
        m = np.array([[s, 0, (1 - s) * centre[0] + t[0]], [0, s, (1 - s) * centre[1] + t[1]]])
        src = cv2.warpAffine(src, m, (w, h), borderMode=cv2.BORDER_REFLECT)
        # mask: a soft ellipse over eyes, nose and mouth, randomly stretched
        mask = np.zeros((h, w), np.float32)
        axes = (int(eye_d * rng.uniform(0.9, 1.2)), int(eye_d * rng.uniform(1.1, 1.4)))
        angle = float(np.degrees(np.arctan2(lm[1, 1] - lm[0, 1], lm[1, 0] - lm[0, 0])))
        cv2.ellipse(mask, (int(centre[0]), int(centre[1] + 0.15 * eye_d)), axes, angle, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, eye_d * rng.uniform(0.08, 0.2)))[..., None]
        mask *= rng.uniform(0.75, 1.0)
        out = mask * src + (1 - mask) * out
    return np.clip(out, 0, 255).astype(np.uint8)


EXAMPLE_MANIFEST = "manifest.csv"
"""The example's manifest file (in the ``csv`` form :func:`facepipe.manifest.read_manifest` reads)."""


def build_example(out_dir: str | Path, seconds: float = 2.0, fps: int = 25, seed: int = 0) -> Path:
    """Write the example video folder and its manifest.

    Real clips move a virtual camera over package photos; each has a self-blended fake twin
    (method ``SBI``) made from the same photo and camera path. Splits keep identities apart:
    train shows the three people on the left of ``t1.jpg``, val the three on the right, test Tom Hanks;
    a fake always sits with its original. Also: ``phone/rotated_-90.mp4`` (val; portrait clip stored
    sideways with -90 degree rotation metadata), ``noface/table.mp4`` (train; the poker table only) and
    ``broken/`` (truncated, empty, text, audio only). The example is synthetic and small.

    Returns:
        ``out_dir`` as a Path; ``out_dir/manifest.csv`` lists every file with label, split, method,
        source paths and identity ids (the ``csv`` adapter's layout).
    """
    import csv

    from facepipe.faces.mtcnn import MTCNN

    out = Path(out_dir)
    n = max(2, int(seconds * fps))
    rng = np.random.default_rng(seed)
    detector = MTCNN(max_side=1280)
    t1 = package_photo("t1.jpg")  # 1280x886: Rachel, Monica, Ross | Chandler, Joey, Phoebe
    t1_fake = self_blend(t1, detector.detect([t1])[0], rng)
    tom = package_photo("Tom_Hanks_54745.png")  # 112x112 aligned face
    canvas = np.full((360, 640, 3), 90, np.uint8)
    canvas[:, :, 2] = 120
    canvas[68:292, 208:432] = cv2.resize(tom, (224, 224), interpolation=cv2.INTER_CUBIC)
    canvas_fake = self_blend(canvas, detector.detect([canvas])[0], rng)
    log.info("building the example videos in %s", out)

    left, right = ["t1-rachel", "t1-monica", "t1-ross"], ["t1-chandler", "t1-joey", "t1-phoebe"]
    rows = []

    def clip(rel, photo, size, start, end, label, split, ids, method="", source="", rotation=0):
        frames = camera_frames(photo, size, n, start, end)
        if rotation:
            frames = np.ascontiguousarray(np.rot90(frames, 1, axes=(1, 2)))  # stored sideways
        write_video(out / rel, frames, fps, rotation=rotation)
        rows.append(dict(path=rel, label=label, split=split, method=method, source_ids=source,
                         identity_ids=";".join(ids)))

    path_l = ((300, 330, 1.0), (345, 320, 1.0))
    path_r = ((1000, 260, 0.8), (1020, 270, 0.85))  # x from 600: Ross (left group) stays out
    clip("friends/left_pan.mp4", t1, (640, 360), *path_l, "real", "train", left)
    clip("friends/left_pan_sbi.mp4", t1_fake, (640, 360), *path_l, "fake", "train", left, "SBI",
         "friends/left_pan.mp4")
    clip("friends/right_pan.mp4", t1, (640, 360), *path_r, "real", "val", right)
    clip("friends/right_pan_sbi.mp4", t1_fake, (640, 360), *path_r, "fake", "val", right, "SBI",
         "friends/right_pan.mp4")
    path_t = ((300, 180, 1.0), (340, 190, 1.15))
    clip("portrait/tom_hanks.mp4", canvas, (640, 360), *path_t, "real", "test", ["tom-hanks"])
    clip("portrait/tom_hanks_sbi.mp4", canvas_fake, (640, 360), *path_t, "fake", "test", ["tom-hanks"], "SBI",
         "portrait/tom_hanks.mp4")
    clip("phone/rotated_-90.mp4", t1, (360, 640), (1000, 300, 1.0), (1000, 330, 1.1), "real", "val",
         ["t1-joey"], rotation=-90)
    clip("noface/table.mp4", t1, (640, 240), (500, 760, 1.0), (780, 760, 1.0), "real", "train", [])

    broken = out / "broken"
    truncate_copy(out / "friends" / "left_pan.mp4", broken / "truncated.mp4", keep=0.5)
    (broken / "empty.mp4").write_bytes(b"")
    (broken / "not_a_video.mp4").write_text("this is a text file with a video extension\n")
    write_audio_only(broken / "audio_only.mp4")
    for name in ("truncated.mp4", "empty.mp4", "not_a_video.mp4", "audio_only.mp4"):
        ids = left if name == "truncated.mp4" else []
        rows.append(dict(path=f"broken/{name}", label="real", split="train", method="", source_ids="",
                         identity_ids=";".join(ids)))
    with open(out / EXAMPLE_MANIFEST, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out
