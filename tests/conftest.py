"""Shared fixtures. Real third-party media are read from ../shared/data/real when present (never copied);
everything else is made inside the tests from photos shipped in installed packages."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from facepipe.stages.example import camera_frames, package_photo, write_video
from facepipe.stages.extract import ExtractConfig

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
REAL_MANIFEST = ROOT / "scripts" / "real" / "shared_real.csv"
"""Labels of the shared clips (FF++ official splits for its pairs; originals linked for per-face labels)."""

needs_real = pytest.mark.real_data
"""Marks a test that reads ../shared/data/real (skipped where the media are absent; out of the fast set)."""

REAL_FIXTURES = {"real_manifest", "real_run"}


def _uses_name(src: str, name: str) -> bool:
    """Whether Python source refers to ``name`` as an identifier (strings and comments do not count)."""
    import io
    import textwrap
    import tokenize

    try:
        toks = tokenize.generate_tokens(io.StringIO(textwrap.dedent(src)).readline)
        return any(t.type == tokenize.NAME and t.string == name for t in toks)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return name in src


def pytest_collection_modifyitems(config, items):
    """Markers follow what a test needs: a test using the real-media fixtures is ``real_data``; a ``real_data``
    test is skipped where ../shared/data/real is absent; a ``gpu`` test where CUDA is. A test whose own source
    names ``REAL`` (the shared media folder) without the ``real_data`` marker is a collection error, so no
    real-data test slips into the fast set unmarked."""
    import inspect

    unmarked = []
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_data)
        fn = getattr(item, "function", None)
        if fn is not None and item.get_closest_marker("real_data") is None:
            try:
                src = inspect.getsource(fn)
            except (OSError, TypeError):
                src = ""
            if _uses_name(src, "REAL"):  # the name, not a "REAL" label inside a string
                unmarked.append(item.nodeid)
        if item.get_closest_marker("real_data") and not REAL.is_dir():
            item.add_marker(pytest.mark.skip(reason=f"real test media not present at {REAL}"))
        if item.get_closest_marker("gpu"):
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
    if unmarked:
        raise pytest.UsageError("tests reading ../shared/data/real (REAL) without @needs_real / "
                                "pytest.mark.real_data: " + ", ".join(unmarked))


def chromium_dom(url: str, *, offline: bool = False, budget_ms: int = 10000) -> str:
    """The DOM of ``url`` after headless Chromium ran its scripts (``offline``: every request sent to a dead proxy).
    Skips without Chromium, except under ``CI`` (``.ci/run`` installs Debian's package), where it fails."""
    import os
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    net = ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"] if offline else []
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", *net,
                           f"--virtual-time-budget={budget_ms}", "--dump-dom", url], capture_output=True, text=True,
                          timeout=180).stdout


@pytest.fixture(scope="session")
def real_manifest() -> dict[str, dict]:
    if not REAL.is_dir():
        pytest.skip(f"real test media not present at {REAL}")
    with open(REAL / "MANIFEST.csv", newline="") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="session")
def t1() -> np.ndarray:
    """insightface's t1.jpg: (886, 1280, 3) uint8 RGB, six faces."""
    return package_photo("t1.jpg")


@pytest.fixture(scope="session")
def mtcnn():
    from facepipe.faces.mtcnn import MTCNN

    return MTCNN(max_side=1280, min_score=0.95)


@pytest.fixture(scope="session")
def face_video_dir(tmp_path_factory, t1) -> Path:
    """A folder with two short real-photo clips: six faces panning, and one face (Tom Hanks)."""
    d = tmp_path_factory.mktemp("videos")
    pan = camera_frames(t1, (640, 360), 20, (420, 330, 0.62), (860, 330, 0.62))
    write_video(d / "group" / "poker.pan.mp4", pan, fps=10)
    tom = package_photo("Tom_Hanks_54745.png")
    canvas = np.full((360, 640, 3), 100, np.uint8)
    import cv2

    canvas[68:292, 208:432] = cv2.resize(tom, (224, 224), interpolation=cv2.INTER_CUBIC)
    write_video(d / "single.mp4", camera_frames(canvas, (640, 360), 12, (310, 180, 1.0), (330, 185, 1.1)), fps=10)
    return d


