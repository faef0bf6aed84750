"""``facepipe`` command line: thin commands, one per stage. Errors reach the user as one line, exit 1."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from facepipe import __version__
from facepipe.config import field_paths, load_params, parse_sets, set_dotted, validate_section
from facepipe.errors import ConfigError, FacepipeError, InputError

app = typer.Typer(
    name="facepipe",
    help="Reproducible, fast data preparation for face-forgery (deepfake) detection research.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_STATE = {"verbose": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"facepipe {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging and full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _STATE["verbose"] = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("facepipe").setLevel(logging.INFO)


SET_HELP = ("KEY=VALUE: set any parameter of this stage (repeatable; dvc exp run -S's convention: a dotted key "
            "of the params.yaml section, e.g. -S align.size=128 or -S extract.align.size=128; VALUE is YAML). "
            "Applied after --params and the named options.")


def _params_data(params: Optional[Path], section: str, model) -> dict:
    """A stage's parameters as a plain dict: its params.yaml section (validated), or the defaults."""
    return (load_params(params, section, model) if params else model()).model_dump()


def _configure(model, data: dict, overrides: dict, section: str, sets: Optional[list] = None):
    """The one path from the command line to a stage's parameter model: ``data`` (``--params`` or the
    defaults), then the named options that were given (``None`` = not given; dotted keys reach nested
    sections), then the ``-S`` items of this section (:func:`facepipe.config.parse_sets`), then validation;
    errors name the key.

    Every named option's key must be a field of ``model`` (checked whether or not the option was given, so a
    stale flag fails on any run of its command and in the CLI tests)."""
    unknown = sorted(set(overrides) - field_paths(model))
    if unknown:
        raise FacepipeError(f"facepipe {section}: options mapped to no parameter of {model.__name__}: "
                            f"{', '.join(unknown)} (a bug in facepipe/cli.py)")
    for k, v in overrides.items():
        if v is not None:
            set_dotted(data, k, v)
    for k, v in sets or ():
        set_dotted(data, k, v)
    return validate_section(model, data, f"{section} options")


def _sets(items: Optional[list[str]], *sections: str) -> dict:
    """``-S`` items of a command reading ``sections`` (its own first), per section."""
    return parse_sets(items, sections)


def _csv_list(text: Optional[str]) -> Optional[list[str]]:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


