"""Training and prediction building blocks: one tested ``train_step``, ``predict``, checkpoints, ``torchrun`` setup.

Follows torchvision's reference scripts: small named functions, checkpoints as plain dicts
``{model, optimizer, scheduler, step, best, params, model_name, schema_version, ...}`` holding only
tensors and plain values, read back with ``torch.load(weights_only=True)``. The ``train`` and
``evaluate`` stages (:mod:`facepipe.stages.train`, :mod:`facepipe.stages.evaluate`) are built from these.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facepipe._io import atomic_path
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import FacepipeError, InputError
from facepipe.models._registry import logits_of

log = logging.getLogger(__name__)


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; the weights were not updated."""


def amp_dtype_for(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 autocast on CUDA when ``amp == "auto"``; ``None`` (fp32) on the CPU or when off."""
    return torch.bfloat16 if amp == "auto" and device.type == "cuda" else None


def model_inputs(model: torch.nn.Module, batch: dict, training: bool = False) -> dict[str, torch.Tensor]:
    """The batch entries the model consumes (``spec.inputs``, and ``label`` in training when its auxiliary losses
    need it: ``spec.uses_labels``).

    Raises:
        InputError: a needed view is missing from the batch (names it).
    """
    spec = getattr(model, "spec", None) or model.module.spec
    missing = [k for k in spec.inputs if k not in batch]
    if missing:
        raise InputError(f"model '{spec.name}' needs {missing} but the batch has {sorted(batch)}")
    out = {k: batch[k] for k in spec.inputs}
    if training and spec.uses_labels:
        out["label"] = batch["label"]
    return out


@dataclass
class StepResult:
    """What one :func:`train_step` did.

    Attributes:
        loss: the total loss (BCE + weighted auxiliary losses).
        losses: each term unweighted (``bce`` and the model's auxiliary losses).
        grad_norm: global gradient norm before clipping (what ``clip_grad_norm_`` returned).
        logits: (B,) detached float32 logits. labels: (B,) the labels.
    """

    loss: float
    losses: dict[str, float]
    grad_norm: float
    logits: torch.Tensor
    labels: torch.Tensor

    def __float__(self) -> float:
        return self.loss

    def __gt__(self, other) -> bool:
        return self.loss > other


def _spec_of(model: torch.nn.Module):
    return getattr(model, "spec", None) or model.module.spec


def train_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer, *,
               amp_dtype: torch.dtype | None = None, clip_norm: float | None = 1.0,
               loss_weights: dict[str, float] | None = None) -> StepResult:
    """One optimisation step: forward (autocast when ``amp_dtype``), BCE-with-logits on the logit plus the model's
    auxiliary losses (``{"logit", "losses"}`` outputs) weighted by ``loss_weights`` (default: the model spec's
    ``loss_weights``, else 1), backward, gradient clipping, optimizer step.

    Args:
        model: a zoo model (or DDP-wrapped one).
        batch: from :func:`facepipe.data.make_loader`; ``label`` (B,) int64 0 real / 1 fake (each face's).
        optimizer: its optimizer.
        amp_dtype: ``torch.bfloat16`` for mixed precision, ``None`` for fp32.
        clip_norm: max global gradient norm, ``None`` to skip (the norm is still measured).
        loss_weights: weight per auxiliary loss name.

    Returns:
        A :class:`StepResult` (``float(result)`` is the total loss).

    Raises:
        NonFiniteLoss: the loss is NaN/inf; nothing was updated.
    """
    model.train()
    device_type = batch["label"].device.type
    with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        out = model(model_inputs(model, batch, training=True))
    logits = logits_of(out).float()
    labels = batch["label"]
    bce = F.binary_cross_entropy_with_logits(logits, labels.float())
    terms = {"bce": bce}
    total = bce
    weights = {**_spec_of(model).loss_weights, **(loss_weights or {})}
    if isinstance(out, dict):
        for name, value in (out.get("losses") or {}).items():
            terms[name] = value.float()
            total = total + float(weights.get(name, 1.0)) * value.float()
    if not torch.isfinite(total):
        bad = {k: float(v) for k, v in terms.items() if not torch.isfinite(v)}
        raise NonFiniteLoss(f"loss is {total.item()} ({bad or 'the weighted sum'})")
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm else float("inf"))
    optimizer.step()
    return StepResult(float(total.item()), {k: float(v.item()) for k, v in terms.items()}, float(grad_norm),
                      logits.detach(), labels.detach())


PREDICTION_SCHEMA = {"key": pl.String, "dataset": pl.String, "video_id": pl.String, "method": pl.String,
                     "split": pl.String, "frame_index": pl.Int64, "track_id": pl.Int64, "label": pl.Int64,
                     "video_label": pl.Int64, "label_source": pl.String, "score": pl.Float64}
"""One row per face: its key and metadata, ``label`` (the face's), ``video_label`` and the fake probability."""


@torch.no_grad()
def predict(model: torch.nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta_hflip: bool = False,
            progress: bool = False, desc: str = "predict") -> pl.DataFrame:
    """Fake probabilities for every sample of ``loader`` (a :class:`facepipe.data.loader.FaceLoader`).

    With ``tta_hflip`` the probability is the mean over the batch and its horizontal flip. The flipped
    batch's frequency views are recomputed from the flipped image (``loader.views_of``), exactly as the
    loader computes them: flipping a spectrum (``dct``, ``fft``, ``block_dct``) is not the spectrum of the
    flipped image.

    Returns:
        One row per sample, :data:`PREDICTION_SCHEMA`.
    """
    model.eval()
    rows: dict[str, list] = {k: [] for k in PREDICTION_SCHEMA}
    for b in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        x = model_inputs(model, b)
        device_type = b["label"].device.type
        with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            p = torch.sigmoid(logits_of(model(x)).float())
            if tta_hflip:
                flipped = {"image": x["image"].flip(-1)}
                if len(x) > 1:
                    views = loader.views_of(flipped["image"])
                    flipped.update({k: views[k] for k in x if k != "image"})
                p = (p + torch.sigmoid(logits_of(model(flipped)).float())) / 2
        for k in ("key", "dataset", "video_id", "method", "split", "frame_index", "track_id", "label_source"):
            rows[k].extend(b[k])
        rows["label"].extend(b["label"].tolist())
        rows["video_label"].extend(b["video_label"])
        rows["score"].extend(p.cpu().tolist())
    return pl.DataFrame(rows, schema=PREDICTION_SCHEMA)


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


def load_checkpoint(path: str | Path, model_name: str | None = None) -> dict:
    """Read a facepipe checkpoint (``torch.load(weights_only=True)``: no code runs) and check it fits.

    Raises:
        InputError: missing/unreadable file, another schema version, or a different model.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  torch raises several error types for corrupt or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{p}: not a readable checkpoint (torch.load with weights_only=True, no code is run: "
                         f"{first[:160]})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise InputError(f"{p}: not a facepipe checkpoint (no model/model_name entries)")
    if ckpt.get("schema_version") != SCHEMA_VERSION:
        raise InputError(f"{p}: written for shard schema {ckpt.get('schema_version')}, this facepipe reads "
                         f"{SCHEMA_VERSION}")
    if model_name is not None and ckpt["model_name"] != model_name:
        raise InputError(f"{p}: checkpoint of model '{ckpt['model_name']}', asked to resume '{model_name}'")
    return ckpt
