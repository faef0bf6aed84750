"""The ``evaluate`` stage: a checkpoint on one or more shard sets -> metrics JSON, predictions, ROC plots.

Frame-level (each face's own label) and video-level (the video's label) AUC / EER / DeepfakeBench's
nearest-point EER / AP / accuracy with real and fake accuracy, overall, per dataset and per manipulation
method, plus a cross-dataset table: every tested dataset against the datasets the checkpoint was trained
on (``cross`` = not among them). Views are computed exactly as in training: on the device, from the final
image, with the ``freq`` parameters the checkpoint recorded.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field

from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.errors import InputError
from facepipe.stages import contract

log = logging.getLogger(__name__)

STAGE = "evaluate"
STAGE_VERSION = 2


class EvaluateConfig(Section):
    """Parameters of the ``evaluate`` stage (section ``evaluate``): split, video aggregation (``mean`` |
    ``max`` | ``topk`` with ``topk``), horizontal-flip test-time augmentation (views recomputed from the
    flipped image), batch size, workers."""

    split: str = "test"
    video_agg: Literal["mean", "max", "topk"] = "mean"
    topk: int = Field(5, ge=1)
    tta_hflip: bool = False
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(2, ge=0)


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


def run(checkpoint: str | Path, shards: list[str | Path], out_dir: str | Path, cfg: EvaluateConfig,
        progress: bool = True) -> dict:
    """Evaluate a checkpoint on ``cfg.split`` of each shard set.

    Writes ``OUT/metrics.json``, ``OUT/predictions.parquet`` (one row per frame), ``OUT/roc_frame.csv``
    and ``OUT/roc_video.csv`` (DVC plots: fpr, tpr).

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        InputError: unreadable checkpoint, no shard set, or a set without the split.
    """
    from facepipe.data.loader import make_loader
    from facepipe.metrics import metric_table, roc_points, video_scores
    from facepipe.train.engine import model_from_checkpoint, predict

    if not shards:
        raise InputError("evaluate: no shard set given")
    lm = model_from_checkpoint(checkpoint)
    model, spec, size, freq, amp, device, ckpt = lm.model, lm.spec, lm.size, lm.freq, lm.amp, lm.device, lm.checkpoint
    name = ckpt["model_name"]
    frames = []
    for src in shards:
        loader = make_loader(src, cfg.split, cfg.batch_size, cfg.num_workers, shuffle=False, rank=0, world_size=1,
                             image_size=size, views=spec.views, view_source="compute", freq=freq, mean=spec.mean,
                             std=spec.std, device=device)
        frames.append(predict(model, loader, amp_dtype=amp, tta_hflip=cfg.tta_hflip, progress=progress,
                              desc=f"evaluate {Path(str(src)).name}"))
    preds = pl.concat(frames)
    if preds.height == 0:
        raise InputError(f"evaluate: split '{cfg.split}' of {shards} holds no samples")
    table = metric_table(preds, cfg.video_agg, cfg.topk)
    trained_on = ckpt.get("datasets", [])
    cross = []
    for ds, m in table["per_dataset"].items():
        cross.append({"trained_on": "+".join(trained_on), "tested_on": ds, "cross": ds not in trained_on,
                      "frame_auc": m["frame"]["auc"], "video_auc": m["video"]["auc"],
                      "video_eer": m["video"]["eer"], "video_ap": m["video"]["ap"]})
    result = {"checkpoint": str(checkpoint), "model": name, "step": ckpt.get("step"), "split": cfg.split,
              "video_agg": cfg.video_agg, "tta_hflip": cfg.tta_hflip, **table, "cross_dataset": cross}
    out = Path(out_dir)
    with contract.stage_lock(out, STAGE):
        with atomic_path(out / "predictions.parquet") as tmp:
            preds.write_parquet(tmp)
        videos = video_scores(preds, cfg.video_agg, cfg.topk)
        for name_, df in (("roc_frame.csv", roc_points(preds["label"], preds["score"])),
                          ("roc_video.csv", roc_points(videos["label"], videos["score"]))):
            with atomic_path(out / name_) as tmp:
                df.write_csv(tmp)
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(_clean(result), indent=1))
    return result
