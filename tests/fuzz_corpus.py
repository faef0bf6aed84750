"""A fuzzed media corpus, made at test time from a few real clips and photos (``tests/test_fuzz_media.py``).

:func:`make_corpus` derives, deterministically (fixed seed, no clock), small damaged files from three good
sources: a 1 s H.264 MP4 (its ``moov`` index after the samples, as most encoders write it), the same with
``faststart`` (index first), a 1 s H.264 AVI, and photos. The damage: truncations at many offsets, bit flips in
headers and payloads, zeroed / renamed / swapped / oversized top-level boxes (``moov``, ``mdat``), wrong
extensions, zero-length files, headers claiming huge (or zero) dimensions, a PNG decompression bomb, animated GIF
and WebP, 16-bit / CMYK / alpha / grey / palette images, a symlink loop, a dangling symlink, a FIFO, a file
nobody may read.

Every case says which statuses it may end with (``ok``, ``no_face``, ``decode_error``, ``unsupported``: never
``error``, the status of a crash or a hang) and a regular expression its message must match when it is a problem
status. Where FFmpeg's tolerance decides between a damaged-but-decodable file and a refused one (bit flips inside
compressed data), several statuses are allowed; where the file's damage leaves one answer, one status is.
"""

from __future__ import annotations

import os
import random
import struct
import zlib
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from facepipe.stages.example import faststart_copy

SEED = 20240607
"""The corpus's seed: every random offset and bit comes from ``random.Random(SEED + case number)``."""

DECODED = ("ok", "no_face", "decode_error")
"""A damaged file FFmpeg may still decode (all or part of it), or refuse."""

ANY = ("ok", "no_face", "decode_error", "unsupported")
"""Everything but ``error``: the corpus's whole contract."""


@dataclass(frozen=True)
class Case:
    """One corpus file: its path relative to the corpus folder, the statuses it may end with, a regular expression
    its ``message`` must match when the status is ``decode_error`` or ``unsupported`` (searched), and when it ends
    ``ok``: its number of faces (``faces``; None: any) and displayed (width, height) (``size``; None: any)."""

    rel: str
    statuses: tuple[str, ...]
    message: str = r"."
    faces: int | None = None
    size: tuple[int, int] | None = None


# ---------------------------------------------------------------------------------------------------------------
# good sources


def cut_clip(src: Path, dst: Path, *, frames: int = 25, size: tuple[int, int] = (640, 360),
             container: str | None = None, faststart: bool = False) -> Path:
    """The first ``frames`` frames of ``src`` scaled to ``size`` (w, h), H.264 (x264 on one thread: the same
    bytes on every run), in ``dst`` (``container``: the muxer, default from the extension)."""
    import av

    opts = {"movflags": "faststart"} if faststart else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=container, options=opts) as out:
        s = out.add_stream("libx264", rate=25, options={"crf": "23", "preset": "veryfast", "threads": "1"})
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.codec_context.thread_count = 1
        n = 0
        for fr in inp.decode(inp.streams.video[0]):
            img = fr.reformat(width=size[0], height=size[1], format="yuv420p")
            img.pts, img.time_base = n, Fraction(1, 25)
            for p in s.encode(img):
                out.mux(p)
            n += 1
            if n == frames:
                break
        for p in s.encode():
            out.mux(p)
    return dst


def boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """Top-level ISO-BMFF boxes of ``data``: (type, offset, size), size as the header says (64-bit sizes
    followed; a size of 0 runs to the end)."""
    out, off = [], 0
    while off + 8 <= len(data):
        n, kind = struct.unpack(">I4s", data[off:off + 8])
        if n == 1:
            n = struct.unpack(">Q", data[off + 8:off + 16])[0]
        elif n == 0:
            n = len(data) - off
        if n < 8:
            break
        out.append((kind, off, n))
        off += n
    return out


def box(data: bytes, kind: bytes) -> tuple[int, int]:
    """(offset, size) of the first top-level box of ``kind``."""
    for k, off, n in boxes(data):
        if k == kind:
            return off, n
    raise KeyError(kind)


