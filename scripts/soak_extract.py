"""Soak test of the extract stage: many videos, the run killed with SIGKILL at random moments and restarted, the
end result compared with an uninterrupted run (issue 27, item 5).

The corpus is the shared real clips (``../shared/data/real/videos``, MANIFEST.csv) linked under new names, cycled
until there are ``--videos`` of them, and every fourth one broken (a truncated copy, an empty file, a text file named
``.mp4``). A reference run extracts it once, uninterrupted. Then a supervisor starts ``facepipe extract`` on the
same corpus into another folder (its own process group: driver and workers), kills the whole group with SIGKILL at a
random moment ``--kills`` times (each once the run has finished a video since it started, plus a random delay, so
every kill lands mid-run), restarting it each time, and lets the last run finish. At the end:

- ``faces.parquet`` and ``videos.parquet`` equal the reference's, and every crop file's bytes equal its twin's;
- no temporary file or folder remains (``.tmp-`` / ``.staging`` names), and no crop file is left that the table
  does not list;
- no face is listed twice (one row per ``video_id, frame_index, track_id``).

Usage (the long variant; the README gives its figures)::

    python scripts/soak_extract.py --videos 200 --kills 10 --work /tmp/soak

A short variant runs in CI (``tests/test_soak.py``: 12 videos, 3 kills). Writes ``WORK/soak.json`` and prints it;
exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent / "shared" / "data" / "real"


def build_corpus(media: Path, out: Path, n: int, seed: int) -> dict[str, int]:
    """``n`` videos under ``out``: links to the real clips under new names, every fourth one broken. Returns counts
    by kind."""
    with open(media / "MANIFEST.csv", newline="") as f:
        clips = sorted(media / r["path"] for r in csv.DictReader(f) if r["kind"] == "video")
    if not clips:
        raise SystemExit(f"{media}/MANIFEST.csv lists no videos")
    rng = random.Random(seed)
    out.mkdir(parents=True)
    kinds = {"linked": 0, "truncated": 0, "empty": 0, "text": 0}
    for i in range(n):
        src = clips[i % len(clips)]
        name = f"v{i:04d}_{src.stem}{src.suffix}"
        if i % 4 == 3:
            kind = ("truncated", "empty", "text")[(i // 4) % 3]
            dst = out / "broken" / f"v{i:04d}_{kind}.mp4"
            dst.parent.mkdir(exist_ok=True)
            if kind == "truncated":
                data = src.read_bytes()
                dst.write_bytes(data[: int(len(data) * rng.uniform(0.2, 0.8))])
            elif kind == "empty":
                dst.write_bytes(b"")
            else:
                dst.write_text("this is not a video\n")
        else:
            kind = "linked"
            (out / name).symlink_to(src)
        kinds[kind] += 1
    return kinds


def extract_cmd(videos: Path, out: Path, args) -> list[str]:
    return [sys.executable, "-m", "facepipe", "extract", "--video-dir", str(videos), "--out", str(out),
            "--workers", str(args.workers), "--num-frames", str(args.num_frames), "--face-detector", args.detector,
            "--no-progress"]


def _parts(out: Path) -> int:
    return len(list((out / "_parts").glob("*.json"))) if (out / "_parts").is_dir() else 0


def supervise(cmd: list[str], out: Path, kills: int, lo: float, hi: float, rng: random.Random) -> dict:
    """Run ``cmd`` (writing ``out``) and SIGKILL its process group ``kills`` times, restarting it each time, then let
    it finish. Each kill lands mid-run: once the (re)started run has finished at least one more video (its part file
    appears), after a further random ``lo``–``hi`` seconds. Returns what happened."""
    landed, early, delays = 0, 0, []
    t0 = time.perf_counter()
    while landed < kills:
        p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start, began = _parts(out), time.perf_counter()
        while p.poll() is None and _parts(out) <= start:
            time.sleep(0.05)
        delay = rng.uniform(lo, hi)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            landed += 1
            delays.append(round(time.perf_counter() - began, 2))
            continue
        early += 1  # finished before the kill: nothing left to interrupt
        if p.returncode != 0:
            raise SystemExit(f"extract failed (exit {p.returncode}): {p.stderr.read().decode()[-2000:]}")
        break
    final = subprocess.run(cmd, capture_output=True, text=True)
    if final.returncode != 0:
        raise SystemExit(f"the final extract failed (exit {final.returncode}): {final.stderr[-2000:]}")
    return {"kills": landed, "finished_before_a_kill": early, "kill_after_s": delays,
            "seconds": round(time.perf_counter() - t0, 1)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(ref: Path, out: Path) -> dict:
    """The checks: equal tables and crops, no temporary files, no unlisted crop, no face listed twice."""
    import polars as pl

    checks: dict = {}
    for name in ("faces.parquet", "videos.parquet"):
        checks[f"{name} equal"] = pl.read_parquet(out / name).equals(pl.read_parquet(ref / name))
    faces = pl.read_parquet(out / "faces.parquet")
    checks["faces"] = faces.height
    checks["duplicated faces"] = faces.height - faces.select("video_id", "frame_index", "track_id").unique().height
    listed = set(faces["crop_path"].to_list())
    crops = {str(p.relative_to(out)) for p in (out / "crops").rglob("*") if p.is_file()} if (out / "crops").exists() \
        else set()
    checks["unlisted crop files"] = len(crops - listed)
    checks["crops equal"] = all(_digest(out / c) == _digest(ref / c) for c in sorted(listed))
    checks["temporary files"] = [str(p.relative_to(out)) for p in out.rglob("*")
                                 if ".tmp-" in p.name or p.name.startswith(".staging")]
    statuses = pl.read_parquet(out / "videos.parquet")["status"].value_counts().sort("status")
    checks["statuses"] = dict(statuses.iter_rows())
    checks["ok"] = (all(checks[f"{n} equal"] for n in ("faces.parquet", "videos.parquet")) and checks["crops equal"]
                    and not checks["duplicated faces"] and not checks["unlisted crop files"]
                    and not checks["temporary files"])
    return checks


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/facepipe-soak"))
    ap.add_argument("--media", type=Path, default=MEDIA)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--num-frames", type=int, default=8)
    ap.add_argument("--detector", default="mtcnn")
    ap.add_argument("--min-delay", type=float, default=0.0,
                    help="earliest kill, seconds after the (re)started run finished its first video")
    ap.add_argument("--max-delay", type=float, default=8.0, help="latest kill, seconds after that")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    kinds = build_corpus(args.media, args.work / "videos", args.videos, args.seed)
    t0 = time.perf_counter()
    ref = subprocess.run(extract_cmd(args.work / "videos", args.work / "ref", args), capture_output=True, text=True)
    if ref.returncode != 0:
        raise SystemExit(f"the reference extract failed: {ref.stderr[-2000:]}")
    ref_s = time.perf_counter() - t0
    run = supervise(extract_cmd(args.work / "videos", args.work / "killed", args), args.work / "killed", args.kills,
                    args.min_delay, args.max_delay, random.Random(args.seed))
    report = {"videos": args.videos, "corpus": kinds, "workers": args.workers, "num_frames": args.num_frames,
              "detector": args.detector, "reference_seconds": round(ref_s, 1), **run,
              "checks": compare(args.work / "ref", args.work / "killed")}
    (args.work / "soak.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0 if report["checks"]["ok"] and report["kills"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
