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

The loop follows torchvision's reference script (references/classification/train.py): a :class:`Trainer` holds a
run's state; :func:`train_one_interval` steps to the next validation or checkpoint (its ``train_one_epoch``),
:func:`validate_and_select` validates and keeps the best checkpoint (``evaluate``), :func:`save_on_main` writes
checkpoints on rank 0 (``save_on_master``), :func:`fit` strings them together and :func:`run` sets a run up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
from pydantic import AliasChoices, Field, model_validator
from tqdm.auto import tqdm

from facepipe import __version__, _faults
from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.data.index import read_index
from facepipe.data.sbi import SBIConfig
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import ConfigError, InputError, Interrupted
from facepipe.freq.config import FreqConfig
from facepipe.stages import contract
from facepipe.train.consistency import ConsistencyConfig
from facepipe.train.engine import (
    Dist,
    NonFiniteLoss,
    amp_dtype_for,
    check_sample_kind,
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


class SAMConfig(Section):
    """``train.sam``: sharpness-aware minimisation (Foret et al., "Sharpness-Aware Minimization for Efficiently
    Improving Generalization", ICLR 2021) around ``train.optimizer``, as SBI's reference training uses it (SAM over
    SGD, momentum 0.9): each step computes the gradient, moves the weights ``rho`` along it (``adaptive``: ASAM's
    per-parameter scaling, Kwon et al., ICML 2021), recomputes the gradient there and updates the original weights
    with it. pytorch-optimizer's ``SAM`` (``first_step`` / ``second_step``); two forward-backward passes per step;
    BatchNorm statistics update in both passes, as in the SBI reference. Not with ``amp: fp16`` (its GradScaler)."""

    rho: float = Field(0.05, gt=0)
    adaptive: bool = False


class TrainConfig(Section):
    """Parameters of the ``train`` stage (section ``train``).

    ``model``: the forgery detector — a zoo model (``facepipe models``), ``timm:<name>`` or
    ``package.module:factory`` — with ``model_options`` (the old names ``detector`` / ``detector_options`` are
    accepted for one release with a ``FutureWarning``: "detector" is the face detector of ``extract``);
    ``imports``: Python files whose ``@register_model`` factories to load first (a user's own model,
    ``--import FILE``). ``pretrained``: ``false``, ``true`` (local caches only) or a weights file.
    ``loss_weights``: weight of each auxiliary loss the model returns (default: the model spec's, else 1).
    ``image_size``: ``null`` = the model's input size, or 256 on shards made with ``preset: deepfakebench``
    (DeepfakeBench's training resolution; its xception/recce/f3net configs say 256 where the zoo says 299).

    ``steps`` optimizer steps in all, each of ``accumulate`` micro-batches of ``batch_size``; validation every
    ``eval_every`` steps selects the best checkpoint on ``select`` (``video_auc`` or ``frame_auc``) of the **val**
    split, never test; training stops after ``patience`` validations without improvement, but not before
    ``min_steps`` (late emergence under mixed precision). ``amp``: ``auto`` (bf16 on CUDA, fp32 on CPU) | ``bf16`` |
    ``fp16`` (with a GradScaler, checkpointed) | ``off``. ``optimizer`` (timm's ``create_optimizer_v2``: ``adamw``,
    ``adam``, or ``sgd``, SGD with momentum 0.9 without Nesterov) with ``weight_decay`` on weights only: biases, norm
    weights and other 1-d parameters get none; ``sam`` wraps it in sharpness-aware minimisation
    (:class:`SAMConfig`). ``schedule`` (timm's,
    per optimizer step, :func:`build_scheduler`): ``warmup_steps`` of linear warmup from ``warmup_start * lr``, then
    a cosine to 0, ``gamma`` every ``step_size`` steps, or constant. ``ema``: keep an EMA of the weights (timm's
    ``ModelEmaV3``, ``ema_decay``), validated too, saved as ``best_ema.pt``. ``backbone_lr_mult``: learning-rate
    factor of the model's trunk; ``freeze_backbone_steps``: the trunk is frozen for that many steps, then trained.
    ``sbi``: self-blended images made on the fly from the train split's real faces (Shiohara & Yamasaki, CVPR 2022;
    :class:`facepipe.data.sbi.SBIConfig`: pairs of a real and its self-blended fake, the set's own fakes left out
    with ``reals_only``); needs shards extracted with ``extract.landmarks68``; validation stays on the val split's
    own faces; ``class_balance`` does not apply (pairs are balanced).
    ``consistency``: a global-local multi-view consistency term (:class:`facepipe.train.consistency.ConsistencyConfig`,
    the researcher's notes' recipe: K local crops per face pulled towards the whole crop's pooled feature, InfoNCE or
    cosine), logged as ``train/loss_consistency``; timm-backbone models, one process.
    ``deterministic``: deterministic algorithms and seeds (two CPU runs give identical losses). ``collapse``: the
    collapse watch; ``dead_branch_steps``: warn when a named branch gets no gradient for that many steps in a row.
    ``num_workers`` and ``log_every`` are run settings, not part of the stage fingerprint.
    """

    model: str = Field("resnet18", validation_alias=AliasChoices("model", "detector"))
    model_options: dict = Field({}, validation_alias=AliasChoices("model_options", "detector_options"))
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
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    sam: Optional[SAMConfig] = None
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
    sbi: Optional[SBIConfig] = None
    consistency: Optional[ConsistencyConfig] = None
    collapse: CollapseConfig = CollapseConfig()
    dead_branch_steps: int = Field(50, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data):
        """``detector`` / ``detector_options`` (before issue 22) still work, with a FutureWarning."""
        if isinstance(data, dict):
            old = [k for k in ("detector", "detector_options") if k in data]
            if old:
                warnings.warn(f"train.{', train.'.join(old)}: renamed to train.model / train.model_options "
                              "('detector' is the face detector of extract); the old names go in the next release",
                              FutureWarning, stacklevel=2)
        return data

    @model_validator(mode="after")
    def _sam_without_fp16(self):
        if self.sam is not None and self.amp == "fp16":
            raise ValueError("train.sam with amp: fp16: SAM's two passes do not go through the GradScaler; use amp "
                             "bf16, auto or off")
        return self


def fingerprint(cfg: TrainConfig, freq: FreqConfig) -> str:
    """Parameters (with the view parameters), stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.model_dump(exclude={"num_workers", "log_every"}),
                                                       "_freq": freq.view_params()}, __name__)


def build_model(cfg: TrainConfig, size: int | None = None) -> torch.nn.Module:
    """The model ``cfg.model`` with its options; the training size goes to the spec's ``size_options``."""
    from facepipe.models import create_model, get_spec, import_model_file

    for f in cfg.imports:
        import_model_file(f)
    spec = get_spec(cfg.model)
    size = size or cfg.image_size or spec.input_size
    extra = {k: size for k in spec.size_options if k not in cfg.model_options}
    return create_model(cfg.model, pretrained=cfg.pretrained, **extra, **cfg.model_options)


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


def _no_decay_ids(*modules: torch.nn.Module | None) -> set[int]:
    """The parameters timm exempts from weight decay in any of ``modules``: :func:`timm.optim.param_groups_weight_decay`'s
    rule — biases, norm weights and every other 1-d parameter, and the names the module's ``no_weight_decay()`` lists
    (e.g. a ViT trunk's ``pos_embed`` and ``cls_token``), the same rule ``create_optimizer_v2(filter_bias_and_bn=True)``
    applies to a whole model."""
    try:
        from timm.optim import param_groups_weight_decay
    except ImportError:  # timm < 1.0.10 (the floor, 1.0.9) keeps it in optim_factory only
        from timm.optim.optim_factory import param_groups_weight_decay

    ids: set[int] = set()
    for mod in modules:
        if mod is None:
            continue
        listed = mod.no_weight_decay() if callable(getattr(mod, "no_weight_decay", None)) else ()
        for group in param_groups_weight_decay(mod, weight_decay=1.0, no_weight_decay_list=listed):
            if group["weight_decay"] == 0.0:
                ids.update(id(p) for p in group["params"])
    return ids


def param_groups(cfg: TrainConfig, model: torch.nn.Module) -> list[dict]:
    """The optimizer's parameter groups: the model's own ``param_groups(lr)`` when it defines one, else the trunk
    (:func:`backbone_of`, group ``backbone``) at ``lr * backbone_lr_mult`` and the rest (``head``) at ``lr`` — the
    parameters trainable at creation (a trunk frozen for ``freeze_backbone_steps`` is trained later).

    Each group is split in two of the same name: the parameters that get ``weight_decay`` and those that get none
    (biases, norm weights and other 1-d parameters, and what ``no_weight_decay()`` lists: :func:`_no_decay_ids`).
    A group's rate is ``lr`` times its ``lr_scale``, which timm's schedulers apply at every update, so a warmup starts
    each group at ``warmup_start`` times its own rate."""
    if hasattr(model, "param_groups"):
        base = [dict(g) for g in model.param_groups(cfg.lr)]
    else:
        trunk = backbone_of(model)
        trunk_ids = {id(p) for p in trunk.parameters()} if trunk is not None else set()
        trainable = [p for p in model.parameters() if p.requires_grad]
        base = [{"params": [p for p in trainable if id(p) not in trunk_ids], "lr": cfg.lr, "name": "head"},
                {"params": [p for p in trainable if id(p) in trunk_ids], "lr": cfg.lr * cfg.backbone_lr_mult,
                 "name": "backbone"}]
    exempt = _no_decay_ids(model, backbone_of(model))
    groups = []
    for g in base:
        params = list(g.pop("params"))
        scale = g.pop("lr_scale", 1.0) * g.pop("lr", cfg.lr) / cfg.lr
        decay = g.pop("weight_decay", cfg.weight_decay)
        common = {**g, "lr": cfg.lr, "lr_scale": scale}
        for wd, part in ((decay, [p for p in params if id(p) not in exempt]),
                         (0.0, [p for p in params if id(p) in exempt])):
            if part:
                groups.append({**common, "params": part, "weight_decay": wd})
    return groups


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    """timm's learning-rate schedule, stepped per optimizer step (``scheduler.step_update(step)`` with the number of
    steps done) and placed at step 0.

    At step ``t`` (0-based; ``W`` = ``warmup_steps``, ``T`` = ``max(1, steps - W)``) each group's rate is its base
    rate times: ``warmup_start + (1 - warmup_start) * t / W`` while ``t < W``; then, with ``u = t - W``,
    ``(1 + cos(pi * u / T)) / 2`` (``cosine``: :class:`timm.scheduler.CosineLRScheduler`, ``lr_min`` 0),
    ``gamma ** (u // step_size)`` (``step``: :class:`~timm.scheduler.StepLRScheduler`) or 1 (``constant``: a step
    schedule with ``decay_rate`` 1). That is the curve torch's ``LinearLR`` + ``SequentialLR`` with
    ``CosineAnnealingLR`` / ``StepLR`` / ``ConstantLR`` gave before (tests/test_train.py compares them step by step).

    One difference: the schedule is a function of the step and this run's parameters, so a resume is placed with
    ``step_update(step)`` rather than restored from the checkpoint. A resume that raises ``steps`` follows the
    longer cosine (from the resumed step on), where the restored ``CosineAnnealingLR`` kept the old length and, past
    it, climbed back up the cosine; timm's cosine stays at ``lr_min`` past its end (never reached in one run)."""
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    warm = dict(warmup_t=cfg.warmup_steps, warmup_lr_init=cfg.warmup_start * cfg.lr, warmup_prefix=True,
                t_in_epochs=False)
    if cfg.schedule == "cosine":
        scheduler = CosineLRScheduler(optimizer, t_initial=max(1, cfg.steps - cfg.warmup_steps), lr_min=0.0, **warm)
    else:
        step = cfg.schedule == "step"
        scheduler = StepLRScheduler(optimizer, decay_t=cfg.step_size if step else 1,
                                    decay_rate=cfg.gamma if step else 1.0, **warm)
    scheduler.step_update(0)
    return scheduler


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module):
    """AdamW/Adam from timm's ``create_optimizer_v2`` over :func:`param_groups` (its ``param_group_fn``: the
    trunk/head split with no weight decay on biases and norms inside each group), and :func:`build_scheduler`.

    Returns:
        ``(optimizer, scheduler)``.
    """
    from timm.optim import create_optimizer_v2

    if cfg.sam is not None:
        from pytorch_optimizer import SAM

        base = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}[cfg.optimizer]
        extra = {"momentum": 0.9} if cfg.optimizer == "sgd" else {}
        optimizer = SAM(param_groups(cfg, model), base, rho=cfg.sam.rho, adaptive=cfg.sam.adaptive, lr=cfg.lr,
                        weight_decay=cfg.weight_decay, **extra)
        return optimizer, build_scheduler(cfg, optimizer)
    opt = "momentum" if cfg.optimizer == "sgd" else cfg.optimizer  # timm's "sgd" is Nesterov's
    optimizer = create_optimizer_v2(model, opt=opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    filter_bias_and_bn=True, param_group_fn=lambda m: param_groups(cfg, m),
                                    **({"momentum": 0.9} if opt == "momentum" else {}))
    return optimizer, build_scheduler(cfg, optimizer)


