"""The ``train`` stage: a zoo model trained on streamed shards (CPU, one GPU, or ``torchrun`` DDP), selected on val.

Writes ``OUT/last.pt`` (every ``checkpoint_every`` steps and at the end), ``OUT/best.pt`` (best
validation score of this run), ``OUT/train.json`` (summary) and ``OUT/dvclive/`` (metrics and plots for
DVC). The frequency views a model reads are computed on the device after augmentation, with the
``freq`` section's parameters, which the checkpoint records so evaluation computes them identically.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from facepipe import __version__
from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import InputError
from facepipe.freq.config import FreqConfig
from facepipe.stages import contract
from facepipe.train.engine import (
    NonFiniteLoss,
    _read_index,
    amp_dtype_for,
    load_checkpoint,
    predict,
    save_checkpoint,
    setup_distributed,
    train_step,
)

log = logging.getLogger(__name__)

STAGE = "train"
STAGE_VERSION = 2


class TrainConfig(Section):
    """Parameters of the ``train`` stage (section ``train``).

    ``model`` from the zoo (``facepipe models``), ``timm:<name>`` or ``package.module:factory``, with
    ``model_options``; ``imports``: Python files whose ``@register_model`` factories to load first (a user's own
    model, ``--import FILE``). ``pretrained``: ``false``, ``true`` (local caches only) or a weights file.
    ``loss_weights``: weight of each auxiliary loss the model returns (default: the model spec's, else 1).
    ``image_size``: ``null`` = the model's input size.
    ``steps`` optimizer steps in all; validation every ``eval_every`` steps selects the best checkpoint on
    ``select`` (``video_auc`` or ``frame_auc``) of the **val** split, never test; training stops after
    ``patience`` validations without improvement. ``amp``: ``auto`` = bf16 autocast on CUDA, fp32 on CPU;
    ``off``. ``num_workers`` is a run setting, not part of the stage fingerprint.
    """

    model: str = "resnet18"
    model_options: dict = {}
    imports: tuple[str, ...] = ()
    loss_weights: dict[str, float] = {}
    pretrained: Union[bool, str] = False
    image_size: Optional[int] = Field(None, ge=16)
    batch_size: int = Field(32, ge=1)
    steps: int = Field(1000, ge=1)
    eval_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step"] = "cosine"
    step_size: int = Field(1000, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    clip_norm: Optional[float] = Field(1.0, gt=0)
    amp: Literal["auto", "off"] = "auto"
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    augment: bool = True
    class_balance: bool = False
    dataset_weights: Optional[dict[str, float]] = None
    patience: int = Field(5, ge=1)
    select: Literal["video_auc", "frame_auc"] = "video_auc"


def fingerprint(cfg: TrainConfig, freq: FreqConfig) -> str:
    """Parameters (with the view parameters), stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.model_dump(exclude={"num_workers"}),
                                                       "_freq": freq.view_params()}, __name__)


@dataclass
class _State:
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    stale: int = 0


def build_model(cfg: TrainConfig, size: int | None = None) -> torch.nn.Module:
    """The model ``cfg.model`` with its options; the training size goes to the spec's ``size_options``."""
    from facepipe.models import create_model, get_spec, import_model_file

    for f in cfg.imports:
        import_model_file(f)
    spec = get_spec(cfg.model)
    size = size or cfg.image_size or spec.input_size
    extra = {k: size for k in spec.size_options if k not in cfg.model_options}
    return create_model(cfg.model, pretrained=cfg.pretrained, **extra, **cfg.model_options)


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """AdamW/Adam over the trainable parameters (the model's ``param_groups(lr)`` when it defines one) and a
    cosine or step schedule."""
    if hasattr(model, "param_groups"):
        params = model.param_groups(cfg.lr)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps) if cfg.schedule == "cosine"
                 else torch.optim.lr_scheduler.StepLR(optimizer, cfg.step_size, cfg.gamma))
    return optimizer, scheduler


def build_loaders(shards, index: dict, cfg: TrainConfig, freq: FreqConfig, size: int, device, step: int, spec):
    """The resampled, augmented train stream and the in-order val loader (views computed on the device)."""
    from facepipe.data.loader import make_loader

    kw = dict(image_size=size, views=spec.views, view_source="compute", freq=freq, mean=spec.mean, std=spec.std,
              device=device)
    train = make_loader(shards, "train", cfg.batch_size, cfg.num_workers, resampled=True,
                        epoch_samples=index["splits"]["train"]["samples"], seed=cfg.seed + step, augment=cfg.augment,
                        class_balance=cfg.class_balance, dataset_weights=cfg.dataset_weights, **kw)
    val = make_loader(shards, "val", cfg.batch_size, cfg.num_workers, shuffle=False, rank=0, world_size=1, **kw)
    return train, val


def validate(model, loader, amp) -> tuple[dict, dict]:
    """Frame- and video-level metrics of ``model`` on ``loader``."""
    from facepipe.metrics import binary_metrics, video_scores

    preds = predict(model, loader, amp_dtype=amp)
    vid = video_scores(preds)
    return binary_metrics(preds["label"], preds["score"]), binary_metrics(vid["label"], vid["score"])