def flip_bits(data: bytes, lo: int, hi: int, n: int, rng: random.Random) -> bytes:
    """``data`` with ``n`` random bits flipped in ``[lo, hi)``."""
    b = bytearray(data)
    for _ in range(n):
        i = rng.randrange(lo, hi)
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """A PNG chunk with its CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int, *, mib: int = 256) -> bytes:
    """A greyscale 8-bit PNG of ``width`` x ``height`` (valid IHDR CRC) whose IDAT is ``mib`` MiB of zeros
    deflated (~1000:1, so the file stays small): a decoder that trusts the header allocates ``width * height``
    bytes and inflates the rest."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    c = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)  # after a full flush every MiB deflates the same
    tail = c.flush()[:-4]  # the final empty block; its adler32 (of `mib` MiB of zeros) is written below
    n = mib << 20
    idat = first + block * (mib - 1) + tail + struct.pack(">I", ((n % 65521) << 16) | 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def patch_png_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a PNG) with its IHDR's width and height replaced and the chunk's CRC recomputed."""
    assert data[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", ihdr) + data[33:]


def patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its first SOF marker's width and height replaced."""
    i = 2
    while i + 4 <= len(data):
        marker, seg = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[:i + 5] + struct.pack(">HH", height, width) + data[i + 9:]
        i += 2 + seg
    raise ValueError("no SOF marker")


def patch_sample_entry_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (an MP4) with every ``avc1`` sample entry's and ``tkhd`` box's width and height replaced (the
    coded stream keeps its own, in the H.264 parameter sets)."""
    b = bytearray(data)
    i = b.find(b"avc1")
    while i >= 0:
        b[i + 28:i + 32] = struct.pack(">HH", width, height)  # after 6 reserved, 2 index, 16 pre-defined bytes
        i = b.find(b"avc1", i + 4)
    i = b.find(b"tkhd")
    if i >= 0:
        version = b[i + 4]
        at = i + 4 + (88 if version == 1 else 76)  # width, height: 16.16 fixed point at the box's end
        b[at:at + 8] = struct.pack(">II", width << 16, height << 16)
    return bytes(b)


def patch_avi_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` (an AVI) with the BITMAPINFOHEADER of its video stream (``strf``) and the ``avih`` header claiming
    ``width`` x ``height``."""
    b = bytearray(data)
    i = b.find(b"avih")
    b[i + 8 + 32:i + 8 + 40] = struct.pack("<II", width, height)  # dwWidth, dwHeight
    i = b.find(b"strf")
    b[i + 8 + 4:i + 8 + 12] = struct.pack("<ii", width, height)  # biWidth, biHeight
    return bytes(b)


# ---------------------------------------------------------------------------------------------------------------
# the corpus


class _Writer:
    """Writes corpus files and remembers their cases."""

    def __init__(self, root: Path) -> None:
        self.root, self.cases, self.n = root, [], 0

    def rng(self) -> random.Random:
        self.n += 1
        return random.Random(SEED + self.n)

    def put(self, rel: str, data: bytes, statuses: tuple[str, ...], message: str = r".", **checks) -> None:
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        self.add(rel, statuses, message, **checks)

    def add(self, rel: str, statuses: tuple[str, ...], message: str = r".", **checks) -> None:
        self.cases.append(Case(rel, statuses, message, **checks))


MOOV_MISSING = r"moov atom missing: truncated download\?"
TRUNCATED = r"truncated download\?"
CUT_SHORT = r"cut short.*truncated download\?"
IMAGE_DAMAGE = r"image is truncated or corrupt"
BOMB = r"decompression bomb"