def build_loaders(shards, index: dict, cfg: TrainConfig, freq: FreqConfig, size: int, device, spec):
    """The resampled, augmented train stream and the in-order val loader (views computed on the device). A resumed
    run continues the train stream where the checkpoint left it (:func:`_restore_loader`)."""
    from facepipe.data.loader import make_loader

    kw = dict(image_size=size, views=spec.views, view_source="compute", freq=freq, mean=spec.mean, std=spec.std,
              device=device, clips=spec.sample_kind == "clip")
    train = make_loader(shards, "train", cfg.batch_size, cfg.num_workers, resampled=True,
                        epoch_samples=index["splits"]["train"]["samples"], seed=cfg.seed, augment=cfg.augment,
                        class_balance=cfg.class_balance and cfg.sbi is None, dataset_weights=cfg.dataset_weights,
                        sbi=cfg.sbi, **kw)
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
    """Train ``cfg.model`` on the train split of ``shards``; select on the val split.

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


def _train_size(cfg: TrainConfig, index: dict) -> int:
    """The training image size: ``image_size``, else the model's, else 256 on shards of a ``deepfakebench`` preset."""
    from facepipe.models import get_spec, import_model_file

    for f in cfg.imports:
        import_model_file(f)
    size = cfg.image_size or get_spec(cfg.model).input_size
    if cfg.image_size is None and str(index.get("preset") or "").startswith("deepfakebench") and size != 256:
        log.info("shards made with preset %s: training at DeepfakeBench's resolution 256 (not %s's %d; set "
                 "train.image_size to override)", index["preset"], cfg.model, size)
        size = 256
    return size


