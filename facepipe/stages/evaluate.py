"""The ``evaluate`` stage: a checkpoint on one or more shard sets -> metrics JSON, predictions, ROC plots.

Frame-level (each face's own label) and video-level (the video's label) AUC / EER / DeepfakeBench's
nearest-point EER / AP / accuracy with real and fake accuracy, overall, per dataset and per manipulation
method, plus a cross-dataset table: every tested dataset against the datasets the checkpoint was trained
on (``cross`` = not among them). Views are computed exactly as in training: on the device, from the final
image, with the ``freq`` parameters the checkpoint recorded.

Before any number is computed, the test videos are checked against the checkpoint's training footprint
(:mod:`facepipe.data.footprint`): a test video the model has seen in some form (the same video, made from or
the original of a training video of another dataset, or a person of another dataset's training videos) is
refused (``overlap: error``, naming counts and examples) or left out and reported (``overlap: drop``). Fakes are
scored against the reals of their reference dataset (:func:`facepipe.metrics.with_references`: a fake made
from another dataset's video, as DF40's are, takes that dataset's reals; ``reference_reals`` overrides). Every
AUC carries a 95 % bootstrap interval over videos (``ci_resamples``, seeded).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.errors import InputError, Interrupted
from facepipe.stages import contract

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = 3


class TTAConfig(Section):
    """Test-time augmentation (``evaluate.tta``): the fake probability of a face (or clip) is the mean, in
    probability space, over every version of its image: each scale of ``scales`` (the image resized by that factor
    about its centre, then centre-cropped or zero-padded, i.e. mean-padded after normalisation, back to the input
    size), each also horizontally flipped with ``flip``. Frequency views are recomputed from every augmented image,
    as the loader computes them (a flipped spectrum is not the spectrum of the flipped image)."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @field_validator("scales")
    @classmethod
    def _positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(x <= 0 for x in v):
            raise ValueError(f"scales must be positive factors, at least one (got {list(v)})")
        return v

    @property
    def active(self) -> bool:
        """Whether any augmentation is applied."""
        return self.flip or tuple(self.scales) != (1.0,)

    def describe(self) -> str:
        """A short text for tables: ``none`` or e.g. ``flip, scales 0.9/1.0/1.1 (mean of probabilities)``."""
        if not self.active:
            return "none"
        parts = (["flip"] if self.flip else []) + (
            [f"scales {'/'.join(f'{x:g}' for x in self.scales)}"] if tuple(self.scales) != (1.0,) else [])
        return ", ".join(parts) + " (mean of probabilities)"


class EvaluateConfig(Section):
    """Parameters of the ``evaluate`` stage (section ``evaluate``): split, video aggregation (``mean`` |
    ``max`` | ``topk`` with ``topk`` | ``deepfakebench``: DeepfakeBench's mean over frames of the largest face,
    see :data:`facepipe.metrics.VIDEO_AGGREGATIONS`), test-time augmentation (``tta``: :class:`TTAConfig`),
    ``overlap`` (``error`` | ``drop``: test videos the checkpoint has seen),
    ``reference_reals`` (``{dataset or dataset/method: dataset}``: whose reals a dataset's fakes are scored
    against), ``ci_resamples`` (bootstrap resamples of each AUC's 95 % interval; 0 = none) and ``ci_seed``,
    batch size, workers."""

    split: str = "test"
    video_agg: Literal["mean", "max", "topk", "deepfakebench"] = "mean"
    topk: int = Field(5, ge=1)
    tta: TTAConfig = TTAConfig()
    overlap: Literal["error", "drop"] = "error"
    reference_reals: dict[str, str] = {}
    ci_resamples: int = Field(1000, ge=0)
    ci_seed: int = 0
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        """``tta_hflip`` is the old name of ``tta.flip`` (a FutureWarning; both at once are refused)."""
        if isinstance(data, dict) and "tta_hflip" in data:
            warnings.warn("evaluate.tta_hflip: renamed to evaluate.tta.flip (with evaluate.tta.scales); the old "
                          "name goes in the next release", FutureWarning, stacklevel=2)
            data = dict(data)
            flip = data.pop("tta_hflip")
            tta = data.get("tta") or {}
            tta = tta.model_dump() if hasattr(tta, "model_dump") else dict(tta)
            if "flip" in tta:
                raise ValueError("evaluate: tta_hflip and tta.flip given: use tta.flip")
            data["tta"] = {**tta, "flip": flip}
        return data