def _mp4_truncations(w: _Writer, mp4: bytes, fast: bytes) -> None:
    """Cuts of the MP4 with its index last (``mp4``: every cut before the end of ``moov`` loses the index) and
    first (``fast``: a cut loses samples the index points to)."""
    moov_off, moov_n = box(mp4, b"moov")
    mdat_off, mdat_n = box(mp4, b"mdat")
    ftyp_n = box(mp4, b"ftyp")[1]
    assert mdat_off < moov_off, "the muxer is expected to write the index after the samples"
    w.put("trunc/mp4_in_ftyp_header.mp4", mp4[:4], ("unsupported",), r"not a video container")  # 4 bytes: no type
    for name, cut in [("after_ftyp_header", 8), ("mid_ftyp", ftyp_n // 2), ("after_ftyp", ftyp_n),
                      ("mid_mdat_header", mdat_off + 5), ("mdat_10pct", mdat_off + mdat_n // 10),
                      ("mdat_50pct", mdat_off + mdat_n // 2), ("mdat_90pct", mdat_off + mdat_n * 9 // 10),
                      ("before_moov", moov_off), ("mid_moov_header", moov_off + 4)]:
        w.put(f"trunc/mp4_{name}.mp4", mp4[:cut], ("decode_error",), MOOV_MISSING)
    w.put("trunc/mp4_mid_moov.mp4", mp4[:moov_off + moov_n // 2], ("decode_error",), CUT_SHORT)
    w.put("trunc/mp4_moov_minus_1.mp4", mp4[:-1], DECODED, TRUNCATED)  # the index's last byte: FFmpeg copes
    f_moov_off, f_moov_n = box(fast, b"moov")
    f_mdat_off, f_mdat_n = box(fast, b"mdat")
    assert f_moov_off < f_mdat_off, "faststart puts the index first"
    w.put("trunc/fast_mid_moov.mp4", fast[:f_moov_off + f_moov_n // 2], ("decode_error",), CUT_SHORT)
    w.put("trunc/fast_after_moov.mp4", fast[:f_moov_off + f_moov_n], ("decode_error",), r"no mdat box.*" + TRUNCATED)
    for name, cut in [("mdat_header", f_mdat_off + 8),
                      ("mdat_30pct", f_mdat_off + f_mdat_n * 3 // 10), ("mdat_70pct", f_mdat_off + f_mdat_n * 7 // 10),
                      ("minus_1", len(fast) - 1)]:
        w.put(f"trunc/fast_{name}.mp4", fast[:cut], ("decode_error",), CUT_SHORT)


def _mp4_damage(w: _Writer, mp4: bytes, fast: bytes) -> None:
    """Bit flips and top-level box surgery of the MP4s. Flips inside compressed data or the index give whatever
    FFmpeg makes of them (any contract status); surgery that removes the index gives "moov atom missing"."""
    moov_off, moov_n = box(mp4, b"moov")
    mdat_off, mdat_n = box(mp4, b"mdat")
    f_moov_off, f_moov_n = box(fast, b"moov")
    w.put("flip/mp4_ftyp.mp4", flip_bits(mp4, 0, box(mp4, b"ftyp")[1], 4, w.rng()), ANY)
    w.put("flip/mp4_first_64_bytes.mp4", flip_bits(mp4, 0, 64, 16, w.rng()), ANY)
    for k in range(3):
        w.put(f"flip/mp4_moov_{k}.mp4", flip_bits(mp4, moov_off + 8, moov_off + moov_n, 6, w.rng()), ANY)
        w.put(f"flip/mp4_mdat_{k}.mp4", flip_bits(mp4, mdat_off + 8, mdat_off + mdat_n, 24, w.rng()), ANY)
    w.put("flip/fast_moov.mp4", flip_bits(fast, f_moov_off + 8, f_moov_off + f_moov_n, 6, w.rng()), ANY)

    def patched(at: int, value: bytes) -> bytes:
        return mp4[:at] + value + mp4[at + len(value):]

    w.put("atoms/moov_type_zeroed.mp4", patched(moov_off + 4, bytes(4)), ("decode_error",), MOOV_MISSING)
    w.put("atoms/mdat_size_huge.mp4", patched(mdat_off, struct.pack(">I", 0xFFFFFFF0)), ("decode_error",),
          MOOV_MISSING)  # mdat claims ~4 GB: the moov after it is "inside" it
    # FFmpeg reads a 'free' box that holds an 'mvhd' as the index (mov.c's repair of broken files)
    w.put("atoms/moov_renamed_free.mp4", patched(moov_off + 4, b"free"), ANY)
    w.put("atoms/moov_size_zeroed.mp4", patched(moov_off, bytes(4)), ANY)  # size 0: "runs to the end", as it does
    w.put("atoms/moov_payload_zeroed.mp4", patched(moov_off + 8, bytes(moov_n - 8)), ("decode_error", "unsupported"))
    w.put("atoms/mdat_type_zeroed.mp4", patched(mdat_off + 4, bytes(4)), ANY)  # the index has absolute offsets
    w.put("atoms/mdat_payload_zeroed.mp4", patched(mdat_off + 8, bytes(mdat_n - 8)), ("decode_error",))
    head, mdat_box, moov_box = mp4[:mdat_off], mp4[mdat_off:mdat_off + mdat_n], mp4[moov_off:moov_off + moov_n]
    # swapped: the index's sample offsets now point into the index itself
    w.put("atoms/moov_mdat_swapped.mp4", head + moov_box + mdat_box + mp4[moov_off + moov_n:], ANY)
    w.put("atoms/moov_without_mdat.mp4", head + moov_box, ("decode_error",))
    w.put("atoms/moov_twice.mp4", mp4 + moov_box, DECODED)
    # the container claims another size than the coded stream's (its parameter sets win): the true size is kept
    w.put("atoms/huge_dims.mp4", patch_sample_entry_size(mp4, 65535, 65535), ANY, size=(640, 360))
    w.put("atoms/zero_dims.mp4", patch_sample_entry_size(mp4, 0, 0), ANY, size=(640, 360))


def _avi_cases(w: _Writer, avi: bytes) -> None:
    """Truncations, bit flips and size patches of the AVI (H.264 with B-frames: decoded in order by PyAV, an AVI
    without B-frames by decord)."""
    movi = avi.find(b"movi")
    for name, cut in [("riff_header", 12), ("mid_headers", movi // 2), ("movi_start", movi + 4),
                      ("50pct", len(avi) // 2), ("90pct", len(avi) * 9 // 10)]:
        w.put(f"trunc/avi_{name}.avi", avi[:cut], ("decode_error",), CUT_SHORT)
    w.put("trunc/avi_minus_1.avi", avi[:-1], DECODED, TRUNCATED)  # the index's last byte: every frame decodes
    w.put("flip/avi_headers.avi", flip_bits(avi, 12, movi, 12, w.rng()), ANY)
    w.put("flip/avi_payload.avi", flip_bits(avi, movi, len(avi), 48, w.rng()), ANY)
    w.put("atoms/avi_huge_dims.avi", patch_avi_size(avi, 100_000, 100_000), ANY, size=(640, 360))
    w.put("atoms/avi_zero_dims.avi", patch_avi_size(avi, 0, 0), ANY, size=(640, 360))


def _image_modes(w: _Writer, photo: Path, png_photo: Path) -> None:
    """Image formats and modes and animations: each one the portrait's single upright face (an animation's first
    frame; its second is the portrait upside down)."""
    import cv2
    from PIL import Image

    portrait = Image.open(png_photo).convert("RGB")
    rgb = np.asarray(portrait)
    d = w.root / "images"
    d.mkdir(parents=True, exist_ok=True)
    one = {"faces": 1, "size": portrait.size}

    def save(rel: str, im, **kw) -> None:
        im.save(w.root / rel, **kw)
        w.add(rel, ("ok",), **one)

    cv2.imwrite(str(d / "rgb48.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    w.add("images/rgb48.png", ("ok",), **one)
    cv2.imwrite(str(d / "grey16.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257)
    w.add("images/grey16.png", ("ok",), **one)
    rgba = portrait.convert("RGBA")
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :60] = 0  # a transparent band at the left
    rgba.putalpha(Image.fromarray(alpha))
    save("images/rgba.png", rgba)
    save("images/grey_alpha.png", portrait.convert("LA"))
    save("images/grey.jpg", portrait.convert("L"), quality=90)
    save("images/cmyk.jpg", portrait.convert("CMYK"), quality=90)
    save("images/palette.png", portrait.convert("P", palette=Image.Palette.ADAPTIVE))
    portrait.convert("1").save(d / "bilevel.png")  # dithered black and white: a face or none
    w.add("images/bilevel.png", ("ok", "no_face"), size=portrait.size)
    save("images/progressive.jpg", portrait, quality=85, progressive=True)
    save("images/photo.bmp", portrait)
    frames = [portrait, portrait.transpose(Image.Transpose.FLIP_TOP_BOTTOM), Image.new("RGB", portrait.size)]
    anim = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    save("images/animated.webp", frames[0], quality=80, **anim)
    save("images/animated_apng.png", frames[0], **anim)
    frames[0].save(d / "animated.gif", **anim)
    w.put("images/animated_gif_named.png", (d / "animated.gif").read_bytes(), ("ok",), **one)
    # listed by extension .gif (the run adds it): FFmpeg decodes it as a 3-frame video
    w.add("images/animated.gif", ("ok",), size=portrait.size)
    Image.open(photo).save(d / "small.jpg", quality=90)
    w.add("images/small.jpg", ("ok",), faces=1)


def _image_damage(w: _Writer, png_photo: Path, cmyk: Path) -> None:
    """Cut and bit-flipped images, and headers that claim huge or zero sizes (bombs)."""
    png = png_photo.read_bytes()
    jpg = (w.root / "images" / "small.jpg").read_bytes()
    for frac in (0.0005, 0.1, 0.5, 0.99):
        w.put(f"trunc/png_{int(frac * 1000):03d}.png", png[:max(9, int(len(png) * frac))], ("decode_error",),
              IMAGE_DAMAGE)
        w.put(f"trunc/jpg_{int(frac * 1000):03d}.jpg", jpg[:max(9, int(len(jpg) * frac))], ("decode_error",),
              IMAGE_DAMAGE)
    prog = (w.root / "images" / "progressive.jpg").read_bytes()
    w.put("trunc/progressive_half.jpg", prog[:len(prog) // 2], ("decode_error",), IMAGE_DAMAGE)
    c = cmyk.read_bytes()
    w.put("trunc/cmyk_half.jpg", c[:len(c) // 2], ("decode_error",), IMAGE_DAMAGE)
    w.put("flip/png_header.png", flip_bits(png, 8, 33, 3, w.rng()), ("decode_error", "unsupported"))
    w.put("flip/png_idat.png", flip_bits(png, 33, len(png) - 12, 8, w.rng()), ("decode_error",), IMAGE_DAMAGE)
    w.put("flip/jpg_header.jpg", flip_bits(jpg, 2, 600, 6, w.rng()), ANY)
    w.put("flip/jpg_payload.jpg", flip_bits(jpg, 700, len(jpg) - 2, 32, w.rng()), ANY)
    # decompression bombs: refused from the header, nothing inflated
    w.put("bomb/png_100k_inflates_1GiB.png", png_bomb(100_000, 100_000, mib=1024), ("unsupported",), BOMB)
    w.put("bomb/png_50k_inflates_2GiB.png", png_bomb(50_000, 50_000, mib=2385), ("unsupported",), BOMB)
    # over Pillow's warning threshold, under its error threshold: Pillow alone decodes it (169 Mpx, 2 GB)
    w.put("bomb/png_13k_inflates_162MiB.png", png_bomb(13_000, 13_000, mib=162), ("unsupported",), BOMB)
    w.put("bomb/png_ihdr_100k.png", patch_png_size(png, 100_000, 100_000), ("unsupported",), BOMB)
    w.put("bomb/png_ihdr_zero.png", patch_png_size(png, 0, 0), ("decode_error", "unsupported"))
    w.put("bomb/jpg_sof_65500.jpg", patch_jpeg_size(jpg, 65_500, 65_500), ("unsupported",), BOMB)
    w.put("bomb/jpg_sof_zero.jpg", patch_jpeg_size(jpg, 0, 0), ("decode_error", "unsupported"))
    gif = bytearray((w.root / "images" / "animated.gif").read_bytes())
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen; the frames stay small
    w.put("bomb/gif_screen_65535.png", bytes(gif), ("unsupported",), BOMB)  # a still by its extension: Pillow
    # by extension .gif, a video: FFmpeg's frames are the logical screen's size
    gif[6:10] = struct.pack("<HH", 16_000, 16_000)
    w.put("bomb/gif_screen_16000.gif", bytes(gif), ("unsupported",), r"frames of 16000 x 16000 pixels .*" + BOMB)


def _oddities(w: _Writer, mp4: bytes, png: bytes) -> None:
    """Wrong extensions, empty files, links, a FIFO, a device, an unreadable file."""
    w.put("ext/png_named.mp4", png, ("ok",), faces=1)  # a still by its extension: Pillow reads what it is
    w.put("ext/mp4_named.jpg", mp4, ("unsupported",), r"not an image")
    w.put("ext/text_named.mp4", b"this is not a video\n" * 20, ("unsupported",), r"not a video container")
    w.put("ext/text_named.png", b"this is not an image\n" * 20, ("unsupported",), r"not an image")
    for ext in ("mp4", "avi", "png", "jpg"):
        w.put(f"empty/zero.{ext}", b"", ("decode_error",), r"empty file")
    links = w.root / "links"
    links.mkdir()
    os.symlink("loop_b.mp4", links / "loop_a.mp4")
    os.symlink("loop_a.mp4", links / "loop_b.mp4")
    os.symlink("does_not_exist.mp4", links / "dangling.mp4")
    os.symlink("does_not_exist.png", links / "dangling.png")
    os.symlink("/dev/zero", links / "dev_zero.mp4")
    for rel in ("links/loop_a.mp4", "links/loop_b.mp4"):
        w.add(rel, ("decode_error",), r"cannot read: Too many levels of symbolic links \(a symbolic link to loop_")
    for ext in ("mp4", "png"):
        w.add(f"links/dangling.{ext}", ("decode_error",), rf"cannot read: .*a symbolic link to does_not_exist\.{ext}")
    w.add("links/dev_zero.mp4", ("unsupported",), r"not a regular file \(a device\)")
    os.mkfifo(w.root / "empty" / "fifo.mp4")  # opening it for reading would wait for a writer forever
    w.add("empty/fifo.mp4", ("unsupported",), r"not a regular file \(a FIFO\)")
    w.put("perm/unreadable.mp4", mp4, ("decode_error",), r"permission denied")
    p = w.root / "perm" / "unreadable.mp4"
    p.chmod(0)
    if os.access(p, os.R_OK):  # root reads a mode-000 file: no such case then (see make_corpus)
        p.chmod(0o644)
        p.unlink()
        w.cases.pop()


def make_corpus(root: Path, *, clip_mp4: Path, clip_avi: Path, photo: Path, png_photo: Path, cmyk: Path) -> list[Case]:
    """Write the fuzzed corpus under ``root`` (created) and return its cases.

    Args:
        root: the corpus folder (the faststart copy of ``clip_mp4`` it is made from goes to ``root/.src``, hidden
            from input discovery).
        clip_mp4: a good MP4 (index after the samples, 640 x 360); clip_avi: a good AVI (640 x 360).
        photo: a small JPEG with one face; png_photo: a PNG portrait with one face; cmyk: a CMYK JPEG. None of the
            sources is written to.

    The mode-000 case exists only where the file is then unreadable (not as root, who reads it anyway).
    """
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(root)
    src = root / ".src"
    src.mkdir()
    mp4, fast = clip_mp4.read_bytes(), faststart_copy(clip_mp4, src / "fast.mp4").read_bytes()
    _mp4_truncations(w, mp4, fast)
    _mp4_damage(w, mp4, fast)
    _avi_cases(w, clip_avi.read_bytes())
    _image_modes(w, photo, png_photo)
    _image_damage(w, png_photo, cmyk)
    _oddities(w, mp4, png_photo.read_bytes())
    return w.cases