def _record(cfg: TrainConfig, freq: FreqConfig, shards, index: dict, size: int) -> dict:
    """What every checkpoint records about the run besides its state."""
    from facepipe.data.footprint import footprint as training_footprint
    from facepipe.data.footprint import read_video_table

    seen = read_video_table(shards)
    if seen is None:
        log.warning("%s: shard set without videos.parquet (written by an older facepipe): the checkpoint cannot "
                    "record its training videos, so evaluate cannot check test sets against them; rerun "
                    "'facepipe shard'", shards)
    datasets = sorted({d for s in index["splits"]["train"]["shards"] for d in s["datasets"]})
    extract = {d: (index.get("extract") or {}).get(d) for d in datasets}
    if any(v is None for v in extract.values()):
        log.warning("%s: the shard set does not record how the crops of %s were made (written by an older facepipe): "
                    "the checkpoint cannot record its extract settings, so 'facepipe predict' will need --params; "
                    "rerun 'facepipe extract' and 'facepipe shard'", shards,
                    ", ".join(d for d, v in extract.items() if v is None))
    return {"params": cfg.model_dump(), "freq": freq.model_dump(), "model_name": cfg.model, "image_size": size,
            "datasets": datasets, "extract": extract,
            "footprint": None if seen is None else training_footprint(seen),
            "imports": [str(Path(f).resolve()) for f in cfg.imports],
            "schema_version": SCHEMA_VERSION, "facepipe_version": __version__, "fingerprint": fingerprint(cfg, freq)}


