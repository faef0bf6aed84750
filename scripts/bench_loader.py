#!/usr/bin/env python
"""Benchmark streaming shards with make_loader against a loose-PNG-folder Dataset over the same samples.

Usage: python scripts/bench_loader.py SHARDS [--split train] [--workers 0 2] [--batch-size 32] [--epochs 2]

Side by side, in one run:
  make_loader (k workers)       facepipe shards -> decode -> batches (no augmentation, no views)
  loose PNG + cv2.imread (k)    the DeepfakeBench loader style: one file per crop, cv2.imread per item
  bytes on disk per sample      tar shards vs the loose crops (+ one JSON label file per crop, as
                                such pipelines keep)
  torch views per batch         cost of computing each frequency view on a batch on this device
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch


class LoosePNG(torch.utils.data.Dataset):
    """One PNG per crop, labels in a dict, cv2.imread per item (DeepfakeBench style)."""

    def __init__(self, files: list[Path], labels: list[int]) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        import cv2

        img = cv2.cvtColor(cv2.imread(str(self.files[i])), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)
        return x, self.labels[i]


def _drop_caches(cold: bool) -> None:
    if not cold:
        return
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        sys.exit(f"--cold needs root on Linux to drop the page cache: {e}")


def dump_loose(shards: Path, split: str, out: Path) -> tuple[list[Path], list[int]]:
    import webdataset as wds

    index = json.loads((shards / "index.json").read_text())
    files, labels = [], []
    for sh in index["splits"][split]["shards"]:
        for s in wds.WebDataset(str(shards / sh["url"]), shardshuffle=False, empty_check=False):
            ext = "png" if "png" in s else "jpg"
            p = out / f"{s['__key__']}.{ext}"
            p.write_bytes(s[ext])
            (out / f"{s['__key__']}.json").write_bytes(s["json"])
            files.append(p)
            labels.append(int(s["cls"]))
    return files, labels


def main() -> None:
    from facepipe.data.loader import make_loader
    from facepipe.freq import VIEWS, compute_views_torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cold", action="store_true",
                    help="drop the OS page cache before each timed run (root on Linux): reads come from disk")
    args = ap.parse_args()
    index = json.loads((args.shards / "index.json").read_text())
    n = index["splits"][args.split]["samples"]
    print(f"# {n} samples ({args.split}) in {len(index['splits'][args.split]['shards'])} shards; "
          f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, device {args.device}, "
          f"Python {sys.version.split()[0]}")
    tmp = Path(tempfile.mkdtemp(prefix="loose-"))
    try:
        files, labels = dump_loose(args.shards, args.split, tmp)
        rows = []
        cache = "cold page cache" if args.cold else "warm page cache"
        for k in args.workers:
            loader = make_loader(args.shards, args.split, batch_size=args.batch_size, num_workers=k, seed=0)
            _drop_caches(args.cold)
            t = time.perf_counter()
            seen = sum(len(b["key"]) for _ in range(args.epochs) for b in loader)
            rows.append((f"make_loader, {k} workers, {cache}", seen / (time.perf_counter() - t)))
            dl = torch.utils.data.DataLoader(LoosePNG(files, labels), batch_size=args.batch_size, shuffle=True,
                                             num_workers=k)
            _drop_caches(args.cold)
            t = time.perf_counter()
            seen = sum(len(y) for _ in range(args.epochs) for _, y in dl)
            rows.append((f"loose PNG + cv2.imread, {k} workers, {cache}", seen / (time.perf_counter() - t)))
        print("| loader | samples/s |\n|---|---:|")
        for name, r in rows:
            print(f"| {name} | {r:.0f} |")
        tar_bytes = sum(s["bytes"] for s in index["splits"][args.split]["shards"])
        loose_bytes = sum(f.stat().st_size for f in tmp.iterdir())
        print(f"\nbytes/sample: shards {tar_bytes / n / 1e3:.1f} KB (views stored: {index.get('views', [])}); "
              f"loose crops + json {loose_bytes / n / 1e3:.1f} KB")
        b = next(iter(make_loader(args.shards, args.split, batch_size=args.batch_size, num_workers=0)))
        x = b["image"].to(args.device)
        print(f"\n| view | ms per batch of {x.shape[0]}×{tuple(x.shape[1:])} on {args.device} |\n|---|---:|")
        for v in VIEWS:
            compute_views_torch([v], x)  # warm-up (DCT matrices, kernels)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(5):
                compute_views_torch([v], x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            print(f"| {v} | {(time.perf_counter() - t) / 5 * 1e3:.1f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