def fingerprint(cfg: EvaluateConfig) -> str:
    """Parameters, stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, cfg.model_dump(exclude={"num_workers"}), __name__)


def _clean(o):
    """JSON-safe: NaN -> None."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    if isinstance(o, float) and math.isnan(o):
        return None
    return o


def check_test_sets(ckpt: dict, shards: list, cfg: EvaluateConfig) -> tuple[pl.DataFrame | None, dict]:
    """The test videos of ``cfg.split`` of every set, and what overlaps the checkpoint's training footprint.

    Returns:
        (the sets' video tables, or ``None`` when a set has none; ``{"checked": bool, "action": ..., "videos": n,
        "real": n, "fake": n, "examples": [...], "_table": overlapping videos}``).

    Raises:
        InputError: overlapping videos under ``overlap: error``.
    """
    from facepipe.data.footprint import describe, overlaps, read_video_table

    tables = [read_video_table(s) for s in shards]
    fp = ckpt.get("footprint")
    info: dict = {"checked": False, "action": cfg.overlap, "videos": 0, "real": 0, "fake": 0, "examples": []}
    if any(t is None for t in tables):
        log.warning("evaluate: a shard set has no videos.parquet (older facepipe): test videos cannot be checked "
                    "against the training data; rerun 'facepipe shard'")
        return None, info
    videos = pl.concat(tables).filter(pl.col("split") == cfg.split).unique(["dataset", "video_id"]).sort(
        "dataset", "video_id")
    if fp is None:
        log.warning("evaluate: the checkpoint records no training footprint (older facepipe, or shards without "
                    "videos.parquet): test videos cannot be checked against its training data")
        return videos, info
    found = overlaps(fp, videos)
    real = int((found["label"] == 0).sum())
    info.update(checked=True, videos=found.height, real=real, fake=found.height - real, _table=found,
                examples=[f"{d}:{v} ({r})" for d, v, r in found.select("dataset", "video_id", "reason").head(5)
                          .iter_rows()])
    if found.height:
        msg = describe(found)
        if cfg.overlap == "error":
            raise InputError(f"evaluate: {msg}; fix the test set or set evaluate.overlap: drop "
                             "(--drop-overlap) to leave them out and report them")
        log.warning("evaluate: %s: left out (evaluate.overlap: drop)", msg)
    return videos, info


def references(videos: pl.DataFrame) -> pl.DataFrame:
    """Per fake video whose target original belongs to another dataset (its first ``source_ids`` entry is
    ``dataset:video_id``), that dataset: the reals its fakes are scored against (DF40's ``ff`` fakes -> FF++)."""
    first = pl.col("source_ids").list.first()
    return (videos.filter((pl.col("label") == 1) & first.str.contains(":"))
            .select("dataset", "video_id", first.str.split(":").list.first().alias("reference")))


def roc_tables(preds: pl.DataFrame, video_agg: str = "mean", topk: int = 5) -> dict[str, pl.DataFrame]:
    """The ROC curves evaluate writes for DVC plots: ``roc_frame.csv`` over the faces that count at frame level
    (uncertain faces, label -1, left out as in the metrics) and ``roc_video.csv`` over the videos' scores."""
    from facepipe.metrics import _frame_rows, roc_points, video_scores

    frames = _frame_rows(preds)
    videos = video_scores(preds, video_agg, topk)
    return {"roc_frame.csv": roc_points(frames["label"], frames["score"]),
            "roc_video.csv": roc_points(videos["label"], videos["score"])}