def build_trainer(cfg: TrainConfig, out: Path, size: int, record: dict, dist: Dist,
                  device: torch.device) -> Trainer:
    """The model (its trunk frozen when ``freeze_backbone_steps``; DDP under ``torchrun``), optimizer and schedule,
    fp16 scaler and EMA of a run, at step 0."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    core = build_model(cfg, size).to(device)
    optimizer, scheduler = build_optimizer(cfg, core)
    trunk = backbone_of(core)
    thawed = [p for p in trunk.parameters() if p.requires_grad] if trunk is not None else []
    if cfg.freeze_backbone_steps:
        for p in thawed:
            p.requires_grad_(False)
    model = core
    if dist.world > 1:
        model = DDP(core, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=bool(cfg.freeze_backbone_steps))
    ema = None
    if cfg.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(core, decay=cfg.ema_decay)
    return Trainer(cfg=cfg, model=model, core=core, optimizer=optimizer, scheduler=scheduler, out=out, dist=dist,
                   amp=amp_dtype_for(device, cfg.amp), ema=ema, thawed=thawed, record=record,
                   scaler=torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None)


def _resume_or_clean(tr: Trainer, resume: bool) -> None:
    """Continue from ``OUT/last.pt``, or (rank 0) remove an earlier run's checkpoints so none survives this run."""
    cfg = tr.cfg
    if resume:
        path = tr.out / "last.pt"
        tr.load_state_dict(load_checkpoint(path, cfg.model), path)
        log.info("resumed from %s at step %d (best %.4f at %d)", path, tr.step, tr.best, tr.best_step)
    elif tr.dist.main:
        for stale in ("best.pt", "last.pt", "best_ema.pt", "collapse.json"):  # never an earlier run's file
            (tr.out / stale).unlink(missing_ok=True)
    if cfg.freeze_backbone_steps and tr.step >= cfg.freeze_backbone_steps:
        for p in tr.thawed:
            p.requires_grad_(True)


