"""Interoperability: export to and import from other tools' layouts (DeepfakeBench)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facepipe.cli._common import _csv_list, key_values, plural
from facepipe.errors import InputError

export_app = typer.Typer(help="Write facepipe data in another tool's layout.", no_args_is_help=True,
                         rich_markup_mode=None)
import_app = typer.Typer(help="Turn another tool's preprocessed data into facepipe shards.", no_args_is_help=True,
                         rich_markup_mode=None)


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
    landmarks: bool = typer.Option(False, "--landmarks", help="Require 68-point landmarks for every face (made by "
                                   "extract --preset deepfakebench): refuse rather than let DeepfakeBench's "
                                   "with_landmark read zeros."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Write crops in DeepfakeBench's layout (frames, masks, landmarks) with its dataset JSON, from shards or extract.

    DeepfakeBench has no validation mode: the exported val split is listed in the JSON, but its trainer trains on
    train and tests on test. It keeps one face per frame and one label per video: faces of other tracks and faces
    whose label differs from their video's are left out (counted below). Landmark files are written only for faces
    with 68-point landmarks (extract --preset deepfakebench); --landmarks makes their absence an error.
    """
    from facepipe import deepfakebench as dfb

    if (shards is None) == (extract is None):
        raise InputError("export deepfakebench: give either --shards or --extract (with --manifest)")
    if extract is not None and manifest is None:
        raise InputError("export deepfakebench: --extract needs --manifest (splits and methods come from it)")
    faces = (dfb.faces_from_shards(shards) if shards is not None else
             dfb.faces_from_extract(extract, manifest, dataset))
    s = dfb.export(faces, out, path_prefix=path_prefix, compression=compression,
                   adapters=key_values(adapter, "--adapter", "DATASET=ADAPTER"), progress=progress,
                   method_map=key_values(method_map, "--method-map", "METHOD=NAME"), landmarks=landmarks)
    typer.echo(f"export: {s.frames} frames, {s.masks} masks, {s.landmarks} landmark files -> {out}/rgb")
    if not s.landmarks:
        typer.echo("note: no landmark files (the faces have no 68-point landmarks: extract with --preset "
                   "deepfakebench); DeepfakeBench configs with with_landmark: true would read zeros")
    for (name, label, split), n in sorted(s.videos.items()):
        typer.echo(f"  {name} {label} {split}: {plural(n, 'video')}")
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
                        dataset_names=key_values(dataset_name, "--dataset-name", "DFB_NAME=DATASET"),
                        path_prefix=path_prefix,
                        max_samples=max_samples, seed=seed, progress=progress)
    typer.echo(f"import: {s.frames} frames ({s.masks} masks, {s.landmarks} landmark files) of "
               f"{plural(sum(s.videos.values()), 'video')} -> {out}/{s.shards.version}")
    for (ds, split), n in sorted(s.videos.items()):
        typer.echo(f"  {ds} {split}: {plural(n, 'video')}, "
                   f"{plural(s.shards.samples.get(split, 0), 'sample')} in the split")
