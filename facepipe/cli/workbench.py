"""The workbench's commands: features and embeddings of a checkpoint, seeds compared over DVC experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from facepipe.cli._common import _csv_list, plural
from facepipe.errors import ConfigError

app = typer.Typer()


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="Videos, photos, folders of them, or a .csv / .parquet list of "
                                                  "files (a 'path' column, optionally 'label')."),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint from 'facepipe train' (best.pt)."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Output folder: predictions.parquet, "
                             "predictions.csv, annotated/, explain/, extract/ (a rerun resumes)."),
    explain: bool = typer.Option(False, "--explain", help="Also write each face's Grad-CAM overlay (explain/)."),
    device: Optional[str] = typer.Option(None, help="Model device: cpu, cuda, cuda:N [default: the GPU when there "
                                                    "is one, else cpu]."),
    workers: int = typer.Option(2, min=0, help="Extract worker processes (0: in this process)."),
    batch_size: int = typer.Option(32, min=1, help="Faces per model batch."),
    video_agg: str = typer.Option("mean", help="Per-track aggregation: mean, max, topk, deepfakebench; a video "
                                               "takes its most-fake track."),
    faces: str = typer.Option("all", help="Face tracks scored: all, or main (the largest, the training rule)."),
    params: Optional[Path] = typer.Option(None, "--params", help="Take the extract settings from this params.yaml "
                                          "instead of the checkpoint (older checkpoints record none)."),
    root: Optional[Path] = typer.Option(None, help="Folder the paths of a list of files are relative to "
                                                   "[default: the list's folder]."),
    progress: bool = typer.Option(True, help="Show progress bars."),
) -> None:
    """Score your own videos and photos with a trained checkpoint, made into crops exactly as its training crops were
    (the checkpoint records the extract settings)."""
    from facepipe.inference import format_summary
    from facepipe.inference import predict as run_predict

    s = run_predict(inputs, checkpoint, out, explain=explain, device=device, workers=workers, batch_size=batch_size,
                    video_agg=video_agg, faces=faces, params=params, root=root, progress=progress)
    typer.echo(format_summary(s))
    typer.echo(f"-> {out / 'predictions.parquet'}, {out / 'predictions.csv'}, {out / 'annotated'}/"
               + (f", {out / 'explain'}/" if explain else ""))


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
    tsne: bool = typer.Option(True, help="t-SNE plot of the first layer (tsne.png; per-class histograms, "
                                         "histogram.png, for a 1-D layer)."),
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
    typer.echo(f"features: {plural(r['samples'], 'sample')} of split '{split}' -> {out}"
               + (f" (t-SNE: {r['tsne']})" if r.get("tsne") else ""))
    if r.get("note"):
        typer.echo(f"note: {r['note']}")


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
