#!/usr/bin/env python
"""Benchmark the extract stage against DeepfakeBench's preprocessing, the same detector on OpenCV-decoded frames, and
its own floor, on the same files in one run.

Usage: python scripts/bench_extract.py DIR [--num-frames 32] [--workers 2] [--min-face-frac 0.1] [--skip-baseline]
                                           [--device cpu|cuda]

Rows (each starts fresh; "procs" is the parallelism it runs with):
  facepipe extract          the whole stage with default parameters: decode, MTCNN, rotation checks, tracking,
                            alignment, PNG crops, tables (``--workers`` processes)
  DeepfakeBench preprocess  scripts/deepfakebench_reference.py: OpenCV reads every frame, dlib HOG (upsample 1) and
                            68 landmarks on the sampled ones, alignment, dlib again on the crop, PNG + .npy; a thread
                            pool of os.cpu_count() threads, as DeepfakeBench's preprocess.py (needs
                            ``pip install -e .[deepfakebench]``)
  cv2 read-all + MTCNN      OpenCV reads every frame, the N sampled ones go through facepipe's detector
  floor: decode + detect    the stage's own decoder on the N sampled frames + the detector on them, nothing else
  decode only               the stage's decoder (one-pass PyAV for MP4/MOV/MKV, else decord)
Then a decoder table (one process, one thread): decord ``get_batch``, PyAV one-pass, PyAV decoding every frame,
torchcodec ``get_frames_at`` (``seek_mode="exact"``) when it loads, OpenCV read-all, FFmpeg's bare decode.

Every row reports wall seconds, CPU seconds (all processes), videos/s, sampled frames/s, faces/s and the peak
resident memory of all its processes together (sampled every 20 ms with psutil). The stage's time shares come from
the decode-only and floor rows. The memory column includes this benchmark process, which keeps what earlier rows
loaded (dlib's models after the DeepfakeBench row): the stage row, run first, is the clean figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

N_FRAMES = 32
_W: dict = {}


# --- measuring ------------------------------------------------------------------------------------------------------

class Meter:
    """Wall time, CPU time of this process and its children, and peak summed RSS of the process tree."""

    def __enter__(self):
        import psutil

        self._me = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._cpu0 = self._cpu()
        self._w0 = time.perf_counter()
        self._t.start()
        return self

    def _cpu(self) -> float:
        s = resource.getrusage(resource.RUSAGE_SELF)
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def _poll(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w0
        self._stop.set()
        self._t.join()
        self.cpu = self._cpu() - self._cpu0


def _pool(workers: int, device: str) -> ProcessPoolExecutor:
    import multiprocessing as mp

    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init,
                               initargs=(device, max(1, (os.cpu_count() or 1) // workers)))


def _init(device: str, threads: int) -> None:
    import cv2

    from facepipe.faces import create_face_detector
    from facepipe.faces.config import DetectorConfig

    cv2.setNumThreads(1)
    _W["det"] = create_face_detector(DetectorConfig(name="mtcnn", device=device), threads=threads)


# --- per-file work (runs in worker processes) ----------------------------------------------------------------------

def _sampled(path: str, n: int):
    from facepipe.video import SamplingConfig, probe, read_frames

    return read_frames(path, probe(path), SamplingConfig(num_frames=n)).frames


def job_decode(path: str, n: int) -> tuple[int, int]:
    return len(_sampled(path, n)), 0


def job_floor(path: str, n: int) -> tuple[int, int]:
    frames = _sampled(path, n)
    return len(frames), sum(len(f) for f in _W["det"].detect(frames))


def _cv2_read_all(path: str, n: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(path)
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    keep = set(np.linspace(0, max(count - 1, 0), n, dtype=int).tolist())
    out, i = [], 0
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        if i in keep:
            out.append(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB))
        i += 1
    cap.release()
    return out


def job_cv2_mtcnn(path: str, n: int) -> tuple[int, int]:
    frames = _cv2_read_all(path, n)
    return len(frames), sum(len(f) for f in _W["det"].detect(frames)) if frames else 0


# --- rows -----------------------------------------------------------------------------------------------------------

def row_stage(d: Path, n: int, workers: int, device: str, min_face_frac: float = 0.0):
    import polars as pl

    from facepipe.stages.extract import ExtractConfig, run

    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": n}, "workers": workers,
                                        "detector": {"device": device, "min_face_frac": min_face_frac}})
    with tempfile.TemporaryDirectory() as out, Meter() as m:
        s = run(d, out, cfg, progress=False)
        sampled = int(pl.read_parquet(Path(out) / "videos.parquet")["frames_sampled"].fill_null(0).sum())
    return m, sampled, s.faces_written


def row_pool(files: list[Path], n: int, workers: int, device: str, job):
    with Meter() as m, _pool(workers, device) as ex:
        res = list(ex.map(job, [str(f) for f in files], [n] * len(files)))
    return m, sum(r[0] for r in res), sum(r[1] for r in res)


def row_deepfakebench(files: list[Path], n: int):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import deepfakebench_reference as ref

    with tempfile.TemporaryDirectory() as out, Meter() as m:
        faces = ref.preprocess(files, Path(out), n)
    return m, len(files) * n, faces


def decoders(files: list[Path], n: int) -> list[tuple[str, float, float, str]]:
    """(name, wall s, cpu s, note) of each decoder delivering the N uniform frames, one process, one thread."""
    import av

    from facepipe.video import SamplingConfig, probe, sample_indices

    idx = {}
    for f in files:
        with av.open(str(f)) as c:
            count = sum(1 for p in c.demux(c.streams.video[0]) if p.size)
        idx[f] = sample_indices(count, 25.0, SamplingConfig(num_frames=n))

    def decord_batch(f):
        import decord

        return decord.VideoReader(str(f), ctx=decord.cpu(0), num_threads=1).get_batch(idx[f].tolist()).asnumpy()

    def pyav_one_pass(f):
        from facepipe.video import read_frames

        return read_frames(f, probe(f), SamplingConfig(num_frames=n)).frames

    def pyav_all(f):
        keep, out = set(idx[f].tolist()), []
        with av.open(str(f)) as c:
            st = c.streams.video[0]
            st.codec_context.thread_count = 1
            for i, fr in enumerate(c.decode(st)):
                if i in keep:
                    out.append(fr.to_ndarray(format="rgb24"))
                if i >= max(keep):
                    break
        return out

    def torchcodec_exact(f):
        from torchcodec.decoders import VideoDecoder

        return VideoDecoder(str(f), seek_mode="exact", num_ffmpeg_threads=1).get_frames_at(idx[f].tolist()).data

    def cv2_all(f):
        import cv2

        cv2.setNumThreads(1)
        return _cv2_read_all(str(f), n)

    rows = []
    for name, fn in [("decord get_batch", decord_batch), ("PyAV one pass, non-reference frames skipped (stage)",
                                                          pyav_one_pass),
                     ("PyAV, every frame decoded", pyav_all), ("torchcodec get_frames_at (exact)", torchcodec_exact),
                     ("OpenCV read-all", cv2_all)]:
        try:
            with Meter() as m:
                for f in files:
                    fn(f)
            rows.append((name, m.wall, m.cpu, ""))
        except Exception as e:  # an optional decoder that is absent or does not load
            rows.append((name, float("nan"), float("nan"), f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"))
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        with Meter() as m:
            for f in files:
                subprocess.run([exe, "-v", "error", "-threads", "1", "-i", str(f), "-map", "0:v:0?", "-f", "null", "-"],
                               check=True, capture_output=True)
        rows.append(("FFmpeg bare decode of every frame (`-f null`)", m.wall, m.cpu, ""))
    except Exception as e:
        rows.append(("FFmpeg bare decode", float("nan"), float("nan"), f"{type(e).__name__}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--num-frames", type=int, default=N_FRAMES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-face-frac", type=float, default=None,
                    help="also run the stage with detector.min_face_frac at this value (e.g. 0.1)")
    ap.add_argument("--skip-baseline", action="store_true", help="leave out the DeepfakeBench row (slow)")
    args = ap.parse_args()
    from facepipe.stages.extract import ExtractConfig, discover_videos

    files = [Path(j.path) for j in discover_videos(args.dir, ExtractConfig().extensions)]
    n, w = args.num_frames, args.workers
    print(f"# {len(files)} files under {args.dir}; N={n}; {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}; device {args.device}")
    rows = [(f"facepipe extract ({w} workers)", *row_stage(args.dir, n, w, args.device))]
    if args.min_face_frac:
        rows.append((f"facepipe extract, min_face_frac {args.min_face_frac} ({w} workers)",
                     *row_stage(args.dir, n, w, args.device, args.min_face_frac)))
    if not args.skip_baseline:
        rows.append((f"DeepfakeBench preprocess ({os.cpu_count()} threads)", *row_deepfakebench(files, n)))
    rows.append((f"cv2 read-all + MTCNN ({w} procs)", *row_pool(files, n, w, args.device, job_cv2_mtcnn)))
    rows.append((f"floor: decode sampled + MTCNN ({w} procs)", *row_pool(files, n, w, args.device, job_floor)))
    rows.append((f"decode sampled only ({w} procs)", *row_pool(files, n, w, args.device, job_decode)))

    print("\n| method | wall s | CPU s | videos/s | sampled frames/s | faces/s | peak RSS (all procs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m, sampled, faces in rows:
        print(f"| {name} | {m.wall:.1f} | {m.cpu:.1f} | {len(files) / m.wall:.2f} | {sampled / m.wall:.1f} | "
              f"{faces / m.wall:.1f} | {m.peak / 2**30:.2f} GB |")
    stage = rows[0][1]
    by = {r[0].split(" (")[0]: r[1] for r in rows}
    if "DeepfakeBench preprocess" in by:
        for name, m, _, _ in rows:
            if name.startswith("facepipe extract"):
                print(f"{name} vs DeepfakeBench: {by['DeepfakeBench preprocess'].wall / m.wall:.2f}x faster (wall)")
    floor, dec = by["floor: decode sampled + MTCNN"], by["decode sampled only"]
    print(f"stage / floor: {stage.wall / floor.wall:.2f} (wall), {stage.cpu / floor.cpu:.2f} (CPU)")
    print(f"floor CPU shares: decode {dec.cpu / floor.cpu:.0%}, detection {(floor.cpu - dec.cpu) / floor.cpu:.0%} "
          f"(both include process start-up); the stage's own work on top of the floor (alignment, PNG, tracking, "
          f"labels, tables): {stage.cpu - floor.cpu:+.1f} CPU s, within this machine's run-to-run noise when small")
    print("\n| decoder (N uniform frames, 1 process, 1 thread) | wall s | CPU s | note |")
    print("|---|---:|---:|---|")
    for name, wall, cpu, note in decoders(files, n):
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {note} |")


if __name__ == "__main__":
    main()