@pytest.fixture()
def small_cfg() -> ExtractConfig:
    """Fast settings for tests: 8 uniform frames, 128 px crops, mtcnn, every track kept, in this process."""
    return ExtractConfig.model_validate({
        "sampling": {"strategy": "uniform", "num_frames": 8},
        "face_detector": {"name": "mtcnn"},
        "align": {"size": 128},
        "track": {"select": "all"},
        "workers": 0,
    })


def shard_files(out: Path) -> Path:
    """The published set folder of a shard output (``index.json`` names it)."""
    import json

    return out / json.loads((out / "index.json").read_text())["version"]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory, real_manifest):
    """extract with default parameters over ../shared/data/real/videos with its labels (2 workers), once per
    session: the FF++ fakes are compared with their originals (per-face labels and masks)."""
    import polars as pl

    from facepipe.stages.extract import run

    out = tmp_path_factory.mktemp("real_out")
    summary = run(REAL / "videos", out, ExtractConfig(), progress=False, manifest=REAL_MANIFEST)
    videos = {r["path"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)}
    faces = pl.read_parquet(out / "faces.parquet")
    return out, summary, videos, faces


@pytest.fixture(scope="session")
def example_shards(tmp_path_factory) -> Path:
    """The bundled example (short clips) through manifest -> extract -> shard, 64 px crops, no stored views; shards of
    ``layout: mixed`` (the loader's recorded orders in test_loader_pipeline.py were taken on them)."""
    from facepipe.datasets import ManifestConfig, build_manifest
    from facepipe.stages import extract, shard
    from facepipe.stages.example import build_example

    root = tmp_path_factory.mktemp("example")
    videos = build_example(root / "videos", seconds=0.6)
    man = build_manifest("csv", videos, "example", ManifestConfig())
    man.write_parquet(root / "manifest.parquet")
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 6}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "workers": 0})
    extract.run(videos, root / "extract", cfg, progress=False, manifest=root / "manifest.parquet")
    shard.run(root / "shards", shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="example", extract=str(root / "extract"), manifest=str(root / "manifest.parquet")),), max_samples=16,
        layout="mixed"), progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def example_checkpoint(example_shards, tmp_path_factory) -> Path:
    """A ResNet-18 trained 2 steps on :func:`example_shards` at 64 px (``best.pt``): records the example's extract
    settings, so ``facepipe predict`` can use it."""
    from facepipe.stages.train import TrainConfig
    from facepipe.stages.train import run as run_train

    out = tmp_path_factory.mktemp("example_train")
    run_train(example_shards, out, TrainConfig(model="resnet18", image_size=64, steps=2, eval_every=2,
                                               checkpoint_every=2, batch_size=8, num_workers=0), progress=False)
    return out / "best.pt"


@pytest.fixture(scope="session")
def example_cell_shards(example_shards, tmp_path_factory) -> Path:
    """The same example faces as :func:`example_shards` in ``layout: cells`` shards of at most 4 samples (one series
    per (dataset, label) cell: the cell mixer's input)."""
    from facepipe.stages import shard

    root = example_shards.parent
    out = tmp_path_factory.mktemp("example_cells") / "shards"
    shard.run(out, shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="example", extract=str(root / "extract"), manifest=str(root / "manifest.parquet")),), max_samples=4),
        progress=False)
    return out


@pytest.fixture(scope="session")
def example_clip_shards(tmp_path_factory) -> Path:
    """The bundled example (1.2 s clips) extracted in clip mode (2 clips of 4 consecutive frames, 64 px) and
    sharded: a clip set for the video models."""
    from facepipe.datasets import ManifestConfig, build_manifest
    from facepipe.stages import extract, shard
    from facepipe.stages.example import build_example

    root = tmp_path_factory.mktemp("example_clips")
    videos = build_example(root / "videos", seconds=1.2)
    man = build_manifest("csv", videos, "example", ManifestConfig())
    man.write_parquet(root / "manifest.parquet")
    cfg = ExtractConfig.model_validate({"sampling": {"mode": "clips", "num_clips": 2, "clip_length": 4},
                                        "face_detector": {"name": "mtcnn"}, "align": {"size": 64}, "workers": 0})
    extract.run(videos, root / "extract", cfg, progress=False, manifest=root / "manifest.parquet")
    shard.run(root / "shards", shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="example", extract=str(root / "extract"), manifest=str(root / "manifest.parquet")),), max_samples=4,
        layout="mixed"),
        progress=False)
    return root / "shards"
