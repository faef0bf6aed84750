"""Clip mode benchmark (issue 23): extraction speed in clip mode against frame mode at the same number of faces,
crop stability of per-clip against per-frame alignment, and the clip loader's throughput against the frame loader's
on the same crops.

    python scripts/bench_clips.py DIR [--num-clips 4] [--clip-length 16] [--workers 2] [--repeat 3]

DIR holds the videos (e.g. the six shared FF++ / DFDC clips). Prints markdown tables (docs/benchmarks.md).

1. Extraction: ``facepipe extract`` with ``sampling.mode clips`` (K clips of T frames) against frame mode with
   ``num_frames = K * T`` (the same number of faces per video), each run ``--repeat`` times interleaved, the
   median-wall run reported: decoded frames/s and faces/s.
2. Stability, on the clip run's faces and on the same faces cropped per frame (the clip runs again with
   ``align.clip_transform frame``, and with ``align.mode box``): per (video, track, clip), the eye centre (mean of
   the two eye landmarks) in crop coordinates at 224 px, and the crop's centre in source pixels scaled to 224 px
   per face size; the median over all consecutive triples of the norm of the second difference
   ``p[t+1] - 2 p[t] + p[t-1]``. A stable crop has a crop centre that does not move within a clip.
3. Clip members: bytes and decode time of a clip as T PNG members, one uint8 ``.npy`` or one lossless video member.
4. Loader: ``make_loader(clips=True)`` over the clip set and ``make_loader`` over a frame set of the same crops
   (2 workers, whole passes, start-up included): clips/s, frames/s, samples/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl


def _extract(videos: Path, out: Path, sampling: dict, align: dict | None = None, workers: int = 2) -> float:
    from facepipe.stages.extract import ExtractConfig, run

    shutil.rmtree(out, ignore_errors=True)
    cfg = ExtractConfig.model_validate({"sampling": sampling, "align": align or {}, "workers": workers})
    t0 = time.perf_counter()
    run(videos, out, cfg, progress=False)
    return time.perf_counter() - t0


def bench_extract(videos: Path, work: Path, k: int, t: int, workers: int, repeat: int) -> Path:
    """Interleaved runs of both modes; prints the table; returns the last clip-mode output folder."""
    rows = {"frames": [], "clips": []}
    plans = {"frames": {"mode": "frames", "strategy": "uniform", "num_frames": k * t},
             "clips": {"mode": "clips", "num_clips": k, "clip_length": t}}
    for _ in range(repeat):
        for name, sampling in plans.items():
            out = work / f"extract_{name}"
            wall = _extract(videos, out, sampling, workers=workers)
            v = pl.read_parquet(out / "videos.parquet")
            faces = pl.read_parquet(out / "faces.parquet").height
            rows[name].append((wall, int(v["frames_sampled"].sum()), faces))
            print(f"  {name}: {wall:.1f} s", file=sys.stderr)
    print(f"\n| sampling ({workers} workers) | wall s | decoded frames | faces | frames/s | faces/s | s per face |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, runs in rows.items():
        wall, frames, faces = sorted(runs)[len(runs) // 2]
        label = f"clips: {k} x {t} consecutive" if name == "clips" else f"frames: uniform {k * t}"
        print(f"| {label} | {wall:.1f} | {frames} | {faces} | {frames / wall:.1f} | {faces / wall:.1f} | "
              f"{wall / max(1, faces) * 1000:.1f} ms |")
    return work / "extract_clips"


def _second_diffs(points: np.ndarray) -> np.ndarray:
    """Norms of p[t+1] - 2 p[t] + p[t-1] of a (T, 2) sequence."""
    return np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=1) if len(points) >= 3 else np.zeros(0)


def jitter(faces: pl.DataFrame) -> tuple[float, float, int]:
    """(median eye-centre second difference in crop px at 224, median crop-centre second difference in source px
    scaled to 224 px per crop side, number of triples) over every (video, track, clip) of clip-mode faces."""
    eyes, centres = [], []
    for g in faces.sort("frame_index").partition_by(["video_id", "clip_id", "track_id"]):
        a = np.stack([np.asarray(x, np.float64) for x in g["affine"].to_list()])  # (T, 2, 3) source -> crop
        lm = np.stack([np.asarray(x, np.float64) for x in g["landmarks"].to_list()])  # (T, 5, 2) source px
        size = float(g["crop_size"][0])
        eye = lm[:, :2].mean(1)
        in_crop = np.einsum("tij,tj->ti", a[:, :, :2], eye) + a[:, :, 2]
        eyes.append(_second_diffs(in_crop * 224.0 / size))
        # the crop's centre in the source frame (inverse of the affine at the crop centre), per crop side
        inv = np.stack([np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2] for m in a])
        centre = np.einsum("tij,j->ti", inv, np.array([size / 2, size / 2, 1.0]))
        scale = float(np.sqrt(np.abs(np.linalg.det(a[:, :, :2]))).mean())  # crop px per source px, the clip's
        centres.append(_second_diffs(centre * scale * 224.0 / size))
    e, c = np.concatenate(eyes), np.concatenate(centres)
    return float(np.median(e)), float(np.median(c)), len(e)


def bench_stability(videos: Path, work: Path, k: int, t: int, workers: int) -> None:
    print("\n| alignment (clips of consecutive frames) | eye centre in the crop, px at 224 | crop centre in the "
          "frame, px at 224 | triples |")
    print("|---|---:|---:|---:|")
    for label, align in (("per clip: one transform over the clip's landmarks (default)", {}),
                         ("per frame: 5-point similarity on each frame", {"clip_transform": "frame"}),
                         ("per frame: square box crop (FF++ / DFDC style)", {"clip_transform": "frame",
                                                                              "mode": "box"})):
        out = work / f"stab_{len(align)}_{align.get('mode', 'arcface')}"
        _extract(videos, out, {"mode": "clips", "num_clips": k, "clip_length": t}, align, workers)
        e, c, n = jitter(pl.read_parquet(out / "faces.parquet"))
        print(f"| {label} | {e:.2f} | {c:.2f} | {n} |")


def _pass_rate(shards: Path, clips: bool, workers: int) -> tuple[float, int, int]:
    from facepipe.data import make_loader

    t0 = time.perf_counter()
    dl = make_loader(shards, "train", batch_size=8, num_workers=workers, shuffle=False, image_size=224,
                     clips=clips)
    n = frames = 0
    for b in dl:
        n += len(b["key"])
        frames += b["image"].shape[0] * (b["image"].shape[1] if clips else 1)
    return time.perf_counter() - t0, n, frames


def bench_loader(extract: Path, work: Path, workers: int, repeat: int) -> None:
    """The clip set and a frame set of the same crops (the clip faces with their clip columns cleared)."""
    from facepipe.stages import shard

    frames_ex = work / "extract_as_frames"
    shutil.rmtree(frames_ex, ignore_errors=True)
    shutil.copytree(extract, frames_ex, symlinks=True)
    f = pl.read_parquet(frames_ex / "faces.parquet")
    f = f.unique(["video_id", "frame_index", "track_id"], keep="first", maintain_order=True)
    f.with_columns(pl.lit(None, pl.Int32).alias("clip_id"), pl.lit(None, pl.Int64).alias("clip_start"),
                   pl.lit(False).alias("gap")).write_parquet(frames_ex / "faces.parquet")
    v = pl.read_parquet(extract / "videos.parquet").filter(pl.col("status") == "ok").select("path")
    man = work / "manifest.csv"
    pl.DataFrame({"path": v["path"], "label": ["real"] * v.height, "split": ["train"] * v.height}).write_csv(man)
    # label the faces real (the videos were extracted without a manifest): shards need face labels
    for ex in (extract, frames_ex):
        fx = pl.read_parquet(ex / "faces.parquet").with_columns(
            pl.lit(0, pl.Int8).alias("label"), pl.lit(0, pl.Int8).alias("video_label"),
            pl.lit("video").alias("label_source"))
        fx.write_parquet(ex / "faces.parquet")
    sets = {}
    for name, ex in (("clips", extract), ("frames", frames_ex)):
        out = work / f"shards_{name}"
        shutil.rmtree(out, ignore_errors=True)
        shard.run(out, shard.ShardConfig(inputs=(shard.ShardInput(dataset="bench", extract=str(ex),
                                                                  manifest=str(man)),), max_samples=16,
                                         masks=False), progress=False)
        sets[name] = out
    size = {n: sum(p.stat().st_size for p in s.rglob("*.tar")) for n, s in sets.items()}
    print(f"\n| loader ({workers} workers, 224 px, whole passes incl. start-up) | wall s | samples/s | frames/s "
          "| bytes per sample |")
    print("|---|---:|---:|---:|---:|")
    for name, clips in (("clips", True), ("frames", False)):
        runs = [_pass_rate(sets[name], clips, workers) for _ in range(repeat)]
        wall, n, frames = sorted(runs)[len(runs) // 2]
        print(f"| {name} ({n} samples) | {wall:.1f} | {n / wall:.1f} | {frames / wall:.1f} | "
              f"{size[name] / max(1, n) / 1e3:.0f} kB |")


def _video_bytes(frames: np.ndarray, codec: str, pix_fmt: str, options: dict) -> bytes:
    """A lossless video member: the clip's frames encoded with PyAV into an in-memory Matroska file."""
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as c:
        st = c.add_stream(codec, rate=25)
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        st.options = options
        for f in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return buf.getvalue()