def _finish(tr: Trainer, summary: dict) -> None:
    """The final ``last.pt`` (and ``best.pt`` when validation never gave a finite score) and ``train.json``."""
    if not tr.dist.main:
        return
    save_on_main(tr, "last.pt")
    if not (tr.out / "best.pt").exists():  # validation never gave a finite score: the last is the best
        log.warning("validation never gave a finite %s; best.pt is the last checkpoint", tr.cfg.select)
        save_on_main(tr, "best.pt")
    with atomic_path(tr.out / "train.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))


def _run(shards, out_dir, cfg: TrainConfig, freq: FreqConfig, resume: bool, progress: bool) -> dict:
    dist, device = setup_distributed()
    out = Path(out_dir)
    index = read_index(shards)
    for split in ("train", "val"):
        if not index["splits"].get(split, {}).get("samples"):
            raise InputError(f"{shards}: split '{split}' has no samples; training needs train and val")
    size = _train_size(cfg, index)
    set_determinism(cfg.seed, cfg.deterministic)
    record = _record(cfg, freq, shards, index, size)
    tr = build_trainer(cfg, out, size, record, dist, device)
    check_sample_kind(tr.model, index.get("sample_kind"), index.get("clip_length"), str(shards))
    with contract.stage_lock(out, STAGE) if dist.main else contextlib.nullcontext():
        _resume_or_clean(tr, resume)
        train_loader, val_loader = build_loaders(shards, index, cfg, freq, size, device, tr.core.spec)
        _restore_ranks(tr, train_loader)
        if resume:
            tr.last_saved = tr.step
        try:
            summary = fit(tr, train_loader, val_loader, progress, resume)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
            raise Interrupted(_interrupted(tr)) from None
        summary["datasets"] = record["datasets"]
        _finish(tr, summary)
    if dist.world > 1:
        torch.distributed.barrier()
    return summary


def _interrupted(tr: Trainer) -> str:
    """What an interrupted training run says: where it stopped and what a rerun continues from."""
    done = f"train: interrupted at step {tr.step} of {tr.cfg.steps}"
    if tr.last_saved is None:
        return f"{done}; no checkpoint was written yet (every {tr.cfg.checkpoint_every} steps): rerun the same command"
    best = f"; best.pt holds step {tr.best_step}" if tr.best_step else ""
    return (f"{done}; {tr.out / 'last.pt'} holds step {tr.last_saved}{best}: rerun with --resume to continue from it "
            "(without it, training starts over)")


def _open_live(path: Path, resume: bool):
    """A dvclive ``Live`` writing metrics and plots under ``path`` (no dvc.yaml of its own, no experiment saved:
    the pipeline's dvc.yaml declares them).

    dvclive (3.x) looks for the DVC/git repository around the working directory and, in a git repository without
    commits, raises scmrepo's ``SCMError("Empty git repo")`` (treeverse/dvclive#522). Nothing of DVC's is needed
    here, so the ``Live`` is then opened, with ``path`` made absolute, from an empty temporary directory outside any
    repository, where dvclive runs without DVC integration, as it does in a folder without git."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    options = dict(resume=resume, save_dvc_exp=False, dvcyaml=None, report=None)
    try:
        return Live(str(path), **options)
    except SCMError as e:  # e.g. "Empty git repo": nothing of DVC's is needed here
        log.debug("dvclive: no DVC integration (%s)", e)
    absolute = str(Path(path).resolve())
    with tempfile.TemporaryDirectory(prefix="facepipe-dvclive-") as tmp, contextlib.chdir(tmp):
        return Live(absolute, **options)


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


@dataclass
class Trainer:
    """One run's state, where torchvision's reference script keeps the locals of ``main()``.

    ``model`` is what is stepped (DDP-wrapped under ``torchrun``), ``core`` the bare module that checkpoints and the
    EMA read; ``thawed``: the trunk's parameters frozen for ``freeze_backbone_steps``; ``record``: what every
    checkpoint records about the run besides its state (parameters, sizes, datasets, footprint, versions,
    fingerprint); ``live``: the dvclive logger (rank 0). ``step``, ``best`` (best val ``select`` score, at
    ``best_step``), ``best_ema`` and ``stale`` (validations without improvement) are checkpointed and resumed;
    ``stop`` is why the run ended; ``wait_s`` / ``compute_s``: time spent waiting for data and computing;
    ``ranks``: per rank, the train loader's state (:meth:`facepipe.data.FaceLoader.state_dict`) and the random
    generators' states (torch CPU and CUDA, numpy, Python) at the last ``last.pt``, checkpointed so a resume
    continues with the next sample and the same random draws (dropout, drop-path, the models' own sampling).
    """

    cfg: TrainConfig
    model: torch.nn.Module
    core: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    out: Path
    dist: Dist = field(default_factory=Dist)
    amp: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    ema: Optional[torch.nn.Module] = None
    thawed: list = field(default_factory=list)
    record: dict = field(default_factory=dict)
    live: object = None
    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    best_ema: float = -math.inf
    stale: int = 0
    stop: str = "steps"
    wait_s: float = 0.0
    compute_s: float = 0.0
    ranks: Optional[list] = None
    last_saved: Optional[int] = None  # the step OUT/last.pt holds (None: none yet)
    collapse: CollapseWatch = field(init=False)
    dead: DeadBranchWatch = field(init=False)

    def __post_init__(self) -> None:
        self.collapse = CollapseWatch(self.cfg.collapse)
        self.dead = DeadBranchWatch(self.cfg.dead_branch_steps)

    def state_dict(self, weights: torch.nn.Module | None = None) -> dict:
        """A checkpoint: the weights (``core``'s, or ``weights``'), optimizer, scheduler, scaler and EMA states, the
        counters, and :attr:`record`."""
        return {"model": (self.core if weights is None else weights).state_dict(),
                "optimizer": _inner(self.optimizer).state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "step": self.step, "best": self.best, "best_step": self.best_step, "best_ema": self.best_ema,
                "stale": self.stale, "ranks": self.ranks, **self.record}

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        """Resume from checkpoint ``ckpt`` (read from ``path``); the schedule is placed at its step.

        Raises:
            InputError: its optimizer has other parameter groups (a checkpoint written before the timm optimizer,
                whose groups had no separate no-weight-decay half).
        """
        self.core.load_state_dict(ckpt["model"])
        try:
            _inner(self.optimizer).load_state_dict(ckpt["optimizer"])
            if self.optimizer is not _inner(self.optimizer):  # SAM shares its base optimizer's groups and state
                self.optimizer.param_groups = self.optimizer.base_optimizer.param_groups
                self.optimizer.state = self.optimizer.base_optimizer.state
        except ValueError as e:
            raise InputError(f"{path}: its optimizer state does not fit this run's parameter groups ({e}); a "
                             "checkpoint written before biases and norms got their own groups (no weight decay) "
                             "cannot be resumed: train again without resume") from None
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.module.load_state_dict(ckpt["ema"])
        self.step, self.best, self.best_step = ckpt["step"], ckpt["best"], ckpt["best_step"]
        self.best_ema, self.stale = ckpt.get("best_ema", -math.inf), ckpt["stale"]
        self.ranks = ckpt.get("ranks")
        self.scheduler.step_update(self.step)

    def summary(self) -> dict:
        """What ``train.json`` records (without ``datasets``)."""
        cfg, evidence = self.cfg, self.collapse.evidence
        return {"model": cfg.model, "steps": self.step, "best": self.best if self.best > -math.inf else None,
                "best_step": self.best_step, "best_ema": self.best_ema if self.best_ema > -math.inf else None,
                "select": cfg.select, "stop": self.stop,
                "collapsed": bool(evidence and len(evidence) >= cfg.collapse.patience),
                "dead_branches": sorted(self.dead.warned),
                "data_wait_fraction": self.wait_s / max(self.wait_s + self.compute_s, 1e-9)}


def _inner(optimizer):
    """The optimizer whose state a checkpoint holds: SAM's base optimizer, else ``optimizer`` itself."""
    return getattr(optimizer, "base_optimizer", optimizer)


def save_on_main(tr: Trainer, name: str, weights: torch.nn.Module | None = None) -> None:
    """Write checkpoint ``OUT/name`` (:meth:`Trainer.state_dict`) on rank 0 only — torchvision's ``save_on_master`` —
    atomically (:func:`~facepipe.train.engine.save_checkpoint`: a temp name, then a rename)."""
    if tr.dist.main:
        save_checkpoint(tr.out / name, tr.state_dict(weights))
    if name == "last.pt":
        tr.last_saved = tr.step


def _cycle(loader):
    """``loader``'s batches pass after pass (a new iterator per pass); ends only when two passes in a row yield
    nothing (a resumed pass may be empty: the checkpoint was taken after its last batch)."""
    empty = 0
    while empty < 2:
        empty += 1
        for batch in loader:
            empty = 0
            yield batch


def rank_states(tr: Trainer, loader) -> list:
    """Every rank's train loader state (:meth:`~facepipe.data.FaceLoader.state_dict`; ``None`` for a loader without
    one) and random generator states, gathered under ``torchrun`` (every rank must call it)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
           "python": random.getstate(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    state = {"loader": loader.state_dict() if hasattr(loader, "state_dict") else None, "rng": rng}
    if tr.dist.world == 1:
        return [state]
    states: list = [None] * tr.dist.world
    torch.distributed.all_gather_object(states, state)
    return states


def _restore_ranks(tr: Trainer, loader) -> None:
    """Continue ``loader`` where the resumed checkpoint left this rank's stream, with its random generators; a
    checkpoint without them (or from another world size) starts a new pass instead, logged."""
    states = tr.ranks
    if not tr.step:
        return
    if states is None or len(states) != tr.dist.world or states[tr.dist.rank].get("loader") is None:
        log.warning("the checkpoint holds no train loader state for %d rank(s): the stream restarts with a new "
                    "pass (samples of the interrupted pass may repeat)", tr.dist.world)
        loader.set_epoch(tr.step)
        return
    mine = states[tr.dist.rank]
    torch.set_rng_state(mine["rng"]["torch"])
    name, keys, pos, has_gauss, gauss = mine["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(mine["rng"]["python"])
    if mine["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["rng"]["cuda"])
    try:
        loader.load_state_dict(mine["loader"])
    except ConfigError as e:
        log.warning("train loader state not resumed (%s): the stream restarts with a new pass", e)
        loader.set_epoch(tr.step)
        return
    log.info("train stream resumed in pass %d after %d batch(es)", mine["loader"]["epoch"], mine["loader"]["batches"])


def _next_point(cfg: TrainConfig, step: int) -> int:
    """The next step after ``step`` that validates (every ``eval_every`` and at the end) or checkpoints."""
    return min(cfg.steps, (step // cfg.eval_every + 1) * cfg.eval_every,
               (step // cfg.checkpoint_every + 1) * cfg.checkpoint_every)


def _thaw_when_due(tr: Trainer) -> None:
    if tr.cfg.freeze_backbone_steps and tr.step == tr.cfg.freeze_backbone_steps and tr.thawed:
        for p in tr.thawed:
            p.requires_grad_(True)
        log.info("step %d: backbone unfrozen", tr.step)


def _step(tr: Trainer, micro: list[dict]):
    """One optimizer step over the micro-batches; a NaN/inf loss names the step and the last good checkpoint."""
    cfg = tr.cfg
    try:
        return train_step(tr.model, micro if cfg.accumulate > 1 else micro[0], tr.optimizer, amp_dtype=tr.amp,
                          clip_norm=cfg.clip_norm, loss_weights=cfg.loss_weights, scaler=tr.scaler,
                          branch_norms=hasattr(tr.core, "branches"), consistency=cfg.consistency)
    except NonFiniteLoss as e:
        last = tr.out / "last.pt"
        raise NonFiniteLoss(f"{e} at step {tr.step + 1}: training stopped; the last good checkpoint is {last}"
                            + ("" if last.exists() else " (none yet)")) from None


def _watch_branches(tr: Trainer, norms: dict[str, float]) -> None:
    cfg = tr.cfg
    frozen = cfg.freeze_backbone_steps and tr.step <= cfg.freeze_backbone_steps  # no gradient by design
    for name in tr.dead.update({} if frozen else norms):
        log.warning("branch '%s' of %s received no gradient for %d steps in a row: is it connected to the loss?",
                    name, cfg.model, cfg.dead_branch_steps)


def train_one_interval(tr: Trainer, batches, until: int, bar) -> None:
    """Optimizer steps until ``tr.step == until`` (the next validation or checkpoint) — torchvision's
    ``train_one_epoch`` — with the EMA update, the schedule's ``step_update``, the per-step dvclive metrics and
    the dead-branch watch. Every step but the last is closed in dvclive (``next_step``); the caller closes the last
    after validating, so its validation metrics share its step."""
    cfg = tr.cfg
    while tr.step < until:
        _thaw_when_due(tr)
        t0 = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.accumulate)]
        t1 = time.perf_counter()
        result = _step(tr, micro)
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(tr.optimizer.param_groups)}
        if tr.ema is not None:
            tr.ema.update(tr.core, step=tr.step)
        tr.step += 1
        tr.scheduler.step_update(tr.step)
        tr.wait_s += t1 - t0
        tr.compute_s += time.perf_counter() - t1
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4f}", refresh=False)
        if tr.live is not None:
            tr.live.step = tr.step
        _log_step(tr.live, result, lrs, cfg.log_every, tr.step)
        _watch_branches(tr, result.branch_norms)
        if tr.live is not None and tr.step < until:
            tr.live.next_step()


def _select_score(cfg: TrainConfig, frame: dict, video: dict) -> float:
    return (video if cfg.select == "video_auc" else frame)["auc"]


def _validate_ema(tr: Trainer, val_loader) -> bool:
    """Validate the EMA weights; keep ``best_ema.pt`` when they improved (returned)."""
    frame, video, diag = validate(tr.ema.module, val_loader, tr.amp)
    _log_validation(tr.live, "val_ema", frame, video, diag)
    score = _select_score(tr.cfg, frame, video)
    if math.isnan(score) or score <= tr.best_ema:
        return False
    tr.best_ema = score
    save_on_main(tr, "best_ema.pt", tr.ema.module)
    return True


def _watch_collapse(tr: Trainer, diag: dict) -> bool:
    """Feed the collapse watch; once collapsed (``patience`` validations in a row) write ``collapse.json`` (rank 0),
    warn once per episode, and return ``True``."""
    cfg, watch = tr.cfg, tr.collapse
    if not watch.update(tr.step, diag):
        return False
    evidence = {"model": cfg.model, "step": tr.step, "min_std": cfg.collapse.min_std,
                "patience": cfg.collapse.patience, "validations": watch.evidence}
    if tr.dist.main:
        with atomic_path(tr.out / "collapse.json") as tmp:
            tmp.write_text(json.dumps(evidence, indent=1))
    if len(watch.evidence) == cfg.collapse.patience:  # once per episode; the file keeps growing
        log.warning("step %d: the model looks collapsed (val score std %.2g, predicted fake %.0f%%) for %d "
                    "validations in a row; see %s", tr.step, diag["score_std"], 100 * diag["predicted_fake"],
                    len(watch.evidence), tr.out / "collapse.json")
    return True


def validate_and_select(tr: Trainer, val_loader) -> str | None:
    """Validate (the model, and the EMA weights) — torchvision's ``evaluate`` — and select: keep ``best.pt`` /
    ``best_ema.pt`` when ``select`` improved, count validations without improvement, watch for a collapse.

    Returns:
        Why to stop (a collapse with ``collapse.action: stop``, or early stopping: ``patience`` validations without
        improvement, not before ``min_steps``), else ``None``.
    """
    cfg = tr.cfg
    frame, video, diag = validate(tr.model, val_loader, tr.amp)
    _log_validation(tr.live, "val", frame, video, diag)
    score = _select_score(cfg, frame, video)
    improved = not math.isnan(score) and score > tr.best
    if improved:
        tr.best, tr.best_step = score, tr.step
        save_on_main(tr, "best.pt")
    if tr.ema is not None and _validate_ema(tr, val_loader):
        improved = True
    tr.stale = 0 if improved else tr.stale + 1
    log.info("step %d: val %s %.4f (best %.4f at %d)", tr.step, cfg.select, score, tr.best, tr.best_step)
    if _watch_collapse(tr, diag) and cfg.collapse.action == "stop":
        return f"collapse: {len(tr.collapse.evidence)} validations in a row"
    if tr.stale >= cfg.patience and tr.step >= cfg.min_steps:
        return f"early stop: {tr.stale} validations without improvement"
    return None


def fit(tr: Trainer, train_loader, val_loader, progress: bool = True, resume: bool = False) -> dict:
    """Train from ``tr.step`` to ``steps`` in intervals (:func:`train_one_interval`), each ended by a validation
    (:func:`validate_and_select`, every ``eval_every`` steps and at the end) and/or a ``last.pt`` checkpoint (every
    ``checkpoint_every`` steps), logging to dvclive under ``OUT/dvclive`` (rank 0).

    Returns:
        The summary (:meth:`Trainer.summary`).
    """
    cfg = tr.cfg
    tr.live = _open_live(tr.out / "dvclive", resume) if tr.dist.main else None
    bar = tqdm(total=cfg.steps, initial=tr.step, desc=f"train {cfg.model}", unit="step",
               disable=not progress or not tr.dist.main)
    batches = _cycle(train_loader)
    while tr.step < cfg.steps:
        train_one_interval(tr, batches, _next_point(cfg, tr.step), bar)
        if tr.step % cfg.eval_every == 0 or tr.step == cfg.steps:
            stop = validate_and_select(tr, val_loader)
            if stop:
                tr.stop = stop
                break
        if tr.step % cfg.checkpoint_every == 0:
            tr.ranks = rank_states(tr, train_loader)
            save_on_main(tr, "last.pt")
            _faults.at_checkpoint(tr.step)
        if tr.live is not None:
            tr.live.next_step()
    bar.close()
    tr.ranks = rank_states(tr, train_loader)  # for the final last.pt
    if tr.live is not None:
        tr.live.end()
    summary = tr.summary()
    summary["realised_shares"] = list(getattr(train_loader, "history", []))
    return summary
