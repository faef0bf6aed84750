#!/usr/bin/env python
"""Benchmark the extract stage against the usual ways of getting frames out of videos.

Usage: python scripts/bench_extract.py DIR [--num-frames 32] [--workers 2] [--repeat 1]

Side by side, on the same files, in one run:
  facepipe extract      the whole stage: decord sampling + MTCNN + alignment + PNG crops (fresh output)
  facepipe sampling     decord decode of the N uniform frames only (the stage's decode step)
  cv2 read-all          cv2.VideoCapture reads every frame and keeps the same N (FF++/DeepfakeBench way)
  ffmpeg null decode    `ffmpeg -i f -f null -`: FFmpeg's bare decode of every frame (a decode floor)

"frames/s" counts frames decoded; "sampled/s" the N frames per video the method delivers.
Decode-only rows run in this process, one file at a time; the stage row uses --workers processes.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _files(d: Path) -> list[Path]:
    from facepipe.stages.extract import ExtractConfig, discover_videos

    return [Path(j.path) for j in discover_videos(d, ExtractConfig().extensions)]


def bench_sampling(files, n):
    from facepipe.errors import VideoError
    from facepipe.video import SamplingConfig, probe, read_frames

    decoded = sampled = 0
    t = time.perf_counter()
    for f in files:
        try:
            info = probe(f)
            s = read_frames(f, info, SamplingConfig(num_frames=n))
        except VideoError:
            continue
        decoded += int(s.indices.max()) + 1  # decord decodes up to the last sampled frame
        sampled += len(s.indices)
    return time.perf_counter() - t, decoded, sampled, None


def bench_cv2(files, n):
    import cv2

    decoded = sampled = 0
    t = time.perf_counter()
    for f in files:
        cap = cv2.VideoCapture(str(f))
        frames = []
        while True:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(fr)
        cap.release()
        decoded += len(frames)
        if frames:
            idx = np.linspace(0, len(frames) - 1, min(n, len(frames))).astype(int)
            sampled += len({int(i) for i in idx})
    return time.perf_counter() - t, decoded, sampled, None


def bench_ffmpeg(files, n):
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    decoded = 0
    t = time.perf_counter()
    for f in files:
        r = subprocess.run([exe, "-v", "error", "-threads", "1", "-i", str(f), "-map", "0:v:0?", "-f", "null",
                            "-progress", "pipe:1", "-"], capture_output=True, text=True)
        frames = [line.split("=")[1] for line in r.stdout.splitlines() if line.startswith("frame=")]
        decoded += int(frames[-1]) if frames else 0
    return time.perf_counter() - t, decoded, None, None


def bench_stage(d, n, workers):
    from facepipe.stages.extract import ExtractConfig, run

    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": n}})
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        s = run(d, out, cfg.model_copy(update={"workers": workers}), progress=False)
        dt = time.perf_counter() - t
        import polars as pl

        v = pl.read_parquet(Path(out) / "videos.parquet")
        sampled = int(v["frames_sampled"].fill_null(0).sum())
    return dt, None, sampled, s.faces_written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--num-frames", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    files = _files(args.dir)
    print(f"# {len(files)} files under {args.dir}; N={args.num_frames}; "
          f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, "
          f"Python {sys.version.split()[0]}")
    rows = [
        (f"facepipe extract ({args.workers} workers)", *bench_stage(args.dir, args.num_frames, args.workers)),
        ("facepipe sampling (decord, 1 proc)", *bench_sampling(files, args.num_frames)),
        ("cv2 read-all + keep N (1 proc)", *bench_cv2(files, args.num_frames)),
        ("ffmpeg null decode (1 thread)", *bench_ffmpeg(files, args.num_frames)),
    ]
    print("| method | seconds | videos/s | frames/s | sampled/s | faces/s |")
    print("|---|---:|---:|---:|---:|---:|")
    def rate(x, dt):
        return "–" if x is None else f"{x / dt:.1f}"

    for name, dt, decoded, sampled, faces in rows:
        print(f"| {name} | {dt:.1f} | {len(files) / dt:.2f} | {rate(decoded, dt)} | {rate(sampled, dt)} "
              f"| {rate(faces, dt)} |")


if __name__ == "__main__":
    main()
