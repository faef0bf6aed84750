#!/usr/bin/env python
"""Training throughput per model of the zoo on this device, its parameter counts, and how much of each step waits
on data.

Usage: python scripts/bench_train.py SHARDS [--models resnet18 rine ...] [--steps 5] [--batch-size 8]
       [--image-size N] [--workers 2] [--train-config-like]

For each model: total and trainable parameters, and samples/s over ``--steps`` optimizer steps after 2 warm-up
steps (make_loader with augmentation + the model's views computed on the device, ``train_step`` with the device's
AMP policy and the model's auxiliary losses), at the model's own input size (``--image-size`` overrides it for
models whose size can change), and the fraction of step time spent waiting for the next batch.
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


def bench(name: str, shards: Path, steps: int, batch_size: int, image_size: int | None, workers: int,
          device: torch.device) -> dict:
    from facepipe.data.loader import make_loader
    from facepipe.models import create_model, get_spec
    from facepipe.train.engine import amp_dtype_for, train_step

    spec = get_spec(name)
    size = image_size if (image_size and (spec.size_options or spec.family in ("cnn", "attention"))) else spec.input_size
    model = create_model(name, **{k: size for k in spec.size_options}).to(device)
    spec = model.spec
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = json.loads((shards / "index.json").read_text())["splits"]["train"]["samples"]
    loader = make_loader(shards, "train", batch_size, workers, resampled=True, epoch_samples=max(n, batch_size * 64),
                         augment=True, image_size=size, views=spec.views, mean=spec.mean, std=spec.std,
                         device=device, class_balance=True)
    amp = amp_dtype_for(device, "auto")
    it = iter(loader)
    wait = compute = 0.0
    seen = 0
    for i in range(steps + 2):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        train_step(model, batch, opt, amp_dtype=amp)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i >= 2:
            wait += t1 - t0
            compute += t2 - t1
            seen += len(batch["key"])
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"size": size, "params": total, "trainable": trainable, "sps": seen / (wait + compute),
            "wait": wait / (wait + compute)}


def main() -> None:
    from facepipe.models import list_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"# {where}; {platform.machine()}; torch {torch.__version__}; Python {sys.version.split()[0]}; "
          f"batch {args.batch_size}, {args.workers} loader workers, {args.steps} steps")
    print("| model | input px | parameters | trainable | samples/s | data wait |\n|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        r = bench(name, args.shards, args.steps, args.batch_size, args.image_size, args.workers, device)
        print(f"| {name} | {r['size']} | {r['params'] / 1e6:.1f} M | {r['trainable'] / 1e6:.2f} M | {r['sps']:.1f} | "
              f"{100 * r['wait']:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
