#!/usr/bin/env python
"""Benchmark the extract stage against DeepfakeBench's preprocessing, the same detector on OpenCV-decoded frames, and
its own floor, on the same files in one run.

Usage: python scripts/bench_extract.py DIR [--num-frames 32] [--workers 2] [--min-face-frac 0.1] [--skip-baseline]
                                           [--device cpu|cuda] [--ray 1,2] [--repeat 3] [--skip-decoders]

Rows (each starts fresh; "procs" is the parallelism it runs with):
  facepipe extract          the whole stage with default parameters: decode, MTCNN, rotation checks, tracking,
                            alignment, PNG crops, tables (``--workers`` processes)
  facepipe extract --engine ray   (``--ray 1,2``) the same stage as Ray actors on a local Ray cluster of 1, 2, ...
                            CPUs started before the clock (one actor per CPU): throughput against cluster size
  DeepfakeBench preprocess  scripts/deepfakebench_reference.py: OpenCV reads every frame, dlib HOG (upsample 1) and
                            68 landmarks on the sampled ones, alignment, dlib again on the crop, PNG + .npy; a thread
                            pool of os.cpu_count() threads, as DeepfakeBench's preprocess.py (needs
                            ``pip install -e .[deepfakebench]``)
  DeepfakeBench-style, no second dlib pass   the same without dlib on the crop (its 68 landmarks mapped from the
                            frame's by the alignment): a faster variant someone might write, not the published recipe
  cv2 read-all + MTCNN      OpenCV reads every frame, the N sampled ones go through facepipe's detector
  floor: decode + detect    the stage's own decoder on the N sampled frames + the detector on them, nothing else
  decode only               the stage's decoder (one-pass PyAV for MP4/MOV/MKV, else decord)
Then a decoder table (one process, one thread): decord ``get_batch``, PyAV one-pass, PyAV decoding every frame,
torchcodec ``get_frames_at`` (``seek_mode="exact"``) when it loads, OpenCV read-all, FFmpeg's bare decode.

Every row reports wall seconds, CPU seconds (all processes), videos/s, sampled frames/s, faces/s and the peak
resident memory of all its processes together (sampled every 20 ms with psutil; a Ray row's CPU seconds are the
polled CPU times of every process of the tree, since Ray's workers are not waited-for children). With ``--repeat R``
the rows run R times round-robin; the table shows each row's median-wall run and the ratios their spread. The
stage's time shares come from the decode-only and floor rows. The memory column includes this benchmark process,
which keeps what earlier rows loaded (dlib's models after the DeepfakeBench row): the stage row, run first, is the
clean figure (with repeats, each row shows its lowest peak); a Ray row's includes the cluster's own processes.
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
        self._tree_cpu: dict[int, float] = {}  # pid -> last seen CPU s of every process of the tree
        self._tree()
        self._tree_cpu0 = dict(self._tree_cpu)
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
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree())
            time.sleep(0.02)

    def _tree(self) -> int:
        """Summed RSS of the process tree now; records each process's CPU time on the way."""
        import psutil

        total = 0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self._tree_cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w0
        self._stop.set()
        self._t.join()
        self.cpu = self._cpu() - self._cpu0
        # processes that are not this one's waited-for children (a Ray cluster's workers) escape getrusage: the
        # last seen CPU time of every process of the tree (polled every 20 ms), minus what it had at the start
        self._tree()
        self.tree_cpu = sum(self._tree_cpu.values()) - sum(self._tree_cpu0.values())


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

def row_stage(d: Path, n: int, workers: int, device: str, min_face_frac: float = 0.0, engine: str = "local"):
    import polars as pl

    from facepipe.stages.extract import ExtractConfig, run

    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": n}, "workers": workers, "engine": engine,
                                        "face_detector": {"device": device, "min_face_frac": min_face_frac}})
    with tempfile.TemporaryDirectory() as out, Meter() as m:
        s = run(d, out, cfg, progress=False)
        sampled = int(pl.read_parquet(Path(out) / "videos.parquet")["frames_sampled"].fill_null(0).sum())
    if engine == "ray":
        m.cpu = m.tree_cpu  # the actors are not this process's waited-for children
    return m, sampled, s.faces_written


