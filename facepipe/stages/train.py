"""The ``train`` stage: a zoo model trained on streamed shards (CPU, one GPU, or ``torchrun`` DDP), selected on val.

Writes ``OUT/last.pt`` (every ``checkpoint_every`` steps and at the end), ``OUT/best.pt`` (best validation score of
this run; ``best_ema.pt`` for the EMA weights), ``OUT/train.json`` (summary), ``OUT/collapse.json`` (when a collapse
is detected) and ``OUT/dvclive/`` (metrics and plots for DVC). The frequency views a model reads are computed on
the device after augmentation, with the ``freq`` section's parameters, which the checkpoint records so evaluation
computes them identically.

Diagnostics logged through dvclive (``dvc plots show``): per step the loss and each loss term, the learning rate,
the pre-clip gradient norm overall and per named branch, per-class logit mean and std, real and fake accuracy, the
fp16 loss scale; per validation the frame/video metrics, real and fake accuracy, score mean and std per class and
the AUC per dataset (the same for the EMA weights). A collapse watch and a dead-branch watch warn (or stop).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import AliasChoices, Field
from tqdm.auto import tqdm

from facepipe import __version__
from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.data.index import read_index
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import InputError
from facepipe.freq.config import FreqConfig
from facepipe.stages import contract
from facepipe.train.engine import (
    NonFiniteLoss,
    amp_dtype_for,
    load_checkpoint,
    predict,
    save_checkpoint,
    setup_distributed,
    train_step,
)

log = logging.getLogger(__name__)

STAGE = "train"
STAGE_VERSION = 3
BACKBONE_ATTRS = ("backbone", "encoder", "vit", "clip", "rgb", "fad_net")
"""Attributes a zoo model keeps its (pretrained) trunk under, in the order they are looked for."""


class CollapseConfig(Section):
    """When validation shows a collapsed model: score std below ``min_std``, or every prediction on one side of 0.5,
    for ``patience`` validations in a row; ``action``: ``warn`` or ``stop``. Either way ``collapse.json`` holds the
    evidence."""

    min_std: float = Field(1e-3, ge=0)
    patience: int = Field(2, ge=1)
    action: Literal["warn", "stop"] = "warn"


class TrainConfig(Section):
    """Parameters of the ``train`` stage (section ``train``).

    ``detector``: the forgery detector — a zoo model (``facepipe models``), ``timm:<name>`` or
    ``package.module:factory`` — with ``detector_options`` (``model`` / ``model_options`` are accepted too);
    ``imports``: Python files whose ``@register_model`` factories to load first (a user's own model,
    ``--import FILE``). ``pretrained``: ``false``, ``true`` (local caches only) or a weights file.
    ``loss_weights``: weight of each auxiliary loss the model returns (default: the model spec's, else 1).
    ``image_size``: ``null`` = the model's input size, or 256 on shards made with ``preset: deepfakebench``
    (DeepfakeBench's training resolution; its xception/recce/f3net configs say 256 where the zoo says 299).

    ``steps`` optimizer steps in all, each of ``accumulate`` micro-batches of ``batch_size``; validation every
    ``eval_every`` steps selects the best checkpoint on ``select`` (``video_auc`` or ``frame_auc``) of the **val**
    split, never test; training stops after ``patience`` validations without improvement, but not before
    ``min_steps`` (late emergence under mixed precision). ``amp``: ``auto`` (bf16 on CUDA, fp32 on CPU) | ``bf16`` |
    ``fp16`` (with a GradScaler, checkpointed) | ``off``. ``warmup_steps``: linear warmup from
    ``warmup_start * lr``, then the schedule. ``ema``: keep an EMA of the weights (timm's ``ModelEmaV3``,
    ``ema_decay``), validated too, saved as ``best_ema.pt``. ``backbone_lr_mult``: learning-rate factor of the
    model's trunk; ``freeze_backbone_steps``: the trunk is frozen for that many steps, then trained.
    ``deterministic``: deterministic algorithms and seeds (two CPU runs give identical losses). ``collapse``: the
    collapse watch; ``dead_branch_steps``: warn when a named branch gets no gradient for that many steps in a row.
    ``num_workers`` and ``log_every`` are run settings, not part of the stage fingerprint.
    """

    detector: str = Field("resnet18", validation_alias=AliasChoices("detector", "model"))
    detector_options: dict = Field({}, validation_alias=AliasChoices("detector_options", "model_options"))
    imports: tuple[str, ...] = ()
    loss_weights: dict[str, float] = {}
    pretrained: Union[bool, str] = False
    image_size: Optional[int] = Field(None, ge=16)
    batch_size: int = Field(32, ge=1)
    accumulate: int = Field(1, ge=1)
    steps: int = Field(1000, ge=1)
    min_steps: int = Field(0, ge=0)
    eval_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(1e-4, gt=0)
    backbone_lr_mult: float = Field(1.0, ge=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    warmup_start: float = Field(0.01, gt=0, le=1)
    step_size: int = Field(1000, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    clip_norm: Optional[float] = Field(1.0, gt=0)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    freeze_backbone_steps: int = Field(0, ge=0)
    deterministic: bool = False
    seed: int = 0
    num_workers: int = Field(2, ge=0)
    log_every: int = Field(1, ge=1)
    augment: bool = True
    class_balance: bool = False
    dataset_weights: Optional[dict[str, float]] = None
    patience: int = Field(5, ge=1)
    select: Literal["video_auc", "frame_auc"] = "video_auc"
    collapse: CollapseConfig = CollapseConfig()
    dead_branch_steps: int = Field(50, ge=1)


def fingerprint(cfg: TrainConfig, freq: FreqConfig) -> str:
    """Parameters (with the view parameters), stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.model_dump(exclude={"num_workers", "log_every"}),
                                                       "_freq": freq.view_params()}, __name__)


