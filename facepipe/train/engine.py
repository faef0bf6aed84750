"""Training and prediction: one tested ``train_step``, ``predict``, and the ``train`` stage loop.

Follows torchvision's reference scripts: small named functions, checkpoints as plain dicts
``{model, optimizer, scheduler, step, best, params, detector, schema_version, ...}``, ``resume`` reads
them. Multi-GPU with ``torchrun`` (DDP; each rank streams its own share of the shards); unchanged on
the CPU (gloo) for tests. Metrics and plots go to DVC through dvclive.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facepipe import __version__
from facepipe._io import atomic_path
from facepipe.config import TrainConfig
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import FacepipeError, InputError

log = logging.getLogger(__name__)


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; the weights were not updated."""


def amp_dtype_for(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 autocast on CUDA when ``amp == "auto"``; ``None`` (fp32) on the CPU or when off."""
    return torch.bfloat16 if amp == "auto" and device.type == "cuda" else None


def model_inputs(model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    """The batch entries the detector consumes (``spec.inputs``).

    Raises:
        InputError: a needed view is missing from the batch (names it).
    """
    spec = getattr(model, "spec", None) or model.module.spec
    missing = [k for k in spec.inputs if k not in batch]
    if missing:
        raise InputError(f"detector '{spec.name}' needs {missing} but the batch has {sorted(batch)}")
    return {k: batch[k] for k in spec.inputs}


def train_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, *,
               amp_dtype: torch.dtype | None = None, clip_norm: float | None = 1.0) -> float:
    """One optimisation step: forward (autocast when ``amp_dtype``), BCE-with-logits loss, backward,
    gradient clipping, optimizer step.

    Args:
        model: a zoo detector (or DDP-wrapped one) returning (B,) logits.
        batch: from :func:`facepipe.data.make_loader`; ``label`` (B,) int64 0 real / 1 fake.
        optimizer: its optimizer.
        amp_dtype: ``torch.bfloat16`` for mixed precision, ``None`` for fp32.
        clip_norm: max global gradient norm, ``None`` to skip.

    Returns:
        The loss (float).

    Raises:
        NonFiniteLoss: the loss is NaN/inf; nothing was updated.
    """
    model.train()
    device_type = batch["label"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits = model(model_inputs(model, batch))
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch["label"].float())
    if not torch.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss.item()}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip_norm)
    optimizer.step()
    return float(loss.item())


@torch.no_grad()
def predict(model: torch.nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta_hflip: bool = False,
            progress: bool = False, desc: str = "predict") -> pl.DataFrame:
    """Fake probabilities for every sample of ``loader``.

    With ``tta_hflip`` the probability is the mean over the batch and its horizontal flip (images and
    views flipped alike).

    Returns:
        One row per sample: key, dataset, video_id, method, split, frame_index, track_id, label, score.
    """
    model.eval()
    rows: dict[str, list] = {k: [] for k in ("key", "dataset", "video_id", "method", "split", "frame_index",
                                             "track_id", "label", "score")}
    for b in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        x = model_inputs(model, b)
        device_type = b["label"].device.type
        with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            p = torch.sigmoid(model(x).float())
            if tta_hflip:
                p = (p + torch.sigmoid(model({k: v.flip(-1) for k, v in x.items()}).float())) / 2
        for k in ("key", "dataset", "video_id", "method", "split", "frame_index", "track_id"):
            rows[k].extend(b[k])
        rows["label"].extend(b["label"].tolist())
        rows["score"].extend(p.cpu().tolist())
    return pl.DataFrame(rows, schema={"key": pl.String, "dataset": pl.String, "video_id": pl.String,
                                      "method": pl.String, "split": pl.String, "frame_index": pl.Int64,
                                      "track_id": pl.Int64, "label": pl.Int64, "score": pl.Float64})


@dataclass
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 otherwise)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> tuple[Dist, torch.device]:
    """Join the ``torchrun`` process group when WORLD_SIZE > 1 (NCCL on GPUs, gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def _read_index(shards: str | Path) -> dict:
    p = Path(shards) / "index.json" if Path(shards).is_dir() else Path(shards)
    if not p.is_file():
        raise InputError(f"{p}: shard index not found (run 'facepipe shard' first)")
    index = json.loads(p.read_text())
    if index.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{p}: shards have schema version {index.get('schema_version')}, this facepipe reads "
                         f"{SCHEMA_VERSION}")
    return index


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temp name, then rename (a killed run never leaves a half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, detector: str | None = None) -> dict:
    """Read a facepipe checkpoint and check it fits.

    Raises:
        InputError: missing/unreadable file, another schema version, or a different detector.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several error types for corrupt files
        raise InputError(f"{p}: not a readable checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "detector" not in ckpt:
        raise InputError(f"{p}: not a facepipe checkpoint (no model/detector entries)")
    if ckpt.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{p}: written for shard schema {ckpt.get('schema_version')}, this facepipe reads "
                         f"{SCHEMA_VERSION}")
    if detector is not None and ckpt["detector"] != detector:
        raise InputError(f"{p}: checkpoint of detector '{ckpt['detector']}', asked to resume '{detector}'")
    return ckpt


def run_train(shards: str | Path, out_dir: str | Path, cfg: TrainConfig, resume: bool = False,
              progress: bool = True) -> dict:
    """Train ``cfg.detector`` on the train split of ``shards``; select on the val split.

    Writes ``OUT/last.pt`` (every ``checkpoint_every`` steps and at the end), ``OUT/best.pt`` (best
    validation score), ``OUT/train.json`` (summary) and ``OUT/dvclive/`` (metrics and plots for DVC).

    Returns:
        The summary dict (best score, its step, steps run, stop reason).

    Raises:
        InputError: no shards / an empty train or val split, a view the detector needs is unavailable,
            a checkpoint from another schema or detector on ``resume``.
        NonFiniteLoss: NaN/inf loss (the last good ``last.pt`` is kept).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from facepipe.data.loader import make_loader
    from facepipe.models import create_detector, get_spec

    dist, device = setup_distributed()
    out = Path(out_dir)
    index = _read_index(shards)
    for split in ("train", "val"):
        if not index["splits"].get(split, {}).get("samples"):
            raise InputError(f"{shards}: split '{split}' has no samples; training needs train and val")
    spec = get_spec(cfg.detector)
    size = cfg.image_size or spec.input_size
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = create_detector(cfg.detector, pretrained=cfg.pretrained,
                            **({"input_size": size} if cfg.detector == "f3net" else {}), **cfg.detector_options)
    model.to(device)
    core = model
    if dist.world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = amp_dtype_for(device, cfg.amp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps) if cfg.schedule == "cosine"
                 else torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma))
    step, best, best_step, stale = 0, -math.inf, 0, 0
    out.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = load_checkpoint(out / "last.pt", cfg.detector)
        core.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, best, best_step, stale = ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt["stale"]
        log.info("resumed from %s at step %d (best %.4f at %d)", out / "last.pt", step, best, best_step)
    loader_kw = dict(image_size=size, views=spec.views, mean=spec.mean, std=spec.std, device=device)
    train_loader = make_loader(shards, "train", cfg.batch_size, cfg.num_workers, resampled=True,
                               epoch_samples=index["splits"]["train"]["samples"], seed=cfg.seed + step,
                               augment=cfg.augment, class_balance=cfg.class_balance,
                               dataset_weights=cfg.dataset_weights, **loader_kw)
    val_loader = make_loader(shards, "val", cfg.batch_size, cfg.num_workers, shuffle=False, rank=0, world_size=1,
                             **loader_kw)
    datasets = sorted({d for s in index["splits"]["train"]["shards"] for d in s["datasets"]})

    def state() -> dict:
        return {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "step": step, "best": best, "best_step": best_step, "stale": stale, "params": cfg.model_dump(),
                "detector": cfg.detector, "image_size": size, "datasets": datasets,
                "schema_version": SCHEMA_VERSION, "facepipe_version": __version__}

    live = None
    if dist.main:
        from dvclive import Live

        live = Live(str(out / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.detector}", unit="step",
               disable=not progress or not dist.main)
    it = iter(train_loader)
    reason = "steps"
    wait_s = compute_s = 0.0
    while step < cfg.steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train_loader)
            batch = next(it)
        t1 = time.perf_counter()
        try:
            loss = train_step(model, batch, optimizer, amp_dtype=amp, clip_norm=cfg.clip_norm)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at step {step + 1}: training stopped; the last good checkpoint is "
                                f"{out / 'last.pt'}" + ("" if (out / "last.pt").exists() else " (none yet)")) from None
        scheduler.step()
        step += 1
        wait_s += t1 - t0
        compute_s += time.perf_counter() - t1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if live is not None:
            live.step = step
            live.log_metric("train/loss", loss)
            live.log_metric("train/lr", scheduler.get_last_lr()[0])
        if step % cfg.eval_every == 0 or step == cfg.steps:
            from facepipe.train.metrics import binary_metrics, video_scores

            preds = predict(model, val_loader, amp_dtype=amp)
            frame = binary_metrics(preds["label"], preds["score"])
            vid = video_scores(preds)
            video = binary_metrics(vid["label"], vid["score"])
            score = (video if cfg.select == "video_auc" else frame)["auc"]
            if live is not None:
                for k in ("auc", "eer", "ap", "acc"):
                    live.log_metric(f"val/frame_{k}", frame[k])
                    live.log_metric(f"val/video_{k}", video[k])
            improved = not math.isnan(score) and score > best
            if improved:
                best, best_step, stale = score, step, 0
                if dist.main:
                    save_checkpoint(out / "best.pt", state())
            else:
                stale += 1
            log.info("step %d: val %s %.4f (best %.4f at %d)", step, cfg.select, score, best, best_step)
            if stale >= cfg.patience:
                reason = f"early stop: {stale} validations without improvement"
                break
        if dist.main and step % cfg.checkpoint_every == 0:
            save_checkpoint(out / "last.pt", state())
        if live is not None:
            live.next_step()
    bar.close()
    summary = {"detector": cfg.detector, "steps": step, "best": best if best > -math.inf else None,
               "best_step": best_step, "select": cfg.select, "stop": reason,
               "data_wait_fraction": wait_s / max(wait_s + compute_s, 1e-9), "datasets": datasets}
    if dist.main:
        save_checkpoint(out / "last.pt", state())
        if not (out / "best.pt").exists():  # validation never gave a finite score: keep the last as best
            save_checkpoint(out / "best.pt", state())
        with atomic_path(out / "train.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=1))
        if live is not None:
            live.end()
    if dist.world > 1:
        torch.distributed.barrier()
    return summary
