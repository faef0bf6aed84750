"""The pipeline's stage commands, in pipeline order (:data:`facepipe.stages.STAGES`, the list dvc.yaml follows)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facepipe.cli._common import (
    SET_HELP,
    _auc_text,
    _configure,
    _csv_list,
    _params_data,
    _sets,
    help_defaults,
    key_values,
    plural,
)
from facepipe.datasets.base import ManifestConfig as _ManifestConfig
from facepipe.errors import FacepipeError, InputError
from facepipe.freq.config import FreqConfig as _FreqConfig
from facepipe.stages.evaluate import EvaluateConfig as _EvaluateConfig
from facepipe.stages.explain import ExplainConfig as _ExplainConfig
from facepipe.stages.extract.config import ExtractConfig as _ExtractConfig
from facepipe.stages.shard import ShardConfig as _ShardConfig

app = typer.Typer()
PANEL = "Pipeline stages (dvc.yaml, in order)"


@app.command(rich_help_panel=PANEL)
def example(
    out: Path = typer.Option(Path("example/videos"), "--out", help="Folder to write the example videos to."),
    seconds: float = typer.Option(2.0, min=0.2, help="Length of each clip in seconds."),
) -> None:
    """Build the small synthetic example video folder from photos shipped inside installed packages."""
    from facepipe.stages.example import build_example

    d = build_example(out, seconds=seconds)
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    typer.echo(f"example: {plural(len(files), 'file')} in {d}: " + ", ".join(files))


@app.command(rich_help_panel=PANEL)
@help_defaults(_ManifestConfig, {"split_mode": "split_mode", "compression": "compression"})
def manifest(
    out: Path = typer.Option(..., "--out", help="manifest.parquet to write."),
    dataset: str = typer.Option(..., "--dataset", help="Dataset name (a key of 'datasets' in --params, if given)."),
    adapter: Optional[str] = typer.Option(None, help="Layout adapter (see 'facepipe datasets')."),
    root: Optional[Path] = typer.Option(None, help="The dataset's root folder in its published layout."),
    params: Optional[Path] = typer.Option(
        None, "--params", help="params.yaml: 'manifest' section, and datasets.<dataset> for adapter/root."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    split_mode: Optional[str] = typer.Option(None, help="official | group."),
    compression: Optional[str] = typer.Option(None, help="FF++/DFD compression folder: raw | c23 | c40."),
    option: Optional[list[str]] = typer.Option(None, "--option", help="Adapter option KEY=VALUE (repeatable)."),
) -> None:
    """Build a leakage-checked manifest (labels, official or grouped splits) from a dataset's own layout."""
    from facepipe.config import load_dataset_entry
    from facepipe.datasets import ManifestConfig
    from facepipe.stages.manifest import run

    data = _params_data(params, "manifest", ManifestConfig)
    options = dict(data.get("options") or {})
    if params and adapter is None:
        entry = load_dataset_entry(params, dataset)
        adapter, root = entry.adapter, root or Path(entry.root)
        options.update(entry.options)
    if adapter is None or root is None:
        raise FacepipeError("give --adapter and --root, or --params with a datasets.<name> entry")
    options.update(key_values(option, "--option"))
    data["options"] = options
    cfg = _configure(ManifestConfig, data, {"split_mode": split_mode, "compression": compression}, "manifest",
                     _sets(sets, "manifest")["manifest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    s = run(adapter, root, dataset, cfg, out)
    typer.echo(f"manifest: {plural(s.videos, 'video')} of '{dataset}' ({adapter}) -> {out}")
    typer.echo(f"  {'split':5s} {'real':>6s} {'fake':>6s}  share of videos / reals / fakes")
    for split, r in s.report.items():
        typer.echo(f"  {split:5s} {r['real']:6d} {r['fake']:6d}  {100 * r['share']:.1f}% / "
                   f"{100 * r['share_real']:.1f}% / {100 * r['share_fake']:.1f}%")
    for reason, e in s.excluded.items():
        typer.echo(f"  left out by the protocol: {e['n']} ({reason}; e.g. {', '.join(e['examples'])})")


EXTRACT_FLAGS = {
    "sampling": "sampling.strategy", "num_frames": "sampling.num_frames", "stride": "sampling.stride",
    "fps": "sampling.fps", "max_frames": "sampling.max_frames", "num_clips": "sampling.num_clips",
    "clip_length": "sampling.clip_length", "frame_step": "sampling.frame_step", "clip_transform": "align.clip_transform",
    "face_detector": "face_detector.name",
    "model_root": "face_detector.model_root", "max_side": "face_detector.max_side",
    "min_face": "face_detector.min_face_px", "min_face_frac": "face_detector.min_face_frac",
    "min_score": "face_detector.min_score", "device": "face_detector.device", "align": "align.mode",
    "preset": "align.preset", "size": "align.size", "margin": "align.margin", "select": "track.select",
    "label_policy": "labels.policy", "image_format": "output.format", "jpeg_quality": "output.jpeg_quality",
    "jpeg_subsampling": "output.jpeg_subsampling", "workers": "workers", "timeout": "timeout_s",
    "fingerprint": "file_fingerprint", "engine": "engine", "address": "ray_address",
}
"""``facepipe extract``'s named options -> their ExtractConfig keys (``--dlib-81`` too, as a string); every key
is checked against the model on each run (:func:`facepipe.cli._common._configure`)."""


@app.command(rich_help_panel=PANEL)
@help_defaults(_ExtractConfig, {**EXTRACT_FLAGS, "sampling": "sampling.strategy"})
def extract(
    video_dir: Path = typer.Option(..., "--video-dir", help="Folder searched recursively for videos and still images."),
    out: Path = typer.Option(..., "--out", help="Output folder (faces/, faces.parquet, videos.parquet)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'extract' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Only the videos this manifest lists, with its labels and originals (per-face labels)."),
    sampling: Optional[str] = typer.Option(
        None, help="Frame sampling: uniform | stride | fps (isolated frames), or clips (clips of consecutive frames, "
                   "sampling.mode clips)."),
    num_frames: Optional[int] = typer.Option(None, help="uniform: frames per video."),
    stride: Optional[int] = typer.Option(None, help="stride: keep every k-th frame."),
    fps: Optional[float] = typer.Option(None, help="fps: frames per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="stride/fps: at most this many frames per video."),
    num_clips: Optional[int] = typer.Option(None, help="clips: clips per video, start frames spread evenly."),
    clip_length: Optional[int] = typer.Option(None, help="clips: frames per clip."),
    frame_step: Optional[int] = typer.Option(None, help="clips: source frames between a clip's frames (1: "
                                                        "consecutive)."),
    clip_transform: Optional[str] = typer.Option(
        None, help="clips: clip (one crop transform per track and clip, fitted over its landmarks; default) | frame "
                   "(one per frame)."),
    face_detector: Optional[str] = typer.Option(
        None, "--face-detector",
        help="Face detector: auto | mtcnn | scrfd | dlib_hog (retinaface: an old name of scrfd)."),
    old_face_detector: Optional[str] = typer.Option(None, "--detector", hidden=True, help="Old name of --face-detector."),
    preset: Optional[str] = typer.Option(None, help="deepfakebench: DeepfakeBench's preprocessing (dlib HOG, header "
                                                    "frame count, largest face, 256 px, 1.3); with --dlib-81 its "
                                                    "81-point predictor, else the 68-point one (deepfakebench-68)."),
    dlib_81: Optional[Path] = typer.Option(
        None, "--dlib-81", help="DeepfakeBench's shape_predictor_81_face_landmarks.dat (detector dlib_hog / preset "
                                "deepfakebench; not shipped by any package facepipe installs)."),
    model_root: Optional[str] = typer.Option(None, help="insightface model root."),
    max_side: Optional[int] = typer.Option(None, help="Detect on a copy with this longest side (px)."),
    min_face: Optional[int] = typer.Option(None, help="Smallest face searched for, detection-image px."),
    min_face_frac: Optional[float] = typer.Option(None, help="Smallest face as a fraction of the frame's shorter "
                                                             "side (0 = off; 0.1 suits FF++/DFDC)."),
    min_score: Optional[float] = typer.Option(None, help="Drop faces scoring below this."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (onnxruntime provider)."),
    align: Optional[str] = typer.Option(None, help="arcface (5-point similarity) | box (square box crop)."),
    size: Optional[int] = typer.Option(None, help="Crop side in pixels."),
    margin: Optional[float] = typer.Option(None, help="Context margin."),
    select: Optional[str] = typer.Option(
        None, help="main | all: which face tracks to keep, in real and fake videos alike (main: the track "
                   "with the largest summed face area)."),
    label_policy: Optional[str] = typer.Option(None, help="Fakes without a usable original: main | all | drop."),
    image_format: Optional[str] = typer.Option(None, "--format", help="png (lossless) | jpg."),
    jpeg_quality: Optional[int] = typer.Option(None, help="JPEG quality when --format jpg."),
    jpeg_subsampling: Optional[str] = typer.Option(None, help="JPEG chroma subsampling: 444 (none) | 422 | 420."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=0,
                                          help="Worker processes (0 = in this process)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per video before a worker is stopped."),
    fingerprint: Optional[str] = typer.Option(None, help="Change detection for resume: stat (size+mtime) | sha256."),
    engine: Optional[str] = typer.Option(None, help="local (worker processes here) | ray (actors on a Ray cluster; "
                                                    "pip install 'facepipe[ray]')."),
    address: Optional[str] = typer.Option(None, help="--engine ray: the cluster (e.g. 10.0.0.1:6379; default "
                                                     "RAY_ADDRESS or a local Ray started for the run)."),
    strict: bool = typer.Option(False, help="Exit 1 if any video is error, decode_error or unsupported."),
    contact_sheet: bool = typer.Option(True, help="Write OUT/contact_sheet.png of one crop per track."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Turn a folder of videos into aligned face crops plus faces.parquet and videos.parquet.

    Incremental: a re-run skips videos already done with the same code, parameters and file; videos whose
    earlier run failed unexpectedly (status error) are retried.
    """
    from facepipe.stages.extract import ExtractConfig, run

    cfg = _configure(ExtractConfig, _params_data(params, "extract", ExtractConfig), _extract_overrides(locals()),
                     "extract", _sets(sets, "extract")["extract"])
    s = run(video_dir, out, cfg, progress=progress, manifest=manifest)
    _report_extract(s, out, contact_sheet, strict)


def _extract_overrides(given: dict) -> dict:
    """``facepipe extract``'s named options as ExtractConfig keys (:data:`EXTRACT_FLAGS`; ``None`` = not given):
    ``--sampling clips`` sets ``sampling.mode`` (the other values are frame strategies), ``--detector`` is the old
    name of ``--face-detector`` (a FutureWarning), ``--dlib-81`` a path string."""
    if given["old_face_detector"] is not None:
        import warnings

        warnings.warn("facepipe extract --detector: renamed to --face-detector (the forgery model is train's "
                      "--model); the old name goes in the next release", FutureWarning, stacklevel=1)
        given = {**given, "face_detector": given["face_detector"] or given["old_face_detector"]}
    overrides = {key: given[flag] for flag, key in EXTRACT_FLAGS.items()}
    sampling = given["sampling"]
    overrides["sampling.mode"] = None if sampling is None else "clips" if sampling == "clips" else "frames"
    if sampling == "clips":  # a mode, not a frame strategy
        overrides["sampling.strategy"] = None
    overrides["face_detector.dlib_81"] = None if given["dlib_81"] is None else str(given["dlib_81"])
    return overrides


def _report_extract(s, out: Path, contact_sheet: bool, strict: bool) -> None:
    """Print an extract run's summary, one table (statuses with their counts and what to do), then where the outputs
    are; ``--strict``: failed videos are an error."""
    from facepipe.report import contact_sheet as make_sheet
    from facepipe.stages.contract import STATUS_HINTS

    total = sum(s.statuses.values())
    typer.echo(f"extract: {plural(total, 'video')} ({s.processed} processed, {s.skipped} unchanged since the last "
               f"run), {plural(s.faces_written, 'face')} written in {s.seconds:.1f} s with {s.detector} "
               f"(stage {s.fingerprint})")
    typer.echo(f"  {'status':13s} {'videos':>6s}")
    for k, v in s.statuses.items():
        if v or k == "ok":
            typer.echo(f"  {k:13s} {v:6d}" + (f"   {STATUS_HINTS[k]}" if v and k in STATUS_HINTS else ""))
    for line in s.problems:
        typer.echo(f"  earlier run: {line}")
    if s.labels:
        typer.echo("  faces by label: " + ", ".join(f"{k} {v}" for k, v in s.labels.items()))
    sheet = make_sheet(out) if contact_sheet else None
    typer.echo(f"-> {out / 'videos.parquet'}, {out / 'faces.parquet'}, crops in {out / 'faces'}"
               + (f", {sheet}" if sheet is not None else ""))
    bad = sum(s.statuses.get(k, 0) for k in ("error", "decode_error", "unsupported"))
    if strict and bad:
        raise FacepipeError(f"--strict: {plural(bad, 'video')} failed (error, decode_error or unsupported; see status "
                            f"in {out / 'videos.parquet'})")


@app.command(rich_help_panel=PANEL)
@help_defaults(_FreqConfig, {"views": "views"})
def freq(
    extract_dir: Path = typer.Option(..., "--extract", help="An extract output folder (faces.parquet + crops)."),
    out: Path = typer.Option(..., "--out", help="Output folder (views/<video_id>.npz, views.parquet)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'freq' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    views: Optional[str] = typer.Option(None, help="Comma-separated views: dct,dct_bands,block_dct,fft,phase,srm."),
    workers: int = typer.Option(2, "--workers", "-j", min=0, help="Worker processes (0 = in this process)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Compute frequency views of every extracted crop and store them as float16 (incremental)."""
    from facepipe.freq.config import FreqConfig
    from facepipe.stages.freq import run

    cfg = _configure(FreqConfig, _params_data(params, "freq", FreqConfig), {"views": _csv_list(views)}, "freq",
                     _sets(sets, "freq")["freq"])
    s = run(extract_dir, out, cfg, workers=workers, progress=progress)
    typer.echo(f"freq: {plural(s.processed, 'video')} processed, {s.skipped} skipped (unchanged), "
               f"{plural(s.crops, 'crop')}, "
               f"views stored: {', '.join(cfg.views) or 'none (computed on the fly by the loader)'} in "
               f"{s.seconds:.1f}s -> {out}")


@app.command(rich_help_panel=PANEL)
@help_defaults(_ShardConfig, {"max_samples": "max_samples", "max_bytes": "max_bytes", "seed": "seed",
                              "statuses": "statuses"})
def shard(
    out: str = typer.Option(..., "--out", help="Output folder or s3://bucket/prefix for the shards and index.json."),
    inputs: Optional[list[str]] = typer.Option(
        None, "--input", help="dataset=NAME,extract=DIR,manifest=FILE[,freq=DIR]; repeat for several datasets."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'shard' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    max_samples: Optional[int] = typer.Option(None, help="Samples per shard at most."),
    max_bytes: Optional[int] = typer.Option(None, help="Bytes per shard at most."),
    seed: Optional[int] = typer.Option(None, help="Shuffle seed."),
    views: Optional[str] = typer.Option(None, help="Comma-separated stored views to include (default: all stored)."),
    statuses: Optional[str] = typer.Option(
        None, help="Comma-separated extract statuses whose videos give faces (default ok; add decode_error to keep "
                   "the decodable frames of damaged files)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write deterministic WebDataset tar shards per split, from one or more datasets, with an index."""
    from facepipe.stages.shard import ShardConfig, run

    data = _params_data(params, "shard", ShardConfig)
    if inputs:
        data["inputs"] = [key_values([t], "--input", "dataset=NAME,extract=DIR,manifest=FILE[,freq=DIR]", ",")
                          for t in inputs]
    elif not data["inputs"] and params:
        from facepipe.config import dataset_keys

        # the pipeline's convention: every dataset in params.yaml's 'datasets' under data/datasets/<name>/
        data["inputs"] = [{"dataset": k, "extract": f"data/datasets/{k}/extract", "freq": f"data/datasets/{k}/freq",
                           "manifest": f"data/datasets/{k}/manifest.parquet"} for k in dataset_keys(params)]
    cfg = _configure(ShardConfig, data, {"max_samples": max_samples, "max_bytes": max_bytes, "seed": seed,
                                         "views": _csv_list(views), "statuses": _csv_list(statuses)}, "shard",
                     _sets(sets, "shard")["shard"])
    s = run(out, cfg, progress=progress)
    total = sum(s.samples.values())
    typer.echo(f"shard: {plural(total, 'sample')} in {plural(sum(s.shards.values()), 'shard')}, {s.bytes / 1e6:.1f} MB "
               f"in {s.seconds:.1f} s -> {out}/{s.version} (dataset card: README.md)")
    probe = s.bias or {}
    typer.echo(f"  {'split':6s} {'samples':>8s} {'shards':>7s}" + ("  shortcut probe AUC (nuisance features only)"
                                                                 if probe else ""))
    for k in s.samples:
        r = probe.get(k, {}).get("overall", {})
        auc = "" if not probe else ("n/a" if r.get("auc") is None else f"{r['auc']:.2f}") + \
            (f" (n = {r['n']})" if r else "")
        typer.echo(f"  {k:6s} {s.samples[k]:8d} {s.shards[k]:7d}" + (f"  {auc}" if probe else ""))
    typer.echo("  faces by label source: " + ", ".join(f"{k} {v}" for k, v in sorted(s.label_sources.items())))
    for k, n in sorted(s.left_out.items()):
        typer.echo(f"  left out {plural(n, 'face')} of {k} videos (shard.statuses {list(cfg.statuses)})")
    for line in s.bias_warnings:
        typer.echo(f"warning: {line}", err=True)


@app.command(rich_help_panel=PANEL)
@help_defaults("facepipe.stages.train:TrainConfig", {"model": "model", "steps": "steps", "batch_size": "batch_size",
                                                     "lr": "lr"})
def train(
    shards: Path = typer.Option(..., "--shards", help="Shard folder (index.json) with train and val splits."),
    out: Path = typer.Option(..., "--out", help="Output folder: last.pt, best.pt, train.json, dvclive/."),
    params: Optional[Path] = typer.Option(
        None, "--params", help="params.yaml to read the 'train' (and 'freq', for views) sections from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    model: Optional[str] = typer.Option(
        None, "--model",
        help="The forgery detector to train: a zoo model (see 'facepipe models'), timm:<name>, or module:factory."),
    old_model: Optional[str] = typer.Option(None, "--detector", hidden=True, help="Old name of --model."),
    imports: Optional[list[str]] = typer.Option(None, "--import",
                                                help="A Python file registering your own model (repeatable)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps."),
    batch_size: Optional[int] = typer.Option(None, help="Samples per batch (per rank)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    resume: bool = typer.Option(False, help="Continue from OUT/last.pt."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a zoo model on streamed shards (CPU, one GPU, or many with torchrun); select on val."""
    from facepipe.freq.config import FreqConfig
    from facepipe.stages.train import TrainConfig, run

    if old_model is not None:
        import warnings

        warnings.warn("facepipe train --detector: renamed to --model ('detector' is extract's face detector); the old "
                      "name goes in the next release", FutureWarning, stacklevel=1)
        model = model or old_model
    s_ = _sets(sets, "train", "freq")
    cfg = _configure(TrainConfig, _params_data(params, "train", TrainConfig),
                     {"model": model, "steps": steps, "batch_size": batch_size, "lr": lr,
                      "imports": list(imports) if imports else None}, "train", s_["train"])
    freq = _configure(FreqConfig, _params_data(params, "freq", FreqConfig), {}, "freq", s_["freq"])
    s = run(shards, out, cfg, freq, resume=resume, progress=progress)
    typer.echo(f"train: {plural(s['steps'], 'step')} of {s['model']}, best val {s['select']} "
               f"{s['best'] if s['best'] is not None else 'n/a'} at step {s['best_step']} ({s['stop']}); "
               f"data wait {100 * s['data_wait_fraction']:.0f}% of step time -> {out}")


@app.command(rich_help_panel=PANEL)
@help_defaults(_EvaluateConfig, {"split": "split", "tta": "tta.flip", "tta_scales": "tta.scales",
                                 "video_agg": "video_agg"})
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    shards: list[Path] = typer.Option(..., "--shards", help="Shard folder(s) to test on (repeat for cross-dataset)."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.json, predictions.parquet, roc_*.csv."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'evaluate' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, help="Split to evaluate."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Horizontal-flip test-time augmentation "
                                                                  "(evaluate.tta.flip)."),
    tta_scales: Optional[str] = typer.Option(
        None, "--tta-scales", help="Comma-separated test-time scales, e.g. 0.9,1.0,1.1 (evaluate.tta.scales; "
                                   "probabilities averaged)."),
    drop_overlap: Optional[bool] = typer.Option(
        None, "--drop-overlap/--refuse-overlap",
        help="Test videos the checkpoint was trained on (same video, linked originals, people across datasets): "
             "leave them out and report them, or refuse the run (default: refuse)."),
    video_agg: Optional[str] = typer.Option(
        None, "--video-agg", help="mean | max | topk | deepfakebench (largest face per frame, mean over frames)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Frame- and video-level AUC (with 95 % bootstrap intervals over videos), EER, AP, accuracy per dataset and
    method, cross-dataset table, ROC plots; test videos seen in training refused."""
    from facepipe.stages.evaluate import EvaluateConfig, run

    cfg = _configure(EvaluateConfig, _params_data(params, "evaluate", EvaluateConfig),
                     {"split": split, "tta.flip": tta, "video_agg": video_agg,
                      "tta.scales": None if tta_scales is None else [float(x) for x in tta_scales.split(",")],
                      "overlap": None if drop_overlap is None else ("drop" if drop_overlap else "error")}, "evaluate",
                     _sets(sets, "evaluate")["evaluate"])
    r = run(checkpoint, list(shards), out, cfg, progress=progress)
    fmt = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    typer.echo(f"evaluate {r['model']} on {cfg.split}: frame AUC {_auc_text(r['frame'])}, video AUC "
               f"{_auc_text(r['video'])}, video EER {fmt(r['video']['eer'])} (n = {plural(r['video']['n'], 'video')}: "
               f"{r['video']['n_real']} real, {r['video']['n_fake']} fake) -> {out / 'metrics.json'}")
    if r["overlap"]["videos"]:
        typer.echo(f"  left out: {r['overlap']['videos']} test video(s) seen in training, e.g. "
                   f"{'; '.join(r['overlap']['examples'][:3])}")
    for row in r["cross_dataset"]:
        typer.echo(f"  {row['trained_on']} -> {row['tested_on']}{' (cross)' if row['cross'] else ''}: "
                   f"video AUC {fmt(row['video_auc'])}, frame AUC {fmt(row['frame_auc'])}")


@app.command(rich_help_panel=PANEL)
def benchmark(
    protocol: Optional[str] = typer.Option(
        None, "--protocol", help="A shipped protocol (see 'facepipe protocols') or a protocol YAML file."),
    shards: list[Path] = typer.Option(..., "--shards", help="Test shard set(s) holding the protocol's columns."),
    out: Path = typer.Option(..., "--out", help="Output folder: benchmark.{json,csv,md,tex}, metrics.json."),
    model: Optional[list[str]] = typer.Option(
        None, "--model", help="Train this model once on --train-shards and benchmark it (repeatable)."),
    checkpoint: Optional[list[Path]] = typer.Option(
        None, "--checkpoint", help="Benchmark a trained checkpoint instead (repeatable)."),
    train_shards: Optional[Path] = typer.Option(None, "--train-shards", help="Training shard set (with --model)."),
    alias: Optional[list[str]] = typer.Option(
        None, "--alias", help="PROTOCOL_NAME=DATASET: the name a protocol dataset has in the shard sets."),
    drop_overlap: Optional[bool] = typer.Option(
        None, "--drop-overlap/--refuse-overlap", help="Test videos seen in training: leave out and report, or "
                                                      "refuse (default)."),
    params: Optional[Path] = typer.Option(
        None, "--params", help="params.yaml: the 'benchmark' section (and 'train', 'freq', 'evaluate')."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """The table every paper reports: train once (or take checkpoints), evaluate every column of a published
    protocol (frame and video AUC with 95 % intervals and n), write benchmark.{csv,md,tex}."""
    from facepipe.freq.config import FreqConfig
    from facepipe.stages.benchmark import BenchmarkConfig, run
    from facepipe.stages.evaluate import EvaluateConfig
    from facepipe.stages.train import TrainConfig

    data = _params_data(params, "benchmark", BenchmarkConfig)
    aliases = dict(data.get("aliases") or {})
    aliases.update(key_values(alias, "--alias", "PROTOCOL_NAME=DATASET"))
    data["aliases"] = aliases
    s_ = _sets(sets, "benchmark", "train", "evaluate", "freq")
    cfg = _configure(BenchmarkConfig, data, {
        "protocol": protocol, "overlap": None if drop_overlap is None else ("drop" if drop_overlap else "error")},
        "benchmark", s_["benchmark"])
    tcfg = _configure(TrainConfig, _params_data(params, "train", TrainConfig), {}, "train", s_["train"])
    ecfg = _configure(EvaluateConfig, _params_data(params, "evaluate", EvaluateConfig), {}, "evaluate", s_["evaluate"])
    freq = _configure(FreqConfig, _params_data(params, "freq", FreqConfig), {}, "freq", s_["freq"])
    r = run(out, cfg, list(shards), checkpoints=list(checkpoint or []), models=list(model or []),
            train_shards=train_shards, train_cfg=tcfg, freq=freq, eval_cfg=ecfg, progress=progress)
    for label, m in r["models"].items():
        typer.echo(f"benchmark {r['protocol']}: {label} (trained on {'+'.join(m['trained_on'])})")
        for name, c in m["columns"].items():
            if "missing" in c:
                typer.echo(f"  {name}: n/a ({c['missing']})")
                continue
            typer.echo(f"  {name}: frame AUC {_auc_text({'auc': c['frame_auc'], 'auc_ci': c['frame_auc_ci']})}, "
                       f"video AUC {_auc_text({'auc': c['video_auc'], 'auc_ci': c['video_auc_ci']})} "
                       f"(n = {plural(c['n_videos'], 'video')}: {c['n_real_videos']} real, {c['n_fake_videos']} fake)")
        for d in m["deviations"]:
            typer.echo(f"  deviation: {d}")
    typer.echo(f"-> {out / 'benchmark.md'}, benchmark.csv, benchmark.tex ({r['citation']})")


@app.command(rich_help_panel=PANEL)
@help_defaults(_ExplainConfig, {"split": "split", "n": "n", "seed": "seed", "method": "method", "layers": "layers",
                                "head_fusion": "head_fusion"})
def explain(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    shards: Path = typer.Option(..., "--shards", help="Shard folder (index.json) to read faces from."),
    out: Path = typer.Option(..., "--out", help="Output folder (replaced): images, maps.npz, summary, gallery.html."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'explain' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, help="Split to read."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Faces to explain, a seeded choice."),
    keys: Optional[Path] = typer.Option(None, "--keys", help="File with one sample key per line (instead of --n)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the choice of faces."),
    method: Optional[str] = typer.Option(
        None, help="auto | gradcam | gradcam++ | attn_grad | rollout (auto: the model's default)."),
    layers: Optional[str] = typer.Option(
        None, help="auto | last | last4 | all, or comma-separated module names (auto, the default: last for "
                   "gradcam/gradcam++, all blocks for attn_grad/rollout, as published)."),
    head_fusion: Optional[str] = typer.Option(None, "--head-fusion", help="mean | max | min over attention heads."),
    metrics: Optional[Path] = typer.Option(None, "--metrics", help="Also write the summary means to this JSON."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Grad-CAM / Grad-CAM++ / gradient-weighted attention / rollout maps of a checkpoint on a sample of faces."""
    from facepipe.stages.explain import ExplainConfig, run

    lay = None
    if layers is not None:
        lay = layers if layers in ("auto", "last", "last4", "all") else _csv_list(layers)
    cfg = _configure(ExplainConfig, _params_data(params, "explain", ExplainConfig),
                     {"split": split, "n": n, "seed": seed, "method": method, "layers": lay,
                      "head_fusion": head_fusion}, "explain", _sets(sets, "explain")["explain"])
    key_list = None
    if keys is not None:
        try:
            key_list = [k.strip() for k in keys.read_text().splitlines() if k.strip()]
        except OSError as e:
            raise InputError(f"{keys}: cannot read the key list ({e.strerror})") from None
        if not key_list:
            raise InputError(f"{keys}: no keys in the file")
    m = run(checkpoint, shards, out, cfg, keys=key_list, metrics=metrics, progress=progress)
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    typer.echo(f"explain {m['model']} ({m['explain_method']}): {plural(m['n'], 'face')}, "
               f"face mass {fmt(m['face_mass'])}, "
               f"pointing game {fmt(m['pointing_game'])} on {m['n_masked']} masked faces -> {out / 'gallery.html'}")


@app.command(rich_help_panel=PANEL)
def quickstart(
    folder: Path = typer.Option(Path("example"), "--dir", help="The sandbox project, relative to the checkout "
                                "(git-ignored there)."),
    checkout: Path = typer.Option(Path("."), "--checkout", help="The facepipe checkout (dvc.yaml, params.yaml)."),
    params: Optional[Path] = typer.Option(None, "--params", help="A params.yaml to use instead of the checkout's."),
) -> None:
    """Run the DVC pipeline on the bundled example in a sandbox project (example/: its own git + DVC repository, so
    the checkout's git status stays clean; DVC refuses a git-ignored dvc.lock)."""
    import json

    from facepipe.quickstart import run as run_quickstart

    box = run_quickstart(checkout, folder, params)
    typer.echo(f"quickstart: the example's pipeline ran in {box} (cd there for dvc metrics show, dvc plots show, "
               "dvc exp run)")
    m = box / "data" / "evaluate" / "metrics.json"
    if m.is_file():
        r = json.loads(m.read_text())
        typer.echo(f"  test split: frame AUC {_auc_text(r['frame'])} (n = {plural(r['frame']['n'], 'face')}), "
                   f"video AUC {_auc_text(r['video'])} (n = {plural(r['video']['n'], 'video')})")