def run(shards: str | Path, out_dir: str | Path, cfg: TrainConfig, freq: FreqConfig | None = None,
        resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.model`` on the train split of ``shards``; select on the val split.

    Args:
        shards: shard folder (``index.json``) with train and val splits.
        out_dir: output folder (locked while training).
        cfg: training parameters.
        freq: view parameters (params.yaml's ``freq``); recorded in the checkpoints.
        resume: continue from ``OUT/last.pt``; otherwise an earlier run's ``best.pt`` is removed first.
        progress: tqdm bar over steps.

    Returns:
        The summary dict (best score, its step, steps run, stop reason).

    Raises:
        InputError: no shards / an empty train or val split, a view the model needs is unavailable,
            a checkpoint from another schema or model on ``resume``.
        NonFiniteLoss: NaN/inf loss (the last good ``last.pt`` is kept).
        StageBusy: another run holds ``out_dir``.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from facepipe.models import get_spec, import_model_file

    freq = freq or FreqConfig()
    dist, device = setup_distributed()
    out = Path(out_dir)
    index = _read_index(shards)
    for split in ("train", "val"):
        if not index["splits"].get(split, {}).get("samples"):
            raise InputError(f"{shards}: split '{split}' has no samples; training needs train and val")
    for f in cfg.imports:
        import_model_file(f)
    size = cfg.image_size or get_spec(cfg.model).input_size
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg, size).to(device)
    spec = model.spec
    core = model
    if dist.world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp = amp_dtype_for(device, cfg.amp)
    optimizer, scheduler = build_optimizer(cfg, core)
    st = _State()
    datasets = sorted({d for s in index["splits"]["train"]["shards"] for d in s["datasets"]})
    lock = contract.stage_lock(out, STAGE) if dist.main else None
    if lock is not None:
        lock.__enter__()
    try:
        if resume:
            ckpt = load_checkpoint(out / "last.pt", cfg.model)
            core.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            st = _State(ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt["stale"])
            log.info("resumed from %s at step %d (best %.4f at %d)", out / "last.pt", st.step, st.best, st.best_step)
        elif dist.main:
            for stale in ("best.pt", "last.pt"):  # never let an earlier run's checkpoint pass for this one's
                (out / stale).unlink(missing_ok=True)
        train_loader, val_loader = build_loaders(shards, index, cfg, freq, size, device, st.step, spec)

        def state() -> dict:
            return {"model": core.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "step": st.step, "best": st.best, "best_step": st.best_step,
                    "stale": st.stale, "params": cfg.model_dump(), "freq": freq.model_dump(),
                    "model_name": cfg.model, "image_size": size, "datasets": datasets,
                    "imports": [str(Path(f).resolve()) for f in cfg.imports],
                    "schema_version": SCHEMA_VERSION, "facepipe_version": __version__,
                    "fingerprint": fingerprint(cfg, freq)}

        summary = _loop(model, core, cfg, st, train_loader, val_loader, optimizer, scheduler, amp, dist, out, state,
                        progress, resume)
        summary["datasets"] = datasets
        if dist.main:
            save_checkpoint(out / "last.pt", state())
            if not (out / "best.pt").exists():  # validation never gave a finite score: the last is the best
                log.warning("validation never gave a finite %s; best.pt is the last checkpoint", cfg.select)
                save_checkpoint(out / "best.pt", state())
            with atomic_path(out / "train.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=1))
    finally:
        if lock is not None:
            lock.__exit__(None, None, None)
    if dist.world > 1:
        torch.distributed.barrier()
    return summary


def _loop(model, core, cfg: TrainConfig, st: _State, train_loader, val_loader, optimizer, scheduler, amp, dist,
          out: Path, state, progress: bool, resume: bool) -> dict:
    """Steps, validation, checkpoints and dvclive logging; returns the summary."""
    live = None
    if dist.main:
        from dvclive import Live

        live = Live(str(out / "dvclive"), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    bar = tqdm(total=cfg.steps, initial=st.step, desc=f"train {cfg.model}", unit="step",
               disable=not progress or not dist.main)
    it = iter(train_loader)
    reason = "steps"
    wait_s = compute_s = 0.0
    while st.step < cfg.steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(train_loader)
            batch = next(it)
        t1 = time.perf_counter()
        try:
            result = train_step(model, batch, optimizer, amp_dtype=amp, clip_norm=cfg.clip_norm,
                                loss_weights=cfg.loss_weights)
            loss = result.loss
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at step {st.step + 1}: training stopped; the last good checkpoint is "
                                f"{out / 'last.pt'}" + ("" if (out / "last.pt").exists() else " (none yet)")) from None
        scheduler.step()
        st.step += 1
        wait_s += t1 - t0
        compute_s += time.perf_counter() - t1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if live is not None:
            live.step = st.step
            live.log_metric("train/loss", loss)
            for name, value in result.losses.items():
                live.log_metric(f"train/loss_{name}", value)
            live.log_metric("train/lr", scheduler.get_last_lr()[0])
        if st.step % cfg.eval_every == 0 or st.step == cfg.steps:
            frame, video = validate(model, val_loader, amp)
            score = (video if cfg.select == "video_auc" else frame)["auc"]
            if live is not None:
                for k in ("auc", "eer", "ap", "acc", "real_acc", "fake_acc"):
                    live.log_metric(f"val/frame_{k}", frame[k])
                    live.log_metric(f"val/video_{k}", video[k])
            if not math.isnan(score) and score > st.best:
                st.best, st.best_step, st.stale = score, st.step, 0
                if dist.main:
                    save_checkpoint(out / "best.pt", state())
            else:
                st.stale += 1
            log.info("step %d: val %s %.4f (best %.4f at %d)", st.step, cfg.select, score, st.best, st.best_step)
            if st.stale >= cfg.patience:
                reason = f"early stop: {st.stale} validations without improvement"
                break
        if dist.main and st.step % cfg.checkpoint_every == 0:
            save_checkpoint(out / "last.pt", state())
        if live is not None:
            live.next_step()
    bar.close()
    if live is not None:
        live.end()
    return {"model": cfg.model, "steps": st.step, "best": st.best if st.best > -math.inf else None,
            "best_step": st.best_step, "select": cfg.select, "stop": reason,
            "data_wait_fraction": wait_s / max(wait_s + compute_s, 1e-9)}
