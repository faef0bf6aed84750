"""A fuzzed media corpus through ``extract`` (robustness issue, item 1): damaged and odd files derived at test time
from the shared real clips and photos (``tests/fuzz_corpus.py``) run in ONE extract with good files. Every file ends
as ok / no_face / decode_error / unsupported with a message saying what is wrong, never ``error`` (a crashed worker,
an exception the stage did not expect, a hang stopped at ``timeout_s``); worker memory stays under
:data:`WORKER_RSS_BOUND_MB`; and the good files' tables and crops are those of a run without the bad ones.

The plain tests at the end pin the fixes this corpus led to, without the shared media."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import REAL, needs_real
from fuzz_corpus import Case, box, cut_clip, make_corpus, png_bomb

from facepipe.errors import VideoError
from facepipe.stages.extract import discover_videos
from facepipe.video import MAX_IMAGE_PIXELS, FrameSampler, SamplingConfig, probe, read_image

CONTRACT = {"ok", "no_face", "decode_error", "unsupported"}
"""What a fuzzed file may end as; ``error`` (crash, unexpected exception, timeout) never."""

CFG = {"face_detector": {"name": "mtcnn"}, "workers": 2, "timeout_s": 60, "sampling": {"num_frames": 8},
       "extensions": [".mp4", ".avi", ".png", ".jpg", ".webp", ".bmp", ".gif"]}
"""The runs' parameters: two worker processes, 60 s per video (the corpus's clips decode in well under a second
each), 8 frames per clip; ``.gif`` listed so an animated GIF is an input (FFmpeg decodes it as a video)."""

WORKER_RSS_BOUND_MB = 1024
"""Peak resident memory of any extract worker over the corpus. Measured: ~410 MB (a worker with its MTCNN and
decoders is ~230 MB idle; a 640 x 360 clip's 64-frame chunk is 44 MB; no corpus image decodes beyond 0.5 Mpx). A
decompression bomb that got decoded would cross it: the 13 000 x 13 000 PNG took a worker to 2.1 GB before
:data:`facepipe.video.MAX_IMAGE_PIXELS` (any still over ~60 Mpx would pass 1 GB), the GIF of 16 000 x 16 000 frames
5 GB before :data:`facepipe.video.MAX_FRAME_PIXELS`."""

GOOD_PHOTOS = ("images/faces/obama-240p.jpg", "images/faces/one_face.png", "images/faces/one_face_cmyk.jpg")

_RUN = """
import json, resource, sys, time


def hwm_kb():  # VmHWM: this process's own peak (RUSAGE_SELF keeps the pytest parent's peak across fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


from facepipe.stages.extract import ExtractConfig, run
t = time.perf_counter()
s = run(sys.argv[1], sys.argv[2], ExtractConfig.model_validate(json.loads(sys.argv[3])), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "statuses": s.statuses,
                  "workers_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "driver_maxrss_mb": hwm_kb() / 1024}))
"""


def _extract(src: Path, out: Path) -> dict:
    """``extract`` of ``src`` into ``out`` in a fresh interpreter: its wall time, statuses, and the peak RSS of its
    worker processes (``RUSAGE_CHILDREN``: the largest of the waited-for children, i.e. the pebble workers)."""
    r = subprocess.run([sys.executable, "-c", _RUN, str(src), str(out), json.dumps(CFG)], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fuzz_runs(tmp_path_factory):
    """The corpus, the good files, and two runs: the good files alone, then the good files with the corpus."""
    base = tmp_path_factory.mktemp("fuzz")
    src, alone, full = base / "src", base / "alone", base / "full"
    src.mkdir()
    cut_clip(REAL / "videos/misc/facenet_pytorch_video.mp4", src / "clip.mp4")  # 1 s, 640 x 360
    cut_clip(REAL / "videos/misc/S001C001P001R001A001_rgb.avi", src / "clip.avi")
    for root in (alone, full):  # the same relative paths (so video ids), files, sizes and mtimes in both runs
        (root / "good").mkdir(parents=True)
        for f in (src / "clip.mp4", src / "clip.avi", *(REAL / rel for rel in GOOD_PHOTOS)):
            (root / "good" / f.name).symlink_to(f)
    cases = make_corpus(full / "bad", clip_mp4=src / "clip.mp4", clip_avi=src / "clip.avi",
                        photo=REAL / GOOD_PHOTOS[0], png_photo=REAL / GOOD_PHOTOS[1], cmyk=REAL / GOOD_PHOTOS[2])
    alone_run = _extract(alone, base / "out_good")
    full_run = _extract(full, base / "out_full")
    return {"cases": cases, "alone": alone_run, "together": full_run, "out_good": base / "out_good",
            "out_full": base / "out_full", "corpus": full / "bad"}


def _rows(out: Path) -> dict[str, dict]:
    return {r["path"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)}


@needs_real
@pytest.mark.slow
def test_every_fuzzed_file_gets_a_contract_status_and_a_message(fuzz_runs):
    """Every input has a row; no ``error``; each case ends in one of its statuses, a problem status with a message
    that names the file (or, for a partly decoded video, its frames) and matches the case's pattern; the image
    variants give their one upright face at the right size, an animation its first frame. The mode-000 file is a
    case only where it is then unreadable: not as root, who reads it anyway."""
    cases: list[Case] = fuzz_runs["cases"]
    assert len(cases) >= 90
    assert os.geteuid() == 0 or any(c.rel == "perm/unreadable.mp4" for c in cases)
    rows = _rows(fuzz_runs["out_full"])
    assert set(rows) == {f"bad/{c.rel}" for c in cases} | {f"good/{n}" for n in ("clip.mp4", "clip.avi")} | {
        f"good/{Path(r).name}" for r in GOOD_PHOTOS}
    assert {r["status"] for r in rows.values()} <= CONTRACT, [
        (p, r["status"], r["message"]) for p, r in rows.items() if r["status"] not in CONTRACT]
    wrong = []
    for c in cases:
        r = rows[f"bad/{c.rel}"]
        st, msg = r["status"], r["message"] or ""
        if st not in c.statuses:
            wrong.append((c.rel, st, msg, f"expected one of {c.statuses}"))
        elif st in ("decode_error", "unsupported") and not (re.search(c.message, msg) and (
                Path(c.rel).name in msg or os.path.realpath(fuzz_runs["corpus"] / c.rel) in msg  # or its target
                or "header frames" in msg)):  # a video decoded in part: the row's path names it
            wrong.append((c.rel, st, msg, f"message should name the file and match {c.message!r}"))
        elif st == "ok" and c.faces is not None and r["n_faces"] != c.faces:
            wrong.append((c.rel, st, r["n_faces"], f"expected {c.faces} face(s)"))
        elif st == "ok" and c.size is not None and (r["width"], r["height"]) != c.size:
            wrong.append((c.rel, st, (r["width"], r["height"]), f"expected size {c.size}"))
    assert not wrong, "\n".join(map(str, wrong))
    faces = pl.read_parquet(fuzz_runs["out_full"] / "faces.parquet")
    for name in ("animated.webp", "animated_apng.png", "animated_gif_named.png"):  # the first frame: upright
        vid = rows[f"bad/images/{name}"]["video_id"]
        (lm,) = faces.filter(pl.col("video_id") == vid)["landmarks"].to_list()
        assert lm[0][1] < lm[3][1] and lm[1][1] < lm[4][1], (name, lm)  # eyes above the mouth corners
    gif = rows["bad/images/animated.gif"]
    assert gif["frames_decoded"] == 3 and gif["codec"] == "gif"  # listed as .gif: a 3-frame video


@needs_real
@pytest.mark.slow
def test_good_files_are_unaffected_by_the_fuzzed_ones(fuzz_runs):
    """The good files' video rows, face rows (boxes, landmarks, scores, matrices, paths) and crop bytes are exactly
    those of the run over the good files alone."""
    alone, full = fuzz_runs["out_good"], fuzz_runs["out_full"]
    v_alone = pl.read_parquet(alone / "videos.parquet").sort("video_id")
    assert v_alone["status"].to_list() == ["ok"] * 5 and min(v_alone["n_faces"]) >= 1  # a comparison of something
    v_full = pl.read_parquet(full / "videos.parquet").filter(pl.col("path").str.starts_with("good/")).sort("video_id")
    assert v_full.equals(v_alone)
    ids = v_alone["video_id"].to_list()
    f_alone = pl.read_parquet(alone / "faces.parquet").sort("video_id", "frame_index", "track_id")
    f_full = (pl.read_parquet(full / "faces.parquet").filter(pl.col("video_id").is_in(ids))
              .sort("video_id", "frame_index", "track_id"))
    assert f_alone.height >= 15 and f_full.equals(f_alone)
    for rel in f_alone["crop_path"]:
        assert hashlib.sha256((full / rel).read_bytes()).digest() == hashlib.sha256((alone / rel).read_bytes()).digest()


@needs_real
@pytest.mark.slow
def test_fuzzed_run_is_bounded_in_time_and_memory(fuzz_runs):
    """The run with the corpus ends well inside one video's timeout (nothing waited out) and no worker grows past
    :data:`WORKER_RSS_BOUND_MB`."""
    full = fuzz_runs["together"]
    print(f"\nfuzz run: {sum(full['statuses'].values())} inputs in {full['seconds']:.1f} s; peak worker RSS "
          f"{full['workers_maxrss_mb']:.0f} MB, driver {full['driver_maxrss_mb']:.0f} MB; statuses {full['statuses']}"
          f"; good files alone: {fuzz_runs['alone']['seconds']:.1f} s, {fuzz_runs['alone']['workers_maxrss_mb']:.0f} MB")
    assert full["statuses"]["error"] == 0
    assert full["seconds"] < CFG["timeout_s"]
    assert 100 < full["workers_maxrss_mb"] < WORKER_RSS_BOUND_MB  # > 100: the workers were measured at all
    assert full["driver_maxrss_mb"] < WORKER_RSS_BOUND_MB


# ---------------------------------------------------------------------------------------------------------------
# regressions: the bugs the corpus found, each with a file made here


def _small_clip(path: Path, n: int = 25, container: str | None = None) -> Path:
    """An n-frame 64 x 48 H.264 clip of noise (PyAV), in ``container`` (default: from the extension)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream("libx264", rate=25, options={"threads": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            fr = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            fr.pts = i
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def test_broken_symlinks_are_inputs_not_a_crash(tmp_path):
    """A dangling symlink and a symlink loop with a video extension: discovery lists them (it raised
    FileNotFoundError / RuntimeError, ending the run before any video), and probing them is a decode_error naming
    the link and its target."""
    os.symlink("gone.mp4", tmp_path / "dangling.mp4")
    os.symlink("b.mp4", tmp_path / "a.mp4")
    os.symlink("a.mp4", tmp_path / "b.mp4")
    jobs = {j.rel: j for j in discover_videos(tmp_path, (".mp4",))}
    assert sorted(jobs) == ["a.mp4", "b.mp4", "dangling.mp4"] and {j.size for j in jobs.values()} == {-1}
    assert jobs["dangling.mp4"].path == str(tmp_path / "dangling.mp4")  # the link, not its missing target
    with pytest.raises(VideoError, match=r"dangling\.mp4: cannot read: .*a symbolic link to gone\.mp4") as e:
        probe(jobs["dangling.mp4"].path)
    assert e.value.status == "decode_error"
    with pytest.raises(VideoError, match=r"a\.mp4: cannot read: Too many levels of symbolic links"):
        probe(jobs["a.mp4"].path)


def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    """A 13 000 x 13 000 PNG (169 Mpx: over Pillow's warning threshold, under its error threshold) was decoded, to
    2 GB in a worker: it is unsupported from its header, by probe and read_image alike."""
    p = tmp_path / "bomb.png"
    p.write_bytes(png_bomb(13_000, 13_000, mib=1))
    assert 13_000 ** 2 > MAX_IMAGE_PIXELS
    for f in (probe, read_image):
        with pytest.raises(VideoError, match=r"bomb\.png: image of 13000 x 13000 pixels is over the limit") as e:
            f(p)
        assert e.value.status == "unsupported"


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    """A 2-frame GIF of 64 x 48 whose logical screen says 16 000 x 16 000 (its file: a few hundred bytes) is a video
    of 256-Mpx frames to FFmpeg: probing decoded its first one (1 GB) and sampling took 5 GB; it is unsupported from
    the stream's parameters, before a frame is decoded."""
    import struct

    from PIL import Image

    from facepipe.video import MAX_FRAME_PIXELS

    Image.new("RGB", (64, 48)).save(tmp_path / "a.gif", save_all=True, append_images=[Image.new("RGB", (64, 48), "red")])
    gif = bytearray((tmp_path / "a.gif").read_bytes())
    gif[6:10] = struct.pack("<HH", 16_000, 16_000)
    (tmp_path / "bomb.gif").write_bytes(bytes(gif))
    assert 16_000 ** 2 > MAX_FRAME_PIXELS >= 7680 * 4320  # 8K video passes
    with pytest.raises(VideoError, match=r"bomb\.gif: frames of 16000 x 16000 pixels are over the limit") as e:
        probe(tmp_path / "bomb.gif")
    assert e.value.status == "unsupported"
    assert probe(tmp_path / "a.gif").width == 64


def test_truncated_avi_is_a_decode_error(tmp_path):
    """An AVI cut at 60 %: decord and FFmpeg stop quietly at the cut, and the file was 'ok' ("header says 25
    frames, N decode"); its RIFF header shows it cut short, so it is a decode_error saying so. The whole file is
    not."""
    avi = _small_clip(tmp_path / "full.avi", container="avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(avi[:len(avi) * 6 // 10])
    info = probe(tmp_path / "cut.avi")
    s = FrameSampler(tmp_path / "cut.avi", info, SamplingConfig(num_frames=8))
    assert sum(len(c.indices) for c in s) > 0 and 0 < s.frames_decodable < 25
    assert re.fullmatch(rf"{s.frames_decodable} of 25 header frames decode: AVI file cut short: its RIFF header "
                        rf"claims {len(avi)} bytes, the file holds {len(avi) * 6 // 10}: truncated download\?",
                        s.decode_error)
    whole = FrameSampler(tmp_path / "full.avi", probe(tmp_path / "full.avi"), SamplingConfig(num_frames=8))
    assert sum(len(c.indices) for c in whole) == 8 and whole.decode_error is None


def test_avi_with_b_frames_is_not_left_to_decord(tmp_path, monkeypatch):
    """The good AVI of the corpus (H.264 with B-frames) gave frame 20's pixels as frame 24 in 1 of 6 runs: decord's
    get_batch (dmlc/decord#195), so the same file's faces differed between runs. Such a stream is decoded in order
    with PyAV: the sample is exactly a full decode's frames at the sampled indices."""
    import av

    p = _small_clip(tmp_path / "b.avi", container="avi")
    with av.open(str(p)) as c:
        assert c.streams.video[0].codec_context.has_b_frames
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    monkeypatch.setattr("facepipe.video._decord", lambda: pytest.fail("decord read an AVI with B-frames"))
    s = FrameSampler(p, probe(p), SamplingConfig(num_frames=8))
    chunks = list(s)
    idx = np.concatenate([c.indices for c in chunks])
    assert idx.tolist() == [0, 3, 6, 10, 13, 17, 20, 24] and s.frames_decodable == 25 and s.decode_error is None
    np.testing.assert_array_equal(np.concatenate([c.frames for c in chunks]), np.stack([full[i] for i in idx]))


def test_mp4_cut_inside_its_index_is_a_decode_error(tmp_path):
    """An MP4 cut in the middle of its moov box was 'unsupported: not a video container FFmpeg can read' (the
    corpus's clip) or 'decode_error: cannot open: End of file' (this one), with no word of truncation: it is a
    decode_error saying the container is cut short, a truncated download."""
    mp4 = _small_clip(tmp_path / "full.mp4").read_bytes()
    off, n = box(mp4, b"moov")
    (tmp_path / "cut.mp4").write_bytes(mp4[:off + n // 2])
    with pytest.raises(VideoError, match=r"cut\.mp4: MP4 container cut short .*its last box claims \d+ bytes past "
                                         r"the end of the file.*truncated download\?") as e:
        probe(tmp_path / "cut.mp4")
    assert e.value.status == "decode_error"


def test_fifo_input_neither_hangs_the_run_nor_its_worker(tmp_path):
    """A FIFO named .mp4: ``file_fingerprint: sha256`` hashed it in the driver, which waited for a writer forever;
    it is unsupported ("not a regular file") and the run goes on."""
    from facepipe.stages.extract import ExtractConfig, run

    d = tmp_path / "in"
    d.mkdir()
    os.mkfifo(d / "pipe.mp4")
    (d / "notes.mp4").write_text("not a video\n")

    def hung(*_):
        raise TimeoutError("extract hung on the FIFO")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        cfg = ExtractConfig.model_validate({"face_detector": {"name": "mtcnn"}, "workers": 0,
                                            "file_fingerprint": "sha256"})
        s = run(d, tmp_path / "out", cfg, progress=False)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert s.statuses["unsupported"] == 2
    rows = _rows(tmp_path / "out")
    assert re.search(r"pipe\.mp4: not a regular file \(a FIFO\)", rows["pipe.mp4"]["message"])
    assert rows["pipe.mp4"]["file_sha256"] is None and rows["notes.mp4"]["file_sha256"]


@pytest.mark.real_data
def test_mov_cut_before_its_stream_parameters_is_a_decode_error(tmp_path):
    """Found by the soak: the first 1134 bytes of a MOV (ftyp, wide, a cut mdat, then moov) give FFmpeg a video stream
    with no codec context; probe crashed (AttributeError, an ``error`` row) instead of naming the damage."""
    cut = tmp_path / "cut.mov"
    cut.write_bytes((REAL / "videos/edge/unordered.mov").read_bytes()[:1134])
    with pytest.raises(VideoError, match="cut.mov: video stream without decodable parameters; .*truncated download") as e:
        probe(cut)
    assert e.value.status == "decode_error"