def _video_frames(data: bytes) -> np.ndarray:
    import io

    import av

    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def bench_members(extract: Path, n_clips: int = 8) -> None:
    """Bytes and decode time (one thread) of a clip stored as T PNG members (facepipe's choice), one uint8 ``.npy``,
    or one lossless video member (FFV1; H.264 RGB at qp 0), on clips of the clip run; every form decodes to the same
    pixels (checked)."""
    import io

    import cv2

    from facepipe.data.schema import decode_image

    cv2.setNumThreads(1)
    faces = pl.read_parquet(extract / "faces.parquet").sort("frame_index")
    groups = faces.partition_by(["video_id", "clip_id", "track_id"])[:n_clips]
    forms: dict[str, list] = {"T PNG members (as extract wrote them)": [], "one uint8 .npy": [],
                              "FFV1 (lossless video member)": [], "H.264 RGB qp 0 (lossless video member)": []}
    for g in groups:
        pngs = [(extract / p).read_bytes() for p in g["crop_path"]]
        frames = np.stack([decode_image(b, "png") for b in pngs])
        npy = io.BytesIO()
        np.save(npy, frames, allow_pickle=False)
        encoded = {"T PNG members (as extract wrote them)": pngs, "one uint8 .npy": npy.getvalue(),
                   "FFV1 (lossless video member)": _video_bytes(frames, "ffv1", "bgr0", {}),
                   "H.264 RGB qp 0 (lossless video member)": _video_bytes(frames, "libx264rgb", "rgb24",
                                                                          {"qp": "0", "preset": "veryfast"})}
        decoders = {"T PNG members (as extract wrote them)": lambda v: np.stack([decode_image(b, "png") for b in v]),
                    "one uint8 .npy": lambda v: np.load(io.BytesIO(v), allow_pickle=False),
                    "FFV1 (lossless video member)": _video_frames,
                    "H.264 RGB qp 0 (lossless video member)": _video_frames}
        for name, data in encoded.items():
            t0 = time.perf_counter()
            for _ in range(3):
                got = decoders[name](data)
            dt = (time.perf_counter() - t0) / 3
            assert np.array_equal(got, frames), f"{name}: not lossless"
            size = sum(len(b) for b in data) if isinstance(data, list) else len(data)
            forms[name].append((size, dt))
    t, side = len(groups[0]), int(groups[0]["crop_size"][0])
    print(f"\n| clip member ({t} x {side} px crops, {len(groups)} clips, one thread) | bytes per clip | decode ms per "
          "clip |")
    print("|---|---:|---:|")
    for name, rows in forms.items():
        print(f"| {name} | {np.mean([r[0] for r in rows]) / 1e3:.0f} kB | {np.mean([r[1] for r in rows]) * 1e3:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--num-clips", type=int, default=4)
    ap.add_argument("--clip-length", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-extract", action="store_true", help="only stability and loader (one clip run)")
    args = ap.parse_args()
    print(f"# {args.dir}: {args.num_clips} clips x {args.clip_length} frames; {platform.machine()}, "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.repeat} run(s) per row, median shown")
    with tempfile.TemporaryDirectory(prefix="bench_clips_") as tmp:
        work = Path(tmp)
        if args.skip_extract:
            clip_ex = work / "extract_clips"
            _extract(args.dir, clip_ex, {"mode": "clips", "num_clips": args.num_clips,
                                         "clip_length": args.clip_length}, workers=args.workers)
        else:
            clip_ex = bench_extract(args.dir, work, args.num_clips, args.clip_length, args.workers, args.repeat)
        bench_stability(args.dir, work, args.num_clips, args.clip_length, args.workers)
        bench_members(clip_ex)
        bench_loader(clip_ex, work, args.workers, args.repeat)


if __name__ == "__main__":
    main()
