"""Still images as one-frame items: the shared real photos with their expected face counts, the image formats and
modes users have (palette, grey, CMYK, RGBA, 16-bit, WebP, BMP, EXIF orientation), and broken files."""

from __future__ import annotations

import csv
import math

import cv2
import numpy as np
import polars as pl
import pytest
from conftest import REAL, needs_real
from PIL import Image

from facepipe.errors import VideoError
from facepipe.stages.extract import ExtractConfig, run
from facepipe.video import FrameSampler, SamplingConfig, probe, read_image

CFG = ExtractConfig.model_validate({"face_detector": {"name": "mtcnn"}, "workers": 0, "track": {"select": "all"}})
"""Every face of a photo is kept (the default ``track.select: main`` keeps the largest one only)."""


def _expected() -> dict[str, int]:
    with open(REAL / "MANIFEST.csv", newline="") as f:
        return {r["path"]: int(r["faces"]) for r in csv.DictReader(f) if r["kind"] == "image" and r["faces"] != ""}


@needs_real
def test_shared_photos_give_their_face_counts(tmp_path):
    """Every shared photo with a known face count (group photos of 2-7 people, a CMYK JPEG, a 240p image, face
    crops, photos without a face) gives exactly that many faces; all come out ok / no_face."""
    expected = _expected()
    assert len(expected) >= 15
    src = tmp_path / "images"
    for rel in expected:
        dst = src / rel.replace("images/", "", 1)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(REAL / rel)
    run(src, tmp_path / "out", CFG, progress=False)
    videos = pl.read_parquet(tmp_path / "out" / "videos.parquet")
    got = {f"images/{r['path']}": r for r in videos.iter_rows(named=True)}
    assert set(got) == set(expected)
    for rel, n in expected.items():
        r = got[rel]
        assert (r["n_faces"], r["status"]) == (n, "ok" if n else "no_face"), (rel, r["n_faces"], r["message"])
        assert r["frames_sampled"] == 1 and r["codec"].startswith("image/")


def _eye_angles(out) -> dict[str, float]:
    faces = pl.read_parquet(out / "faces.parquet")
    res = {}
    for r in faces.iter_rows(named=True):
        (lx, ly), (rx, ry) = r["landmarks"][0], r["landmarks"][1]
        res[r["video_id"]] = math.degrees(math.atan2(ry - ly, rx - lx))
    return res


@needs_real
def test_image_formats_and_modes_come_out_upright_rgb(tmp_path):
    """One real portrait in every format and mode: a face with a level eye line in each; EXIF orientation applied
    (pixels stored sideways, tag 6); a truncated JPEG is decode_error, a text file named .jpg unsupported."""
    base = Image.open(REAL / "images" / "faces" / "one_face.png").convert("RGB")
    rgb = np.asarray(base)
    d = tmp_path / "imgs"
    d.mkdir()
    base.convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    base.convert("L").save(d / "grey.png")
    rgba = base.convert("RGBA")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, : rgb.shape[1] // 8] = 0  # a transparent band at the left
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(d / "rgba.png")
    grey16 = (cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    cv2.imwrite(str(d / "grey16.png"), grey16)
    base.save(d / "photo.webp", quality=90)
    base.save(d / "photo.bmp")
    (d / "cmyk.jpg").symlink_to(REAL / "images" / "faces" / "one_face_cmyk.jpg")
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1)))  # stored rotated 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(d / "exif6.jpg", quality=92, exif=exif)
    full = (d / "exif6.jpg").read_bytes()
    base.save(d / "full.jpg", quality=92)
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[: len(full) // 2])
    (d / "full.jpg").unlink()
    (d / "notes.jpg").write_text("not an image\n")

    run(d, tmp_path / "out", CFG, progress=False)
    videos = {r["path"]: r for r in pl.read_parquet(tmp_path / "out" / "videos.parquet").iter_rows(named=True)}
    assert videos["truncated.jpg"]["status"] == "decode_error" and "truncated" in videos["truncated.jpg"]["message"]
    assert videos["notes.jpg"]["status"] == "unsupported"
    good = ["palette.png", "grey.png", "rgba.png", "grey16.png", "photo.webp", "photo.bmp", "cmyk.jpg", "exif6.jpg"]
    for name in good:
        r = videos[name]
        assert (r["status"], r["n_faces"]) == ("ok", 1), (name, r["message"])
        assert (r["width"], r["height"]) == base.size, name  # upright size, EXIF applied
    assert videos["exif6.jpg"]["rotation"] == -90
    for vid, angle in _eye_angles(tmp_path / "out").items():
        assert abs(angle) < 5, (vid, angle)


def test_read_image_modes(tmp_path):
    """16-bit scaled by 1/257, transparency over white, palette expanded, one frame whatever the sampling."""
    cv2.imwrite(str(tmp_path / "g16.png"), np.array([[0, 257, 65535]], dtype=np.uint16))
    img, rot, fmt = read_image(tmp_path / "g16.png")
    assert img.shape == (1, 3, 3) and img[0, :, 0].tolist() == [0, 1, 255] and (rot, fmt) == (0, "PNG")
    a = np.zeros((2, 2, 4), np.uint8)
    a[0, 0] = (10, 20, 30, 255)
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    img, _, _ = read_image(tmp_path / "t.png")
    assert img[0, 0].tolist() == [10, 20, 30] and img[1, 1].tolist() == [255, 255, 255]
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        probe(tmp_path / "empty.jpg")
    info = probe(tmp_path / "t.png")
    chunks = list(FrameSampler(tmp_path / "t.png", info, SamplingConfig(num_frames=32)))
    assert len(chunks) == 1 and chunks[0].indices.tolist() == [0] and chunks[0].frames.shape == (1, 2, 2, 3)
