"""The ``evaluate`` stage: a checkpoint on one or more shard sets -> metrics JSON, predictions, ROC plots.

Frame- and video-level AUC / EER / AP / accuracy (with real and fake accuracy), overall, per dataset and
per manipulation method, plus a cross-dataset table: every tested dataset against the datasets the
checkpoint was trained on (``cross`` = not among them).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import polars as pl
import torch

from facepipe._io import atomic_path
from facepipe.config import EvaluateConfig
from facepipe.errors import InputError

log = logging.getLogger(__name__)


def _clean(o):
    """JSON-safe: NaN -> None."""
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, float) and math.isnan(o):
        return None
    return o


def run_evaluate(checkpoint: str | Path, shards: list[str | Path], out_dir: str | Path, cfg: EvaluateConfig,
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
    from facepipe.models import create_detector, get_spec
    from facepipe.train.engine import amp_dtype_for, load_checkpoint, predict
    from facepipe.train.metrics import metric_table, roc_points, video_scores

    if not shards:
        raise InputError("evaluate: no shard set given")
    ckpt = load_checkpoint(checkpoint)
    name = ckpt["detector"]
    spec = get_spec(name)
    size = ckpt.get("image_size") or spec.input_size
    opts = dict(ckpt["params"].get("detector_options") or {})
    if name == "f3net":
        opts["input_size"] = size
    model = create_detector(name, **opts)
    model.load_state_dict(ckpt["model"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    amp = amp_dtype_for(device, ckpt["params"].get("amp", "auto"))
    frames = []
    for src in shards:
        loader = make_loader(src, cfg.split, cfg.batch_size, cfg.num_workers, shuffle=False, rank=0, world_size=1,
                             image_size=size, views=spec.views, mean=spec.mean, std=spec.std, device=device)
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
    result = {"checkpoint": str(checkpoint), "detector": name, "step": ckpt.get("step"), "split": cfg.split,
              "video_agg": cfg.video_agg, "tta_hflip": cfg.tta_hflip, **table, "cross_dataset": cross}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