@app.command()
def extract(
    video_dir: Path = typer.Option(..., "--video-dir", help="Folder searched recursively for videos and still images."),
    out: Path = typer.Option(..., "--out", help="Output folder (faces/, faces.parquet, videos.parquet)."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'extract' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    manifest: Optional[Path] = typer.Option(
        None, "--manifest", help="Only the videos this manifest lists, with its labels and originals (per-face labels)."),
    sampling: Optional[str] = typer.Option(None, help="Frame sampling: uniform | stride | fps."),
    num_frames: Optional[int] = typer.Option(None, help="uniform: frames per video (default 32)."),
    stride: Optional[int] = typer.Option(None, help="stride: keep every k-th frame."),
    fps: Optional[float] = typer.Option(None, help="fps: frames per second of video."),
    max_frames: Optional[int] = typer.Option(None, help="stride/fps: at most this many frames per video."),
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
    model_root: Optional[str] = typer.Option(None, help="insightface model root (default ~/.insightface/models)."),
    max_side: Optional[int] = typer.Option(None, help="Detect on a copy with this longest side (px)."),
    min_face: Optional[int] = typer.Option(None, help="Smallest face searched for, detection-image px."),
    min_face_frac: Optional[float] = typer.Option(None, help="Smallest face as a fraction of the frame's shorter "
                                                             "side (0 = off; 0.1 suits FF++/DFDC)."),
    min_score: Optional[float] = typer.Option(None, help="Drop faces scoring below this."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda (onnxruntime provider)."),
    align: Optional[str] = typer.Option(None, help="arcface (5-point similarity) | box (square box crop)."),
    size: Optional[int] = typer.Option(None, help="Crop side in pixels (default 256)."),
    margin: Optional[float] = typer.Option(None, help="Context margin (default 1.3)."),
    select: Optional[str] = typer.Option(
        None, help="main | all: which face tracks to keep, in real and fake videos alike (default main: the track "
                   "with the largest summed face area)."),
    label_policy: Optional[str] = typer.Option(None, help="Fakes without a usable original: main | all | drop."),
    image_format: Optional[str] = typer.Option(None, "--format", help="png (lossless) | jpg."),
    jpeg_quality: Optional[int] = typer.Option(None, help="JPEG quality when --format jpg."),
    jpeg_subsampling: Optional[str] = typer.Option(None, help="JPEG chroma subsampling: 444 (none) | 422 | 420."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", min=0,
                                          help="Worker processes (0 = in this process; default 2)."),
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
    from facepipe.report import contact_sheet as make_sheet
    from facepipe.stages.extract import ExtractConfig, run

    if old_face_detector is not None:
        import warnings

        warnings.warn("facepipe extract --detector: renamed to --face-detector (the forgery model is train's "
                      "--model); the old name goes in the next release", FutureWarning, stacklevel=1)
        face_detector = face_detector or old_face_detector

    overrides = {
        "sampling.strategy": sampling, "sampling.num_frames": num_frames, "sampling.stride": stride,
        "sampling.fps": fps, "sampling.max_frames": max_frames, "face_detector.name": face_detector,
        "face_detector.model_root": model_root, "face_detector.max_side": max_side, "face_detector.min_face_px": min_face,
        "face_detector.min_face_frac": min_face_frac,
        "face_detector.min_score": min_score, "face_detector.device": device, "align.mode": align, "align.preset": preset,
        "face_detector.dlib_81": None if dlib_81 is None else str(dlib_81),
        "align.size": size, "align.margin": margin, "track.select": select, "labels.policy": label_policy,
        "output.format": image_format, "output.jpeg_quality": jpeg_quality,
        "output.jpeg_subsampling": jpeg_subsampling, "workers": workers,
        "timeout_s": timeout, "file_fingerprint": fingerprint, "engine": engine, "ray_address": address,
    }
    cfg = _configure(ExtractConfig, _params_data(params, "extract", ExtractConfig), overrides, "extract",
                     _sets(sets, "extract")["extract"])
    s = run(video_dir, out, cfg, progress=progress, manifest=manifest)
    typer.echo(f"extract: {s.processed} videos processed, {s.skipped} skipped (unchanged), "
               f"{s.faces_written} faces written in {s.seconds:.1f}s with {s.detector} (stage {s.fingerprint})")
    typer.echo("status: " + ", ".join(f"{k}={v}" for k, v in s.statuses.items()))
    for line in s.problems:
        typer.echo(f"  {line}")
    if s.labels:
        typer.echo("faces by label source: " + ", ".join(f"{k}={v}" for k, v in s.labels.items()))
    typer.echo(f"tables: {out / 'videos.parquet'}, {out / 'faces.parquet'}; crops under {out / 'faces'}")
    if contact_sheet:
        sheet = make_sheet(out)
        if sheet is not None:
            typer.echo(f"contact sheet: {sheet}")
    bad = sum(s.statuses.get(k, 0) for k in ("error", "decode_error", "unsupported"))
    if strict and bad:
        raise FacepipeError(f"--strict: {bad} video(s) failed (error, decode_error or unsupported; see status in "
                            f"{out / 'videos.parquet'})")


@app.command()
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
    for kv in option or []:
        if "=" not in kv:
            raise FacepipeError(f"--option '{kv}': expected KEY=VALUE")
        k, v = kv.split("=", 1)
        options[k] = v
    data["options"] = options
    cfg = _configure(ManifestConfig, data, {"split_mode": split_mode, "compression": compression}, "manifest",
                     _sets(sets, "manifest")["manifest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    s = run(adapter, root, dataset, cfg, out)
    typer.echo(f"manifest: {s.videos} videos of '{dataset}' ({adapter}) -> {out}")
    for split, r in s.report.items():
        typer.echo(f"  {split:5s} real {r['real']:6d} fake {r['fake']:6d}  ({100 * r['share']:.1f}% of videos, "
                   f"{100 * r['share_real']:.1f}% of reals, {100 * r['share_fake']:.1f}% of fakes)")
    for reason, e in s.excluded.items():
        typer.echo(f"  left out by the protocol: {e['n']} ({reason}; e.g. {', '.join(e['examples'])})")


@app.command()
def datasets() -> None:
    """List the dataset adapters, the layout each expects and the document it follows."""
    from facepipe.datasets import list_adapters

    for a in list_adapters():
        typer.echo(f"{a.name}\n" + "\n".join("    " + line for line in a.layout.splitlines()) + "\n")


@app.command()
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
    typer.echo(f"freq: {s.processed} videos processed, {s.skipped} skipped (unchanged), {s.crops} crops, "
               f"views stored: {', '.join(cfg.views) or 'none (computed on the fly by the loader)'} in "
               f"{s.seconds:.1f}s -> {out}")


def _parse_input(text: str) -> dict:
    fields = {}
    for part in text.split(","):
        if "=" not in part:
            raise FacepipeError(f"--input '{text}': expected dataset=NAME,extract=DIR,manifest=FILE[,freq=DIR]")
        k, v = part.split("=", 1)
        fields[k.strip()] = v.strip()
    return fields


@app.command()
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
        data["inputs"] = [_parse_input(t) for t in inputs]
    elif not data["inputs"] and params:
        from facepipe.config import dataset_keys

        # the pipeline's convention: every dataset in params.yaml's 'datasets' under data/datasets/<name>/
        data["inputs"] = [{"dataset": k, "extract": f"data/datasets/{k}/extract", "freq": f"data/datasets/{k}/freq",
                           "manifest": f"data/datasets/{k}/manifest.parquet"} for k in dataset_keys(params)]
    cfg = _configure(ShardConfig, data, {"max_samples": max_samples, "max_bytes": max_bytes, "seed": seed,
                                         "views": _csv_list(views), "statuses": _csv_list(statuses)}, "shard",
                     _sets(sets, "shard")["shard"])
    s = run(out, cfg, progress=progress)
    for k, n in sorted(s.left_out.items()):
        typer.echo(f"left out {n} face(s) of {k} videos (shard.statuses {list(cfg.statuses)})")
    typer.echo("shard: " + ", ".join(f"{k} {s.samples[k]} samples in {s.shards[k]} shards" for k in s.samples)
               + f"; {s.bytes / 1e6:.1f} MB in {s.seconds:.1f}s -> {out}/{s.version}")
    typer.echo("faces by label source: " + ", ".join(f"{k}={v}" for k, v in sorted(s.label_sources.items())))


@app.command()
def inspect(
    shards: Path = typer.Argument(..., help="Shard folder (or its index.json)."),
    n: int = typer.Option(32, help="Samples on the contact sheet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Contact sheet PNG (default SHARDS/contact_sheet.png)."),
) -> None:
    """Count samples per split/dataset/label/method by reading every shard; write a contact sheet."""
    import polars as pl

    from facepipe.report import inspect_shards

    counts, sheet, problems = inspect_shards(shards, n=n, out_png=out)
    with pl.Config(tbl_rows=200, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        typer.echo(str(counts))
    typer.echo(f"total: {int(counts['len'].sum()) if counts.height else 0} samples")
    if sheet:
        typer.echo(f"contact sheet: {sheet}")
    for p in problems[:20]:
        typer.echo(f"problem: {p}", err=True)
    if problems:
        raise FacepipeError(f"{len(problems)} problem(s) found in {shards}")


@app.command()
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
    typer.echo(f"train: {s['steps']} steps of {s['model']}, best val {s['select']} "
               f"{s['best'] if s['best'] is not None else 'n/a'} at step {s['best_step']} ({s['stop']}); "
               f"data wait {100 * s['data_wait_fraction']:.0f}% of step time -> {out}")


@app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    shards: list[Path] = typer.Option(..., "--shards", help="Shard folder(s) to test on (repeat for cross-dataset)."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.json, predictions.parquet, roc_*.csv."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'evaluate' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default test)."),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help="Horizontal-flip test-time augmentation."),
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
                     {"split": split, "tta_hflip": tta, "video_agg": video_agg,
                      "overlap": None if drop_overlap is None else ("drop" if drop_overlap else "error")}, "evaluate",
                     _sets(sets, "evaluate")["evaluate"])
    r = run(checkpoint, list(shards), out, cfg, progress=progress)
    fmt = lambda v: "n/a" if v is None or v != v else f"{v:.4f}"  # noqa: E731
    typer.echo(f"evaluate {r['model']} on {cfg.split}: frame AUC {_auc_text(r['frame'])}, video AUC "
               f"{_auc_text(r['video'])}, video EER {fmt(r['video']['eer'])} (n = {r['video']['n']} videos: "
               f"{r['video']['n_real']} real, {r['video']['n_fake']} fake) -> {out / 'metrics.json'}")
    if r["overlap"]["videos"]:
        typer.echo(f"  left out: {r['overlap']['videos']} test video(s) seen in training, e.g. "
                   f"{'; '.join(r['overlap']['examples'][:3])}")
    for row in r["cross_dataset"]:
        typer.echo(f"  {row['trained_on']} -> {row['tested_on']}{' (cross)' if row['cross'] else ''}: "
                   f"video AUC {fmt(row['video_auc'])}, frame AUC {fmt(row['frame_auc'])}")


@app.command()
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
    for a in alias or []:
        name, sep, ds = a.partition("=")
        if not sep or not name or not ds:
            raise InputError(f"--alias '{a}': expected PROTOCOL_NAME=DATASET")
        aliases[name] = ds
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
                       f"(n = {c['n_videos']} videos: {c['n_real_videos']} real, {c['n_fake_videos']} fake)")
        for d in m["deviations"]:
            typer.echo(f"  deviation: {d}")
    typer.echo(f"-> {out / 'benchmark.md'}, benchmark.csv, benchmark.tex ({r['citation']})")


@app.command()
def protocols() -> None:
    """List the shipped evaluation protocols: training data, columns, video aggregation, citation."""
    from facepipe.protocols import list_protocols

    for p in list_protocols():
        typer.echo(f"{p.name}: {p.title}\n    train on {'+'.join(p.train)}; video aggregation "
                   f"{p.video_aggregation}; {len(p.columns)} columns: {', '.join(c.name for c in p.columns)}\n"
                   f"    {p.citation}\n")


def _auc_text(m: dict) -> str:
    """``0.9100 [0.8500, 0.9600]`` (the AUC and its 95 % bootstrap interval), or ``n/a``."""
    a = m.get("auc")
    if a is None or a != a:
        return "n/a"
    ci = m.get("auc_ci")
    return f"{a:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


@app.command()
def explain(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    shards: Path = typer.Option(..., "--shards", help="Shard folder (index.json) to read faces from."),
    out: Path = typer.Option(..., "--out", help="Output folder (replaced): images, maps.npz, summary, gallery.html."),
    params: Optional[Path] = typer.Option(None, "--params", help="params.yaml to read the 'explain' section from."),
    sets: Optional[list[str]] = typer.Option(None, "-S", "--set", help=SET_HELP),
    split: Optional[str] = typer.Option(None, help="Split to read (default test)."),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Faces to explain, a seeded choice (default 16)."),
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
    typer.echo(f"explain {m['model']} ({m['explain_method']}): {m['n']} faces, face mass {fmt(m['face_mass'])}, "
               f"pointing game {fmt(m['pointing_game'])} on {m['n_masked']} masked faces -> {out / 'gallery.html'}")


@app.command()
def features(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    shards: Path = typer.Option(..., "--shards", help="Shard folder (index.json) to read samples from."),
    split: str = typer.Option("test", help="Split to read."),
    layers: Optional[str] = typer.Option(None, help="Comma-separated module names (see --list-layers)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder: <layer>.npy, index.parquet, tsne.png."),
    list_layers: bool = typer.Option(False, "--list-layers", help="Print the model's layers with output shapes."),
    pool: bool = typer.Option(False, help="Pooled (N, C) embeddings instead of full maps."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most this many samples."),
    batch_size: int = typer.Option(32, min=1, help="Samples per batch."),
    tsne: bool = typer.Option(True, help="t-SNE plot of the first layer (tsne.png)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Feature maps / embeddings and attention weights of named layers per sample, and a t-SNE plot."""
    from facepipe.train.analysis import extract_features, layer_table

    if list_layers:
        for name, kind, shape in layer_table(checkpoint, shards, split):
            typer.echo(f"{name:48s} {kind:32s} {tuple(shape)}")
        return
    names = _csv_list(layers)
    if not names or out is None:
        raise ConfigError("give --layers NAME[,NAME] and --out DIR (or --list-layers)")
    r = extract_features(checkpoint, shards, split, names, out, pool=pool, limit=limit, batch_size=batch_size,
                         tsne=tsne, progress=progress)
    for name, shape in r["layers"].items():
        typer.echo(f"  {name}: {tuple(shape)} float16")
    typer.echo(f"features: {r['samples']} samples of split '{split}' -> {out}"
               + (f" (t-SNE: {r['tsne']})" if r.get("tsne") else ""))


@app.command()
def compare(
    repo: Path = typer.Option(Path("."), "--repo", help="The DVC repository holding the experiments."),
    metrics: Optional[str] = typer.Option(
        None, help="Comma-separated '<metrics file>:<key>' columns (default: evaluate's video AUC/EER, frame AUC)."),
    by: Optional[str] = typer.Option(
        None, help="Comma-separated params defining a configuration, e.g. 'params.yaml:train.model' "
                   "(default: every param that varies, except the seed)."),
    out: Optional[Path] = typer.Option(Path("compare"), "--out", help="Folder for compare.csv and compare.md."),
    wait: bool = typer.Option(False, help="First wait until no experiment is queued or running."),
    progress: bool = typer.Option(True, help="Show a progress bar while waiting."),
) -> None:
    """Mean ± std over seeds per configuration of a DVC experiment grid (dvc exp run --queue; dvc queue start)."""
    from facepipe.train.analysis import DEFAULT_METRICS, markdown, wait_for_queue
    from facepipe.train.analysis import compare as compare_runs

    if wait:
        counts = wait_for_queue(repo, progress=progress)
        if counts.get("failed"):
            typer.echo(f"compare: {counts['failed']} experiment(s) failed (see `dvc queue logs NAME`)", err=True)
    chosen = _csv_list(metrics) or list(DEFAULT_METRICS)
    group = _csv_list(by)
    group = [g if ":" in g else f"params.yaml:{g}" for g in group] if group else None
    df = compare_runs(repo, chosen, group, out=out)
    typer.echo(markdown(df, chosen), nl=False)
    if out is not None:
        typer.echo(f"-> {out / 'compare.md'}, {out / 'compare.csv'}")


@app.command()
def example(
    out: Path = typer.Option(Path("example/videos"), "--out", help="Folder to write the example videos to."),
    seconds: float = typer.Option(2.0, min=0.2, help="Length of each clip in seconds."),
) -> None:
    """Build the small synthetic example video folder from photos shipped inside installed packages."""
    from facepipe.stages.example import build_example

    d = build_example(out, seconds=seconds)
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    typer.echo(f"example: {len(files)} files in {d}: " + ", ".join(files))


@app.command("face-detectors")
def face_detectors(
    model_root: str = typer.Option("~/.insightface/models", help="insightface model root to search."),
) -> None:
    """List the face detectors (which find faces) and whether each can run here, offline."""
    from facepipe.faces import list_face_detectors, resolve_detector_name
    from facepipe.faces.config import DetectorConfig
    from facepipe.faces.insight import find_detector_model
    from facepipe.faces.mtcnn import mtcnn_weights

    for name in list_face_detectors():
        if name == "mtcnn":
            try:
                where = str(mtcnn_weights()["pnet"].parent)
            except FacepipeError as e:
                where = f"unavailable: {e}"
        elif name == "dlib_hog":
            from facepipe.faces.dlib68 import predictor_path

            try:
                where = f"{predictor_path()} (preset deepfakebench)"
            except FacepipeError as e:
                where = f"unavailable: {e}"
        else:
            p = find_detector_model(name, model_root)
            where = str(p) if p else f"no pack under {model_root}"
        typer.echo(f"{name:11s} {where}")
    typer.echo(f"auto -> {resolve_detector_name(DetectorConfig(model_root=model_root))}")


@app.command()
def models() -> None:
    """List the forgery-detector zoo (models that classify faces as real or fake): inputs, size, paper."""
    from facepipe.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        typer.echo(f"{name:17s} {spec.family:14s} inputs={','.join(spec.inputs):16s} size={spec.input_size:<4d} "
                   f"{spec.paper}")
    typer.echo("\nalso: timm:<any timm model> (options pool, freeze_backbone, drop_rate, plugins, features_only, "
               "out_indices), package.module:factory, and --import FILE for your own")


export_app = typer.Typer(help="Write facepipe data in another tool's layout.", no_args_is_help=True,
                         rich_markup_mode=None)
import_app = typer.Typer(help="Turn another tool's preprocessed data into facepipe shards.", no_args_is_help=True,
                         rich_markup_mode=None)
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")


def _pairs(items: Optional[list[str]], what: str) -> dict[str, str]:
    out = {}
    for t in items or []:
        k, sep, v = t.partition("=")
        if not sep or not k or not v:
            raise InputError(f"{what} must be NAME=VALUE, got {t!r}")
        out[k.strip()] = v.strip()
    return out


@export_app.command("deepfakebench")
def export_deepfakebench(
    out: Path = typer.Option(..., "--out", help="Output folder: rgb/, dataset_json/, label_dict.yaml."),
    shards: Optional[str] = typer.Option(None, "--shards", help="Shard folder, index.json or s3:// URL."),
    extract: Optional[Path] = typer.Option(None, "--extract", help="An extract output folder (with --manifest)."),
    manifest: Optional[Path] = typer.Option(None, "--manifest", help="The manifest the extract output was made with."),
    dataset: Optional[str] = typer.Option(None, help="--extract: the manifest's dataset to export (default all)."),
    adapter: Optional[list[str]] = typer.Option(
        None, "--adapter", help="NAME=ADAPTER: a dataset not named after its adapter (e.g. myff=ffpp); repeat."),
    method_map: Optional[list[str]] = typer.Option(
        None, "--method-map", help="METHOD=NAME: the DeepfakeBench label name for fakes of METHOD (required for a "
                                   "method the dataset's naming lacks, e.g. DFDC=DFDC_Fake under ffpp); repeat."),
    path_prefix: str = typer.Option("./datasets/rgb", help="What the JSON's paths start with instead of OUT/rgb "
                                                           "(DeepfakeBench's rgb_dir, relative, starting with '.')."),
    compression: str = typer.Option("c23", help="Compression level key for FaceForensics++-family datasets."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write crops in DeepfakeBench's layout (frames, masks, landmarks) with its dataset JSON, from shards or extract."""
    from facepipe import deepfakebench as dfb

    if (shards is None) == (extract is None):
        raise InputError("export deepfakebench: give either --shards or --extract (with --manifest)")
    if extract is not None and manifest is None:
        raise InputError("export deepfakebench: --extract needs --manifest (splits and methods come from it)")
    faces = (dfb.faces_from_shards(shards) if shards is not None else
             dfb.faces_from_extract(extract, manifest, dataset))
    s = dfb.export(faces, out, path_prefix=path_prefix, compression=compression,
                   adapters=_pairs(adapter, "--adapter"), progress=progress,
                   method_map=_pairs(method_map, "--method-map"))
    typer.echo(f"export: {s.frames} frames, {s.masks} masks, {s.landmarks} landmark files -> {out}/rgb")
    for (name, label, split), n in sorted(s.videos.items()):
        typer.echo(f"  {name} {label} {split}: {n} videos")
    for why, n in sorted(s.skipped.items()):
        typer.echo(f"  left out {n} face(s): {why}")
    typer.echo("json: " + ", ".join(s.json_files) + f"; label names: {out}/label_dict.yaml")


@import_app.command("deepfakebench")
def import_deepfakebench(
    json_files: list[Path] = typer.Option(..., "--json", help="A DeepfakeBench dataset JSON; repeat for several."),
    root: Path = typer.Option(..., "--root", help="The folder the JSON's paths stand for (with --path-prefix)."),
    out: str = typer.Option(..., "--out", help="Shard output folder or s3://bucket/prefix."),
    path_prefix: str = typer.Option("./datasets/rgb", help="The leading part of the JSON's paths that --root "
                                                           "replaces (DeepfakeBench's rgb_dir)."),
    label_dict: Optional[Path] = typer.Option(None, help="YAML/JSON of extra label names -> 0/1 (e.g. DF40's)."),
    labels: Optional[str] = typer.Option(None, help="Comma-separated label names to import (default all)."),
    compression: str = typer.Option("c23", help="Compression level to read from FaceForensics++-family JSONs."),
    dataset_name: Optional[list[str]] = typer.Option(
        None, "--dataset-name", help="DFB_NAME=NAME: facepipe dataset name for a DeepfakeBench dataset; repeat."),
    max_samples: int = typer.Option(2000, help="Samples per shard at most."),
    seed: int = typer.Option(0, help="Shuffle seed."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Turn DeepfakeBench-preprocessed frames and their dataset JSON into facepipe shards (labels, splits, methods,
    frame indices, masks and landmarks kept; leakage checked)."""
    from facepipe import deepfakebench as dfb

    s = dfb.import_json([str(j) for j in json_files], root, out,
                        label_dict=dfb.load_label_dict(label_dict) if label_dict else None,
                        compression=compression, only=_csv_list(labels),
                        dataset_names=_pairs(dataset_name, "--dataset-name"), path_prefix=path_prefix,
                        max_samples=max_samples, seed=seed, progress=progress)
    typer.echo(f"import: {s.frames} frames ({s.masks} masks, {s.landmarks} landmark files) of "
               f"{sum(s.videos.values())} videos -> {out}/{s.shards.version}")
    for (ds, split), n in sorted(s.videos.items()):
        typer.echo(f"  {ds} {split}: {n} videos, {s.shards.samples.get(split, 0)} samples in the split")


def _group_stage_commands() -> None:
    """``facepipe --help`` lists the pipeline's stages (:data:`facepipe.stages.STAGES`, the list ``dvc.yaml``
    follows) in their own panel, in pipeline order."""
    from facepipe.stages import STAGES

    by_name = {(c.name or c.callback.__name__.replace("_", "-")): c for c in app.registered_commands}
    for name in STAGES:
        by_name[name].rich_help_panel = "Pipeline stages (dvc.yaml, in order)"
    order = {name: i for i, name in enumerate(STAGES)}
    app.registered_commands.sort(key=lambda c: order.get(c.name or c.callback.__name__.replace("_", "-"), len(order)))


_group_stage_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except FacepipeError as e:
        if _STATE["verbose"]:
            traceback.print_exc()
        typer.echo(f"facepipe: error: {e}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("facepipe: interrupted", err=True)
        sys.exit(130)