@dataclass
class _State:
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    best_ema: float = -math.inf
    stale: int = 0


def build_model(cfg: TrainConfig, size: int | None = None) -> torch.nn.Module:
    """The model ``cfg.detector`` with its options; the training size goes to the spec's ``size_options``."""
    from facepipe.models import create_model, get_spec, import_model_file

    for f in cfg.imports:
        import_model_file(f)
    spec = get_spec(cfg.detector)
    size = size or cfg.image_size or spec.input_size
    extra = {k: size for k in spec.size_options if k not in cfg.detector_options}
    return create_model(cfg.detector, pretrained=cfg.pretrained, **extra, **cfg.detector_options)


def backbone_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's trunk: ``model.backbone()`` when it defines one, else its first attribute among
    :data:`BACKBONE_ATTRS`; ``None`` when it has none."""
    fn = getattr(model, "backbone", None)
    if callable(fn) and not isinstance(fn, torch.nn.Module):
        return fn()
    for name in BACKBONE_ATTRS:
        mod = getattr(model, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod
    return None


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """AdamW/Adam over the trainable parameters — the model's ``param_groups(lr)`` when it defines one, else the trunk
    at ``lr * backbone_lr_mult`` and the rest at ``lr`` — with linear warmup then a cosine, step or constant
    schedule (``torch.optim.lr_scheduler``)."""
    from torch.optim import lr_scheduler as S

    if hasattr(model, "param_groups"):
        groups = model.param_groups(cfg.lr)
    else:
        trunk = backbone_of(model)
        trunk_ids = {id(p) for p in trunk.parameters()} if trunk is not None else set()
        # parameters frozen for a while are trainable later: include what was trainable at creation
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in trunk_ids], "lr": cfg.lr, "name": "head"}]
        if trunk_ids:
            groups.append({"params": [p for p in trainable if id(p) in trunk_ids], "lr": cfg.lr * cfg.backbone_lr_mult,
                           "name": "backbone"})
        groups = [g for g in groups if g["params"]]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rest = max(1, cfg.steps - cfg.warmup_steps)
    main = {"cosine": lambda: S.CosineAnnealingLR(optimizer, T_max=rest),
            "step": lambda: S.StepLR(optimizer, cfg.step_size, cfg.gamma),
            "constant": lambda: S.ConstantLR(optimizer, factor=1.0, total_iters=0)}[cfg.schedule]()
    if cfg.warmup_steps:
        warm = S.LinearLR(optimizer, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=cfg.warmup_steps)
        return optimizer, S.SequentialLR(optimizer, [warm, main], milestones=[cfg.warmup_steps])
    return optimizer, main


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


def validate(model, loader, amp) -> tuple[dict, dict, dict]:
    """Frame- and video-level metrics of ``model`` on ``loader``, and the diagnostics of its scores (mean and std per
    class, share predicted fake, AUC per dataset)."""
    from facepipe.metrics import binary_metrics, metric_table, video_scores

    preds = predict(model, loader, amp_dtype=amp)
    vid = video_scores(preds)
    scores, labels = preds["score"].to_numpy(), preds["label"].to_numpy()
    diag = {"score_std": float(scores.std()), "predicted_fake": float((scores >= 0.5).mean())}
    for lab, name in ((0, "real"), (1, "fake")):
        s = scores[labels == lab]
        diag[f"score_mean_{name}"] = float(s.mean()) if len(s) else float("nan")
        diag[f"score_std_{name}"] = float(s.std()) if len(s) else float("nan")
    for ds, m in metric_table(preds)["per_dataset"].items():
        diag[f"auc_{ds}"] = m["frame"]["auc"]
    return binary_metrics(preds["label"], preds["score"]), binary_metrics(vid["label"], vid["score"]), diag


class CollapseWatch:
    """Counts validations in a row whose scores look collapsed (std below ``min_std`` or all on one side of 0.5)."""

    def __init__(self, cfg: CollapseConfig) -> None:
        self.cfg = cfg
        self.evidence: list[dict] = []

    def update(self, step: int, diag: dict) -> bool:
        """Record one validation; ``True`` once ``patience`` collapsed validations came in a row."""
        constant = diag["predicted_fake"] in (0.0, 1.0)
        collapsed = diag["score_std"] < self.cfg.min_std or constant
        if not collapsed:
            self.evidence = []
            return False
        self.evidence.append({"step": step, **diag, "constant_predictions": constant})
        return len(self.evidence) >= self.cfg.patience


class DeadBranchWatch:
    """Warns once per branch that got no gradient for ``steps`` steps in a row (e.g. a forgotten frequency branch)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.quiet: dict[str, int] = {}
        self.warned: set[str] = set()

    def update(self, norms: dict[str, float]) -> list[str]:
        newly = []
        for name, norm in norms.items():
            self.quiet[name] = self.quiet.get(name, 0) + 1 if norm == 0.0 else 0
            if self.quiet[name] >= self.steps and name not in self.warned:
                self.warned.add(name)
                newly.append(name)
        return newly


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; with ``deterministic`` also force deterministic algorithms (cuBLAS workspace
    set, cuDNN benchmark off) so two runs give identical losses."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def run(shards: str | Path, out_dir: str | Path, cfg: TrainConfig, freq: FreqConfig | None = None,
        resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.detector`` on the train split of ``shards``; select on the val split.

    Args:
        shards: shard folder (``index.json``) with train and val splits.
        out_dir: output folder (locked while training).
        cfg: training parameters.
        freq: view parameters (params.yaml's ``freq``); recorded in the checkpoints.
        resume: continue from ``OUT/last.pt``; otherwise an earlier run's checkpoints are removed first.
        progress: tqdm bar over steps.

    Returns:
        The summary dict (best score, its step, steps run, stop reason).

    Raises:
        InputError: no shards / an empty train or val split, a view the model needs is unavailable,
            a checkpoint from another schema or model on ``resume``.
        NonFiniteLoss: NaN/inf loss (the last good ``last.pt`` is kept).
        StageBusy: another run holds ``out_dir``.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        return _run(shards, out_dir, cfg, freq or FreqConfig(), resume, progress)
    finally:  # deterministic mode is process-wide: leave the caller's setting as it was
        torch.use_deterministic_algorithms(before[0])
        torch.backends.cudnn.benchmark = before[1]


def _run(shards, out_dir, cfg: TrainConfig, freq: FreqConfig, resume: bool, progress: bool) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from facepipe.data.footprint import footprint as training_footprint
    from facepipe.data.footprint import read_video_table
    from facepipe.models import get_spec, import_model_file

    dist, device = setup_distributed()
    out = Path(out_dir)
    index = read_index(shards)
    for split in ("train", "val"):
        if not index["splits"].get(split, {}).get("samples"):
            raise InputError(f"{shards}: split '{split}' has no samples; training needs train and val")
    for f in cfg.imports:
        import_model_file(f)
    size = cfg.image_size or get_spec(cfg.detector).input_size
    if cfg.image_size is None and str(index.get("preset") or "").startswith("deepfakebench") and size != 256:
        log.info("shards made with preset %s: training at DeepfakeBench's resolution 256 (not %s's %d; set "
                 "train.image_size to override)", index["preset"], cfg.detector, size)
        size = 256
    set_determinism(cfg.seed, cfg.deterministic)
    model = build_model(cfg, size).to(device)
    spec = model.spec
    core = model
    optimizer, scheduler = build_optimizer(cfg, core)
    trunk = backbone_of(core)
    thawed = [p for p in trunk.parameters() if p.requires_grad] if trunk is not None else []
    if cfg.freeze_backbone_steps and thawed:
        for p in thawed:
            p.requires_grad_(False)
    if dist.world > 1:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=bool(cfg.freeze_backbone_steps))
    amp = amp_dtype_for(device, cfg.amp)
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(core, decay=cfg.ema_decay)
    st = _State()
    datasets = sorted({d for s in index["splits"]["train"]["shards"] for d in s["datasets"]})
    seen = read_video_table(shards)
    if seen is None:
        log.warning("%s: shard set without videos.parquet (written by an older facepipe): the checkpoint cannot "
                    "record its training videos, so evaluate cannot check test sets against them; rerun "
                    "'facepipe shard'", shards)
    footprint = None if seen is None else training_footprint(seen)
    lock = contract.stage_lock(out, STAGE) if dist.main else None
    if lock is not None:
        lock.__enter__()
    try:
        if resume:
            ckpt = load_checkpoint(out / "last.pt", cfg.detector)
            core.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            if ema is not None and ckpt.get("ema"):
                ema.module.load_state_dict(ckpt["ema"])
            st = _State(ckpt["step"], ckpt["best"], ckpt["best_step"], ckpt.get("best_ema", -math.inf), ckpt["stale"])
            log.info("resumed from %s at step %d (best %.4f at %d)", out / "last.pt", st.step, st.best, st.best_step)
        elif dist.main:
            for stale in ("best.pt", "last.pt", "best_ema.pt", "collapse.json"):  # never an earlier run's file
                (out / stale).unlink(missing_ok=True)
        if cfg.freeze_backbone_steps and st.step >= cfg.freeze_backbone_steps:
            for p in thawed:
                p.requires_grad_(True)
        train_loader, val_loader = build_loaders(shards, index, cfg, freq, size, device, st.step, spec)

        def state(weights=None) -> dict:
            return {"model": (weights or core).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "ema": ema.module.state_dict() if ema is not None else None,
                    "step": st.step, "best": st.best, "best_step": st.best_step, "best_ema": st.best_ema,
                    "stale": st.stale, "params": cfg.model_dump(), "freq": freq.model_dump(),
                    "model_name": cfg.detector, "image_size": size, "datasets": datasets, "footprint": footprint,
                    "imports": [str(Path(f).resolve()) for f in cfg.imports],
                    "schema_version": SCHEMA_VERSION, "facepipe_version": __version__,
                    "fingerprint": fingerprint(cfg, freq)}

        summary = _loop(model, core, cfg, st, train_loader, val_loader, optimizer, scheduler, amp, scaler, ema, thawed,
                        dist, out, state, progress, resume)
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