def row_ray(d: Path, n: int, cpus: int, device: str):
    """The stage on a local Ray cluster of ``cpus`` CPUs (started before the clock), one actor per CPU."""
    import logging

    import ray

    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        return row_stage(d, n, 0, device, engine="ray")
    finally:
        ray.shutdown()


def row_pool(files: list[Path], n: int, workers: int, device: str, job):
    with Meter() as m, _pool(workers, device) as ex:
        res = list(ex.map(job, [str(f) for f in files], [n] * len(files)))
    return m, sum(r[0] for r in res), sum(r[1] for r in res)


def row_deepfakebench(files: list[Path], n: int, redetect: bool = True):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import deepfakebench_reference as ref

    with tempfile.TemporaryDirectory() as out, Meter() as m:
        faces = ref.preprocess(files, Path(out), n, redetect=redetect)
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


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--num-frames", type=int, default=N_FRAMES)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--min-face-frac", type=float, default=None,
                    help="also run the stage with detector.min_face_frac at this value (e.g. 0.1)")
    ap.add_argument("--skip-baseline", action="store_true", help="leave out the DeepfakeBench rows (slow)")
    ap.add_argument("--ray", type=str, default=None, metavar="CPUS",
                    help="also run the stage with --engine ray on local clusters of these CPU counts, e.g. 1,2 "
                         "(one actor per CPU; needs facepipe[ray])")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every row this many times, interleaved; report each row's median-wall run and the "
                         "spread of the ratios")
    ap.add_argument("--skip-decoders", action="store_true", help="leave out the decoder table")
    return ap.parse_args()


def _plan(args: argparse.Namespace, files: list[Path]) -> list[tuple[str, object]]:
    """The rows to run: (name, a function returning (Meter, sampled frames, faces))."""
    n, w = args.num_frames, args.workers
    plan = [(f"facepipe extract ({w} workers)", lambda: row_stage(args.dir, n, w, args.device))]
    if args.min_face_frac:
        plan.append((f"facepipe extract, min_face_frac {args.min_face_frac} ({w} workers)",
                     lambda: row_stage(args.dir, n, w, args.device, args.min_face_frac)))
    for c in [int(c) for c in args.ray.split(",")] if args.ray else []:
        plan.append((f"facepipe extract --engine ray ({c}-CPU local cluster, {c} actor{'s' if c > 1 else ''})",
                     lambda c=c: row_ray(args.dir, n, c, args.device)))
    if not args.skip_baseline:
        plan.append((f"DeepfakeBench preprocess ({os.cpu_count()} threads)", lambda: row_deepfakebench(files, n)))
        plan.append((f"DeepfakeBench-style, no second dlib pass ({os.cpu_count()} threads)",
                     lambda: row_deepfakebench(files, n, redetect=False)))
    plan += [(f"cv2 read-all + MTCNN ({w} procs)", lambda: row_pool(files, n, w, args.device, job_cv2_mtcnn)),
             (f"floor: decode sampled + MTCNN ({w} procs)", lambda: row_pool(files, n, w, args.device, job_floor)),
             (f"decode sampled only ({w} procs)", lambda: row_pool(files, n, w, args.device, job_decode))]
    return plan


