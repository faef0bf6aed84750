#!/usr/bin/env python
"""Benchmark streaming shards with make_loader against loose-file loaders over the same samples.

Usage: python scripts/bench_loader.py SHARDS [--split train] [--workers 0 2] [--batch-size 32] [--epochs 3]
                                      [--latency-ms 20] [--cold] [--skip-remote]

Side by side, in one run (PNG = the shards as written; JPEG = the same crops re-encoded q95 4:4:4, as
``extract.output.format: jpg`` writes them), each figure twice: whole passes (samples over the wall time of
``--epochs`` passes, start-up included: building the loader, starting its workers, each pass's first reads) and
steady state (each pass's first batch left out). make_loader keeps one pipeline and its workers for every pass;
the loose-file loader is a plain ``DataLoader`` (workers started every pass, its default):
  local disk       make_loader (k workers) vs a loose-file Dataset with cv2.imread per item (DeepfakeBench style),
                   PNG and JPEG, warm page cache (``--cold``: dropped before each run; root on Linux)
  HTTP             a loopback HTTP server adding ``--latency-ms`` per request (an object store's first byte):
                   make_loader over http:// shard URLs vs one GET per loose file
  S3               a loopback S3-API server (moto) with the same added latency: make_loader("s3://...") vs one
                   GET per loose object (s3fs)
  bytes per sample tar shards vs the loose crops + one JSON label file each (apparent and allocated on disk)
  per-sample cost  tar parsing, metadata json, image decode, collate, normalisation (one process, one thread)
  torch views      ms per batch for each frequency view on this device
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


class LooseFiles(torch.utils.data.Dataset):
    """One image file per crop, labels in a list, cv2 decode + ImageNet normalisation per item (DeepfakeBench's
    dataset: cv2 read, ``T.Normalize``); the same output as make_loader's. ``fetch`` reads the bytes (a local
    read, or one GET per file)."""

    MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
    STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)

    def __init__(self, names: list[str], labels: list[int], fetch) -> None:
        self.names, self.labels, self.fetch = names, labels, fetch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        import cv2
        import numpy as np

        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(self.fetch(self.names[i]), np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)
        return (x - self.MEAN) / self.STD, self.labels[i]


class LocalFetch:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


class HTTPFetch:
    def __init__(self, base: str) -> None:
        self.base, self.session = base, None

    def __call__(self, name: str) -> bytes:
        import requests

        if self.session is None:  # one connection pool per worker
            self.session = requests.Session()
        r = self.session.get(f"{self.base}/{name}", timeout=30)
        r.raise_for_status()
        return r.content


class S3Fetch:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, name: str) -> bytes:
        import s3fs

        return s3fs.S3FileSystem().cat_file(f"{self.prefix}/{name}")


def _drop_caches(cold: bool) -> None:
    if not cold:
        return
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as e:
        sys.exit(f"--cold needs root on Linux to drop the page cache: {e}")


def dump_loose(shards: Path, split: str, out: Path) -> tuple[list[str], list[int]]:
    """The split's crops as loose files, encoded as in the shards (+ one JSON and the mask each)."""
    import webdataset as wds

    index = json.loads((shards / "index.json").read_text())
    names, labels = [], []
    out.mkdir(parents=True, exist_ok=True)
    for sh in index["splits"][split]["shards"]:
        for s in wds.WebDataset(str(shards / sh["url"]), shardshuffle=False, empty_check=False):
            ext = "png" if "png" in s else "jpg"
            name = f"{s['__key__']}.{ext}"
            (out / name).write_bytes(s[ext])
            (out / f"{s['__key__']}.json").write_bytes(s["json"])
            if "mask.png" in s:  # the difference masks the shards hold, as DeepfakeBench keeps them: files
                (out / f"{s['__key__']}_mask.png").write_bytes(s["mask.png"])
            names.append(name)
            labels.append(int(s["cls"]))
    return names, labels


def _to_jpeg(png: bytes) -> bytes:
    from facepipe.data.schema import decode_image
    from facepipe.stages.extract import encode_image

    return encode_image(decode_image(png, "png"), "jpg", 95, "444")


