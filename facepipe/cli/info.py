"""Commands that list or inspect: dataset adapters, protocols, face detectors, the model zoo, shard sets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facepipe.cli._common import plural
from facepipe.errors import FacepipeError

app = typer.Typer()


@app.command()
def datasets() -> None:
    """List the dataset adapters, the layout each expects and the document it follows."""
    from facepipe.datasets import list_adapters

    for a in list_adapters():
        typer.echo(f"{a.name}\n" + "\n".join("    " + line for line in a.layout.splitlines()) + "\n")


@app.command()
def inspect(
    shards_arg: Optional[Path] = typer.Argument(None, metavar="[SHARDS]", help="Shard folder (or its index.json); "
                                                "the same as --shards."),
    shards_opt: Optional[Path] = typer.Option(None, "--shards", help="Shard folder (or its index.json), as every "
                                              "command that reads shards takes it."),
    n: int = typer.Option(32, help="Samples on the contact sheet."),
    out: Optional[Path] = typer.Option(None, "--out", help="Contact sheet PNG (default SHARDS/contact_sheet.png)."),
    bias: bool = typer.Option(False, "--bias", help="Run the shortcut probe: can nuisance features (JPEG quality, "
                              "blockiness, source resolution and bitrate, face size, sharpness, brightness) alone "
                              "tell real from fake? Table + histograms PNG (default SHARDS/bias.png)."),
    max_samples: int = typer.Option(2000, help="--bias: faces per split (drawn with --seed); 0 = all."),
    seed: int = typer.Option(0, help="--bias: the draw and the cross-validation folds."),
) -> None:
    """Count samples per split/dataset/label/method by reading every shard; write a contact sheet. With --bias, the
    shortcut probe instead."""
    import polars as pl

    if shards_arg is not None and shards_opt is not None and shards_arg != shards_opt:
        raise FacepipeError(f"two shard sets given ({shards_arg} and --shards {shards_opt}): give one")
    shards = shards_opt or shards_arg
    if shards is None:
        raise FacepipeError("give the shard set: facepipe inspect --shards DIR")

    from facepipe.report import inspect_shards

    if bias:
        _inspect_bias(shards, out, max_samples, seed)
        return

    counts, sheet, problems = inspect_shards(shards, n=n, out_png=out)
    with pl.Config(tbl_rows=200, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
        typer.echo(str(counts))
    typer.echo(f"total: {plural(int(counts['len'].sum()) if counts.height else 0, 'sample')}")
    if sheet:
        typer.echo(f"contact sheet: {sheet}")
    for p in problems[:20]:
        typer.echo(f"problem: {p}", err=True)
    if problems:
        raise FacepipeError(f"{len(problems)} problem(s) found in {shards}")


def _inspect_bias(shards: Path, out: Optional[Path], max_samples: int, seed: int) -> None:
    from facepipe.data.bias import format_report, histograms, probe_table, read_features, warnings_of

    table = read_features(shards, max_samples=max_samples or None, seed=seed)
    report = probe_table(table, seed=seed)
    typer.echo(format_report(report))
    png = histograms(table, out or (shards if shards.is_dir() else shards.parent) / "bias.png")
    typer.echo(f"histograms: {png}")
    for line in warnings_of(report, str(shards)):
        typer.echo(f"warning: {line}", err=True)


@app.command()
def protocols() -> None:
    """List the shipped evaluation protocols: training data, columns, video aggregation, citation."""
    from facepipe.protocols import list_protocols

    for p in list_protocols():
        typer.echo(f"{p.name}: {p.title}\n    train on {'+'.join(p.train)}; video aggregation "
                   f"{p.video_aggregation}; {len(p.columns)} columns: {', '.join(c.name for c in p.columns)}\n"
                   f"    {p.citation}\n")


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