def _open_live(path: Path, resume: bool):
    """A dvclive ``Live`` writing metrics and plots under ``path`` (no dvc.yaml of its own, no experiment saved:
    the pipeline's dvc.yaml declares them). Works in a git repository without commits, where dvclive 3.x's own
    repository probe raises."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        def _init_dvc(self):
            try:
                super()._init_dvc()
            except SCMError as e:  # e.g. "Empty git repo": nothing of DVC's is needed here
                log.debug("dvclive: no DVC integration (%s)", e)
                self._dvc_file = self._init_dvc_file()

    return _Live(str(path), resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)


def _log_step(live, result, lrs: dict[str, float], log_every: int, step: int) -> None:
    if live is None or step % log_every:
        return
    live.log_metric("train/loss", result.loss)
    for name, value in result.losses.items():
        live.log_metric(f"train/loss_{name}", value)
    for i, (name, lr) in enumerate(lrs.items()):  # the rates this step used; the first group's is train/lr
        live.log_metric("train/lr" if i == 0 else f"train/lr_{name}", lr)
    live.log_metric("train/grad_norm", result.grad_norm)
    for name, value in result.branch_norms.items():
        live.log_metric(f"train/grad_norm_{name}", value)
    if result.scale is not None:
        live.log_metric("train/amp_scale", result.scale)
    logits, labels = result.logits, result.labels
    for lab, name in ((0, "real"), (1, "fake")):
        sel = logits[labels == lab]
        if len(sel):
            live.log_metric(f"train/logit_mean_{name}", float(sel.mean()))
            live.log_metric(f"train/logit_std_{name}", float(sel.std()) if len(sel) > 1 else 0.0)
            live.log_metric(f"train/acc_{name}", float(((sel >= 0).long() == lab).float().mean()))


def _log_validation(live, prefix: str, frame: dict, video: dict, diag: dict) -> None:
    if live is None:
        return
    for k in ("auc", "eer", "eer_nearest", "ap", "acc", "real_acc", "fake_acc"):
        live.log_metric(f"{prefix}/frame_{k}", frame[k])
        live.log_metric(f"{prefix}/video_{k}", video[k])
    for k, v in diag.items():
        live.log_metric(f"{prefix}/{k}", v)


def _loop(model, core, cfg: TrainConfig, st: _State, train_loader, val_loader, optimizer, scheduler, amp, scaler, ema,
          thawed, dist, out: Path, state, progress: bool, resume: bool) -> dict:
    """Steps, validation, checkpoints, diagnostics and dvclive logging; returns the summary."""
    live = _open_live(out / "dvclive", resume) if dist.main else None
    bar = tqdm(total=cfg.steps, initial=st.step, desc=f"train {cfg.detector}", unit="step",
               disable=not progress or not dist.main)
    it = iter(train_loader)
    reason = "steps"
    wait_s = compute_s = 0.0
    collapse, dead = CollapseWatch(cfg.collapse), DeadBranchWatch(cfg.dead_branch_steps)
    measure_branches = hasattr(core, "branches")

    def next_batch():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(train_loader)
            return next(it)

    while st.step < cfg.steps:
        if cfg.freeze_backbone_steps and st.step == cfg.freeze_backbone_steps and thawed:
            for p in thawed:
                p.requires_grad_(True)
            log.info("step %d: backbone unfrozen", st.step)
        t0 = time.perf_counter()
        micro = [next_batch() for _ in range(cfg.accumulate)]
        t1 = time.perf_counter()
        try:
            result = train_step(model, micro if cfg.accumulate > 1 else micro[0], optimizer, amp_dtype=amp,
                                clip_norm=cfg.clip_norm, loss_weights=cfg.loss_weights, scaler=scaler,
                                branch_norms=measure_branches)
        except NonFiniteLoss as e:
            raise NonFiniteLoss(f"{e} at step {st.step + 1}: training stopped; the last good checkpoint is "
                                f"{out / 'last.pt'}" + ("" if (out / "last.pt").exists() else " (none yet)")) from None
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}
        scheduler.step()
        if ema is not None:
            ema.update(core, step=st.step)
        st.step += 1
        wait_s += t1 - t0
        compute_s += time.perf_counter() - t1
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)
        if live is not None:
            live.step = st.step
        _log_step(live, result, lrs, cfg.log_every, st.step)
        for name in dead.update({k: v for k, v in result.branch_norms.items()
                                 if not (cfg.freeze_backbone_steps and st.step <= cfg.freeze_backbone_steps)}):
            log.warning("branch '%s' of %s received no gradient for %d steps in a row: is it connected to the loss?",
                        name, cfg.detector, cfg.dead_branch_steps)
        if st.step % cfg.eval_every == 0 or st.step == cfg.steps:
            frame, video, diag = validate(model, val_loader, amp)
            _log_validation(live, "val", frame, video, diag)
            score = (video if cfg.select == "video_auc" else frame)["auc"]
            improved = not math.isnan(score) and score > st.best
            if improved:
                st.best, st.best_step = score, st.step
                if dist.main:
                    save_checkpoint(out / "best.pt", state())
            if ema is not None:
                ef, ev, ed = validate(ema.module, val_loader, amp)
                _log_validation(live, "val_ema", ef, ev, ed)
                escore = (ev if cfg.select == "video_auc" else ef)["auc"]
                if not math.isnan(escore) and escore > st.best_ema:
                    st.best_ema, improved = escore, True
                    if dist.main:
                        save_checkpoint(out / "best_ema.pt", state(ema.module))
            st.stale = 0 if improved else st.stale + 1
            log.info("step %d: val %s %.4f (best %.4f at %d)", st.step, cfg.select, score, st.best, st.best_step)
            if collapse.update(st.step, diag):
                evidence = {"detector": cfg.detector, "step": st.step, "min_std": cfg.collapse.min_std,
                            "patience": cfg.collapse.patience, "validations": collapse.evidence}
                if dist.main:
                    with atomic_path(out / "collapse.json") as tmp:
                        tmp.write_text(json.dumps(evidence, indent=1))
                if len(collapse.evidence) == cfg.collapse.patience:  # once per episode; the file keeps growing
                    log.warning("step %d: the model looks collapsed (val score std %.2g, predicted fake %.0f%%) for "
                                "%d validations in a row; see %s", st.step, diag["score_std"],
                                100 * diag["predicted_fake"], len(collapse.evidence), out / "collapse.json")
                if cfg.collapse.action == "stop":
                    reason = f"collapse: {len(collapse.evidence)} validations in a row"
                    break
            if st.stale >= cfg.patience and st.step >= cfg.min_steps:
                reason = f"early stop: {st.stale} validations without improvement"
                break
        if dist.main and st.step % cfg.checkpoint_every == 0:
            save_checkpoint(out / "last.pt", state())
        if live is not None:
            live.next_step()
    bar.close()
    if live is not None:
        live.end()
    return {"model": cfg.detector, "steps": st.step, "best": st.best if st.best > -math.inf else None,
            "best_step": st.best_step, "best_ema": st.best_ema if st.best_ema > -math.inf else None,
            "select": cfg.select, "stop": reason, "collapsed": bool(collapse.evidence and
                                                                    len(collapse.evidence) >= cfg.collapse.patience),
            "dead_branches": sorted(dead.warned), "data_wait_fraction": wait_s / max(wait_s + compute_s, 1e-9)}