def jpeg_copy(shards: Path, out: Path) -> Path:
    """The shard set with every crop re-encoded as JPEG q95 4:4:4 (what extract.output.format: jpg writes)."""
    import webdataset as wds

    index = json.loads((shards / "index.json").read_text())
    for split in index["splits"].values():
        for sh in split["shards"]:
            dst = out / sh["url"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            with wds.TarWriter(str(dst), mtime=0) as w:
                for s in wds.WebDataset(str(shards / sh["url"]), shardshuffle=False, empty_check=False):
                    s = {k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"}
                    s["jpg"] = _to_jpeg(s.pop("png"))
                    w.write(s)
            sh["bytes"] = dst.stat().st_size
    index["image_format"] = "jpg"
    (out / "index.json").write_text(json.dumps(index))
    return out


class _Latency:
    """WSGI middleware: every request waits ``seconds`` first (an object store's time to first byte)."""

    def __init__(self, app, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    def __call__(self, environ, start_response):
        time.sleep(self.seconds)
        return self.app(environ, start_response)


def http_server(root: Path, latency: float):
    """A threaded loopback HTTP file server for ``root`` adding ``latency`` per request."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self):
            time.sleep(latency)
            super().do_GET()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def s3_server(latency: float):
    """moto's S3 API on loopback behind :class:`_Latency`; the AWS variables point every client at it."""
    import logging
    import threading

    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, _Latency(DomainDispatcherApplication(create_backend_app), latency),
                      threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{srv.server_port}", AWS_ACCESS_KEY_ID="bench",
                      AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    return srv


def _n(b) -> int:
    return len(b["label"] if isinstance(b, dict) else b[1])


def _timed(build, epochs: int, cold: bool) -> dict[str, float]:
    """``whole``: samples/s over ``epochs`` whole passes, start-up included (``build()`` making the loader, worker
    start, index and first reads of every pass); ``steady``: samples/s after each pass's first batch; ``first``:
    mean seconds to a pass's first batch (the first pass's includes ``build``). Small benchmark splits make the
    first batch a large share of a pass; a real dataset's passes (10^5 samples) are nearly all steady state."""
    n_all, t_all, steady_n, steady_t, first = 0, 0.0, 0, 0.0, []
    t = time.perf_counter()
    loader = build()
    setup = time.perf_counter() - t
    for epoch in range(epochs):
        _drop_caches(cold)
        t = time.perf_counter()
        it = iter(loader)
        n0 = _n(next(it))
        t1 = time.perf_counter()
        n = sum(_n(b) for b in it)
        t2 = time.perf_counter()
        first.append(t1 - t + (setup if epoch == 0 else 0.0))
        steady_n, steady_t = steady_n + n, steady_t + t2 - t1
        n_all, t_all = n_all + n0 + n, t_all + t2 - t
    steady = steady_n / steady_t if steady_n else float("nan")  # nan: every pass was one batch
    return {"whole": n_all / (t_all + setup), "steady": steady, "first": sum(first) / len(first)}


def rate_make_loader(source, split, batch_size, workers, epochs, cold=False) -> dict[str, float]:
    from facepipe.data.loader import make_loader

    return _timed(lambda: make_loader(source, split, batch_size=batch_size, num_workers=workers, seed=0), epochs,
                  cold)


def rate_loose(names, labels, fetch, batch_size, workers, epochs, cold=False) -> dict[str, float]:
    return _timed(lambda: torch.utils.data.DataLoader(LooseFiles(names, labels, fetch), batch_size=batch_size,
                                                      shuffle=True, num_workers=workers), epochs, cold)


def per_sample_costs(shards: Path, split: str, batch_size: int) -> dict[str, float]:
    """Microseconds per sample of each step of the loader's path, one process, one thread."""
    import webdataset as wds

    from facepipe.data.loader import make_loader
    from facepipe.data.schema import IMAGE_EXTS, decode_image

    torch.set_num_threads(1)
    index = json.loads((shards / "index.json").read_text())
    urls = [str(shards / s["url"]) for s in index["splits"][split]["shards"]]
    t = time.perf_counter()
    samples = list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    n = len(samples)
    out = {"tar parsing": (time.perf_counter() - t) / n}
    t = time.perf_counter()
    for s in samples:
        json.loads(s["json"])
    out["metadata json"] = (time.perf_counter() - t) / n
    ext = next(e for e in IMAGE_EXTS if e in samples[0])
    t = time.perf_counter()
    for s in samples:
        decode_image(s[ext], ext)
    out[f"image decode ({ext})"] = (time.perf_counter() - t) / n
    loader = make_loader(shards, split, batch_size=batch_size, num_workers=0, shuffle=False)
    pipe = loader.dataset
    decoded = list(pipe._decode(iter(samples)))
    t = time.perf_counter()
    batches = [pipe._collate(decoded[i:i + batch_size]) for i in range(0, n, batch_size)]
    out["collate"] = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for b in batches:
        loader.to_device(b)
    out["to float + normalise"] = (time.perf_counter() - t) / n
    return {k: v * 1e6 for k, v in out.items()}


def jpeg_fidelity(root_png: Path, root_jpg: Path, names: list[str]) -> dict[str, float]:
    """What q95 4:4:4 re-compression changes: mean PSNR against the PNG crop, and the median ratio (JPEG / PNG) of
    the luma's high-frequency DCT energy (u + v >= the crop side, the upper half of the spectrum's diagonal)."""
    import cv2
    import numpy as np

    psnr, kept = [], []
    for name in names:
        a = cv2.imread(str(root_png / name))
        b = cv2.imread(str(root_jpg / (name[:-4] + ".jpg")))
        psnr.append(cv2.PSNR(a, b))
        e = []
        for img in (a, b):
            y = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
            d = cv2.dct(y)
            u, v = np.indices(d.shape)
            e.append(float((d[u + v >= d.shape[0]] ** 2).sum()))
        kept.append(e[1] / e[0])
    return {"psnr_db": float(np.mean(psnr)), "high_freq_energy_ratio": float(np.median(kept))}


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cold", action="store_true",
                    help="drop the OS page cache before each local run (root on Linux): reads come from disk")
    ap.add_argument("--skip-remote", action="store_true", help="local disk only (no HTTP / S3 servers)")
    return ap.parse_args()


def local_rows(args, sets: dict, loose: dict) -> list[tuple]:
    cache = "cold page cache" if args.cold else "warm page cache"
    rows = []
    for fmt, shards in sets.items():
        root, names, labels = loose[fmt]
        for k in args.workers:
            a = rate_make_loader(shards, args.split, args.batch_size, k, args.epochs, args.cold)
            b = rate_loose(names, labels, LocalFetch(root), args.batch_size, k, args.epochs, args.cold)
            rows.append((f"local disk, {cache}", fmt, k, a, b))
    return rows


def remote_rows(args, index: dict, tmp: Path, loose: dict) -> list[tuple]:
    """make_loader over HTTP and the S3 API against one GET per loose file, both with added latency."""
    import s3fs

    lat, rows = args.latency_ms / 1e3, []
    srv, base = http_server(tmp, lat)
    root, names, labels = loose["PNG"]
    for k in args.workers:
        a = rate_make_loader(_http_index(args.shards, tmp, base), args.split, args.batch_size, k, args.epochs)
        b = rate_loose(names, labels, HTTPFetch(f"{base}/{root.name}"), args.batch_size, k, args.epochs)
        rows.append((f"HTTP, +{args.latency_ms:.0f} ms/request", "PNG", k, a, b))
    srv.shutdown()
    s3 = s3_server(lat)
    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    fs.put(str(args.shards / "index.json"), "bench/shards/index.json")
    for sh in index["splits"][args.split]["shards"]:
        fs.put(str(args.shards / sh["url"]), f"bench/shards/{sh['url']}")
    for name in names:
        fs.put(str(root / name), f"bench/loose/{name}")
    for k in args.workers:
        a = rate_make_loader("s3://bench/shards", args.split, args.batch_size, k, args.epochs)
        b = rate_loose(names, labels, S3Fetch("bench/loose"), args.batch_size, k, args.epochs)
        rows.append((f"S3 API (moto), +{args.latency_ms:.0f} ms/request", "PNG", k, a, b))
    s3.shutdown()
    return rows


def print_rates(rows: list[tuple], epochs: int) -> None:
    ref = {k: b for where, fmt, k, _, b in rows if fmt == "PNG" and where.startswith("local")}
    print(f"\nsamples/s, make_loader / loose files (ratio); whole = {epochs} passes start-up included, "
          "steady = each pass's first batch left out; 'vs loose PNG': make_loader against the local loose PNG "
          "loader with as many workers")
    print("\n| storage | crops | workers | whole passes | ratio | vs loose PNG | steady state | ratio | "
          "vs loose PNG | first batch s |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for where, fmt, k, a, b in rows:
        vs = {m: f"{a[m] / ref[k][m]:.2f}" if where.startswith("local") else "" for m in ("whole", "steady")}
        print(f"| {where} | {fmt} | {k} | {a['whole']:.0f} / {b['whole']:.0f} | {a['whole'] / b['whole']:.2f} | "
              f"{vs['whole']} | {a['steady']:.0f} / {b['steady']:.0f} | {a['steady'] / b['steady']:.2f} | "
              f"{vs['steady']} | {a['first']:.2f} / {b['first']:.2f} |")


def print_sizes(sets: dict, loose: dict, split: str, n: int) -> None:
    print("\n| crops | shards KB/sample | loose crop + json (+ mask) KB/sample, apparent | allocated on disk |"
          "\n|---|---:|---:|---:|")
    for fmt, shards in sets.items():
        idx = json.loads((shards / "index.json").read_text())
        tar = sum(s["bytes"] for s in idx["splits"][split]["shards"])
        root, names, _ = loose[fmt]
        files = list(root.iterdir())
        print(f"| {fmt} (views stored: {idx.get('views', [])}) | {tar / n / 1e3:.1f} | "
              f"{sum(f.stat().st_size for f in files) / n / 1e3:.1f} | "
              f"{sum(f.stat().st_blocks * 512 for f in files) / n / 1e3:.1f} |")
    fid = jpeg_fidelity(loose["PNG"][0], loose["JPEG q95 4:4:4"][0], loose["PNG"][1])
    print(f"\nJPEG q95 4:4:4 vs the PNG crops: mean PSNR {fid['psnr_db']:.1f} dB; median ratio of the luma's "
          f"high-frequency DCT energy (JPEG / PNG) {fid['high_freq_energy_ratio']:.2f}")


def print_costs(sets: dict, split: str, batch_size: int) -> None:
    for fmt, shards in sets.items():
        costs = per_sample_costs(shards, split, batch_size)
        print(f"\n| per-sample step ({fmt}, one thread) | µs |\n|---|---:|")
        for k, v in costs.items():
            print(f"| {k} | {v:.0f} |")
        print(f"| total | {sum(costs.values()):.0f} |")


def print_views(shards: Path, split: str, batch_size: int, device: str) -> None:
    from facepipe.data.loader import make_loader
    from facepipe.freq import VIEWS, compute_views_torch

    torch.set_num_threads(os.cpu_count() or 1)
    b = next(iter(make_loader(shards, split, batch_size=batch_size, num_workers=0)))
    x = b["image"].to(device)
    print(f"\n| view | ms per batch of {x.shape[0]}×{tuple(x.shape[1:])} on {device} |\n|---|---:|")
    for v in VIEWS:
        compute_views_torch([v], x)  # warm-up (DCT matrices, kernels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(5):
            compute_views_torch([v], x)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        print(f"| {v} | {(time.perf_counter() - t) / 5 * 1e3:.1f} |")


def main() -> None:
    args = _args()
    index = json.loads((args.shards / "index.json").read_text())
    n = index["splits"][args.split]["samples"]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# {n} samples ({args.split}) in {len(index['splits'][args.split]['shards'])} shards; "
          f"{platform.machine()}, {os.cpu_count()} cores (load average {load} at the start), torch "
          f"{torch.__version__}, device {args.device}, Python {sys.version.split()[0]}; {args.epochs} passes per figure")
    tmp = Path(tempfile.mkdtemp(prefix="bench-loader-"))
    try:
        sets = {"PNG": args.shards, "JPEG q95 4:4:4": jpeg_copy(args.shards, tmp / "jpeg-shards")}
        loose = {fmt: (tmp / f"loose-{i}", *dump_loose(shards, args.split, tmp / f"loose-{i}"))
                 for i, (fmt, shards) in enumerate(sets.items())}
        rows = local_rows(args, sets, loose)
        if not args.skip_remote:
            rows += remote_rows(args, index, tmp, loose)
        print_rates(rows, args.epochs)
        print_sizes(sets, loose, args.split, n)
        print_costs(sets, args.split, args.batch_size)
        print_views(args.shards, args.split, args.batch_size, args.device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _http_index(shards: Path, tmp: Path, base: str) -> str:
    """Serve the shard set under the HTTP root (a symlink) and return its index URL."""
    link = tmp / "png-shards"
    if not link.exists():
        link.symlink_to(shards.resolve(), target_is_directory=True)
    return f"{base}/png-shards/index.json"


if __name__ == "__main__":
    main()