def run(checkpoint: str | Path, shards: list[str | Path], out_dir: str | Path, cfg: EvaluateConfig,
        progress: bool = True) -> dict:
    """Evaluate a checkpoint on ``cfg.split`` of each shard set.

    Writes ``OUT/evaluation.json`` (everything: per dataset and method, the cross-dataset table, the overlap check),
    ``OUT/metrics.json`` (the headline numbers, :func:`headline`), ``OUT/predictions.parquet`` (one row per frame),
    ``OUT/roc_frame.csv`` and ``OUT/roc_video.csv`` (DVC plots: fpr, tpr).

    Returns:
        The dict written to ``evaluation.json`` (with ``overlap``: what the footprint check found).

    Raises:
        InputError: unreadable checkpoint, no shard set, a set without the split, or test videos the
            checkpoint was trained on (``overlap: error``).
    """
    from facepipe.data.loader import make_loader
    from facepipe.metrics import metric_table
    from facepipe.train.engine import check_sample_kind, model_from_checkpoint, predict

    if not shards:
        raise InputError("evaluate: no shard set given")
    lm = model_from_checkpoint(checkpoint)
    model, spec, size, freq, amp, device, ckpt = lm.model, lm.spec, lm.size, lm.freq, lm.amp, lm.device, lm.checkpoint
    name = ckpt["model_name"]
    videos, overlap = check_test_sets(ckpt, shards, cfg)
    frames = []
    for src in shards:
        loader = make_loader(src, cfg.split, cfg.batch_size, cfg.num_workers, shuffle=False, rank=0, world_size=1,
                             image_size=size, views=spec.views, view_source="compute", freq=freq, mean=spec.mean,
                             std=spec.std, device=device)
        check_sample_kind(model, loader.shardset.sample_kind, loader.shardset.clip_length, str(src))
        try:
            frames.append(predict(model, loader, amp_dtype=amp, tta_hflip=cfg.tta.flip, tta_scales=cfg.tta.scales,
                                  progress=progress, desc=f"evaluate {Path(str(src)).name}"))
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
            raise Interrupted(f"evaluate: interrupted while scoring {src} ({len(frames)} of {len(shards)} shard "
                              f"set(s) scored); nothing was written to {out_dir} (its outputs appear only whole): "
                              "rerun the same command") from None
    preds = pl.concat(frames)
    if overlap["videos"] and cfg.overlap == "drop":
        preds = preds.join(overlap["_table"].select("dataset", "video_id"), on=["dataset", "video_id"], how="anti")
    if preds.height == 0:
        raise InputError(f"evaluate: split '{cfg.split}' of {shards} holds no samples")
    if videos is not None:
        preds = preds.join(references(videos), on=["dataset", "video_id"], how="left")
    table = metric_table(preds, cfg.video_agg, cfg.topk, cfg.reference_reals, cfg.ci_resamples, cfg.ci_seed)
    trained_on = ckpt.get("datasets", [])
    cross = []
    for ds, m in table["per_dataset"].items():
        cross.append({"trained_on": "+".join(trained_on), "tested_on": ds, "cross": ds not in trained_on,
                      "frame_auc": m["frame"]["auc"], "video_auc": m["video"]["auc"],
                      "video_eer": m["video"]["eer"], "video_ap": m["video"]["ap"]})
    overlap.pop("_table", None)
    result = {"checkpoint": str(checkpoint), "model": name, "step": ckpt.get("step"), "split": cfg.split,
              "stage_fingerprint": fingerprint(cfg),
              "video_agg": cfg.video_agg, "tta": {**cfg.tta.model_dump(), "description": cfg.tta.describe()},
              "overlap": overlap, **table,
              "cross_dataset": cross}
    out = Path(out_dir)
    with contract.stage_lock(out, STAGE):
        with atomic_path(out / "predictions.parquet") as tmp:
            preds.write_parquet(tmp)
        for name_, df in roc_tables(preds, cfg.video_agg, cfg.topk).items():
            with atomic_path(out / name_) as tmp:
                df.write_csv(tmp)
        with atomic_path(out / DETAIL_NAME) as tmp:
            tmp.write_text(json.dumps(_clean(result), indent=1))
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(_clean(headline(result)), indent=1))
    return result


DETAIL_NAME = "evaluation.json"
"""Everything evaluate measured (per dataset, per method, cross-dataset table, overlap check, TTA), beside the headline
``metrics.json``."""

HEADLINE_KEYS = ("auc", "auc_ci", "eer", "ap", "n", "n_real", "n_fake")


def headline(result: dict) -> dict:
    """What ``metrics.json`` (and so ``dvc metrics show``, ``dvc exp show``) holds: frame- and video-level AUC with its
    95 % interval, EER, AP and n per class, the step of the checkpoint; the detailed tables are in
    :data:`DETAIL_NAME`."""
    return {"step": result.get("step"), **{level: {k: result[level].get(k) for k in HEADLINE_KEYS}
                                           for level in ("frame", "video")}}