def _run(plan: list, repeat: int) -> tuple[dict[str, list], list]:
    """Every row ``repeat`` times, interleaved (a slow spell of the machine hits every row alike).

    Returns:
        (every run per row name; per row its median-wall run as (name, Meter, sampled, faces), with the lowest
        peak memory of its runs: a row's first run has the least left over from earlier rows).
    """
    runs: dict[str, list] = {name: [] for name, _ in plan}
    for r in range(repeat):
        for name, fn in plan:
            runs[name].append(fn())
            print(f"  run {r + 1}/{repeat}: {name}: {runs[name][-1][0].wall:.1f} s", file=sys.stderr)
    rows = [(name, *sorted(runs[name], key=lambda x: x[0].wall)[len(runs[name]) // 2]) for name, _ in plan]
    for name, m, *_ in rows:
        m.peak = min(x[0].peak for x in runs[name])
    return runs, rows


def _ratio(runs: dict[str, list], a: str, b: str) -> str:
    """Median (min-max over the paired runs) of wall(a) / wall(b)."""
    q = sorted(x[0].wall / y[0].wall for x, y in zip(runs[a], runs[b]))
    return f"{q[len(q) // 2]:.2f}x" + (f" (runs: {q[0]:.2f}-{q[-1]:.2f})" if len(q) > 1 else "")


def _report(plan: list, runs: dict[str, list], rows: list, n_files: int) -> None:
    """The table of rows and the ratios: each stage row against DeepfakeBench, Ray scaling, stage / floor."""
    print("\n| method | wall s | CPU s | videos/s | sampled frames/s | faces/s | peak RSS (all procs) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, m, sampled, faces in rows:
        print(f"| {name} | {m.wall:.1f} | {m.cpu:.1f} | {n_files / m.wall:.2f} | {sampled / m.wall:.1f} | "
              f"{faces / m.wall:.1f} | {m.peak / 2**30:.2f} GB |")
    if len(next(iter(runs.values()))) > 1:
        print("\nwall s of every run: " + "; ".join(
            f"{name}: {', '.join(f'{x[0].wall:.1f}' for x in runs[name])}" for name, _ in plan))
    names = [name for name, _ in plan]
    by = {name.split(" (")[0]: name for name in names}
    stage = names[0]
    for base in ("DeepfakeBench preprocess", "DeepfakeBench-style, no second dlib pass"):
        for name in names if base in by else []:
            if name.startswith("facepipe extract"):
                print(f"{name} vs {base}: {_ratio(runs, by[base], name)} faster (wall)")
    ray_rows = [name for name in names if "--engine ray" in name]
    for name in ray_rows[1:]:
        print(f"Ray scaling: {name} has {_ratio(runs, ray_rows[0], name)} the throughput of {ray_rows[0]}")
    floor, dec = by["floor: decode sampled + MTCNN"], by["decode sampled only"]
    fm, dm, sm = (dict((r[0], r[1]) for r in rows)[k] for k in (floor, dec, stage))
    print(f"stage / floor: {_ratio(runs, stage, floor)} (wall), {sm.cpu / fm.cpu:.2f} (CPU, median runs)")
    print(f"floor CPU shares: decode {dm.cpu / fm.cpu:.0%}, detection {(fm.cpu - dm.cpu) / fm.cpu:.0%} "
          f"(both include process start-up); the stage's own work on top of the floor (alignment, PNG, tracking, "
          f"labels, tables): {sm.cpu - fm.cpu:+.1f} CPU s, within this machine's run-to-run noise when small")


def main() -> None:
    args = _args()
    from facepipe.stages.extract import ExtractConfig, discover_videos

    files = [Path(j.path) for j in discover_videos(args.dir, ExtractConfig().extensions)]
    print(f"# {len(files)} files under {args.dir}; N={args.num_frames}; {platform.machine()}, {os.cpu_count()} "
          f"cores, Python {sys.version.split()[0]}; device {args.device}; {args.repeat} run(s) per row")
    plan = _plan(args, files)
    runs, rows = _run(plan, args.repeat)
    _report(plan, runs, rows, len(files))
    if args.skip_decoders:
        return
    print("\n| decoder (N uniform frames, 1 process, 1 thread) | wall s | CPU s | note |")
    print("|---|---:|---:|---|")
    for name, wall, cpu, note in decoders(files, args.num_frames):
        print(f"| {name} | {wall:.1f} | {cpu:.1f} | {note} |")


if __name__ == "__main__":
    main()
