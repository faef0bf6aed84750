#!/usr/bin/env python
"""Training throughput per detector on this device, and how much of each step waits on data.

Usage: python scripts/bench_train.py SHARDS [--detectors resnet18 xception ...] [--steps 20]
       [--batch-size 16] [--image-size 128] [--workers 2]

For each detector: samples/s over ``--steps`` optimizer steps after 3 warm-up steps (make_loader with
augmentation + the detector's views computed on the device, train_step with the device's AMP policy),
and the fraction of step time spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


def bench(name: str, shards: Path, steps: int, batch_size: int, image_size: int, workers: int,
          device: torch.device) -> tuple[float, float]:
    from facepipe.data.loader import make_loader
    from facepipe.models import create_model, get_spec
    from facepipe.train.engine import amp_dtype_for, train_step

    spec = get_spec(name)
    model = create_model(name, **{k: image_size for k in get_spec(name).size_options}).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = json.loads((shards / "index.json").read_text())["splits"]["train"]["samples"]
    loader = make_loader(shards, "train", batch_size, workers, resampled=True, epoch_samples=max(n, batch_size * 64),
                         augment=True, image_size=image_size, views=spec.views, mean=spec.mean, std=spec.std,
                         device=device)
    amp = amp_dtype_for(device, "auto")
    it = iter(loader)
    wait = compute = 0.0
    seen = 0
    for i in range(steps + 3):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        train_step(model, batch, opt, amp_dtype=amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 3:
            wait += t1 - t0
            compute += t2 - t1
            seen += len(batch["key"])
    return seen / (wait + compute), wait / (wait + compute)


def main() -> None:
    from facepipe.models import list_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--detectors", nargs="+", default=list_models())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"# {where}; {platform.machine()}; torch {torch.__version__}; Python {sys.version.split()[0]}; "
          f"batch {args.batch_size} at {args.image_size} px, {args.workers} loader workers, {args.steps} steps")
    print("| detector | samples/s | data wait |\n|---|---:|---:|")
    for name in args.detectors:
        sps, wait = bench(name, args.shards, args.steps, args.batch_size, args.image_size, args.workers, device)
        print(f"| {name} | {sps:.1f} | {100 * wait:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
