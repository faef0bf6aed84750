"""Training and prediction building blocks: one tested ``train_step``, ``predict``, checkpoints, ``torchrun`` setup.

Follows torchvision's reference scripts: small named functions, checkpoints as plain dicts
``{model, optimizer, scheduler, step, best, params, model_name, schema_version, ...}`` holding only
tensors and plain values, read back with ``torch.load(weights_only=True)``. The ``train`` and
``evaluate`` stages (:mod:`facepipe.stages.train`, :mod:`facepipe.stages.evaluate`) are built from these.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from facepipe._io import atomic_path
from facepipe.data.schema import SCHEMA_VERSION
from facepipe.errors import ConfigError, FacepipeError, InputError
from facepipe.models import logits_of

log = logging.getLogger(__name__)


class NonFiniteLoss(FacepipeError):
    """The loss became NaN or infinite; the weights were not updated."""


def amp_dtype_for(device: torch.device, amp: str) -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting: ``auto`` = bf16 on CUDA and fp32 (``None``) on the CPU; ``bf16``;
    ``fp16`` (use a ``GradScaler``); ``off`` = fp32."""
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


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


def check_sample_kind(model: torch.nn.Module, kind: str | None, clip_length: int | None, where: str) -> None:
    """Refuse a shard set whose samples are not what the model reads: clips for a clip model (``spec.sample_kind``
    ``clip``), single frames for a frame model, and clips of the length the model was built for (its
    ``clip_length`` attribute, when it has one).

    Raises:
        InputError: naming the set, the model and what to do.
    """
    spec = _spec_of(model)
    kind = kind or "frame"
    if spec.sample_kind == "clip" and kind != "clip":
        raise InputError(f"{where}: model '{spec.name}' reads clips of consecutive frames, this shard set holds single "
                         "frames: extract with extract.sampling.mode clips (facepipe extract --sampling clips "
                         f"--clip-length {spec.clip_length or 16}) and shard again")
    if spec.sample_kind != "clip" and kind == "clip":
        raise InputError(f"{where}: model '{spec.name}' reads single face crops, this shard set holds clips of "
                         f"{clip_length} frames: use a clip model ({', '.join(_clip_models())}) or a frame set")
    want = getattr(_core(model), "clip_length", None)
    if kind == "clip" and want and clip_length and int(want) != int(clip_length):
        raise InputError(f"{where}: model '{spec.name}' is built for clips of {want} frames, the set holds clips of "
                         f"{clip_length} (extract.sampling.clip_length, or the model's options)")


def _clip_models() -> list[str]:
    from facepipe.models import get_spec, list_models

    return [n for n in list_models() if get_spec(n).sample_kind == "clip"]


@dataclass
class StepResult:
    """What one :func:`train_step` did.

    Attributes:
        loss: the total loss (BCE + weighted auxiliary losses), averaged over micro-batches.
        losses: each term unweighted (``bce`` and the model's auxiliary losses).
        grad_norm: global gradient norm before clipping (what ``clip_grad_norm_`` returned; unscaled under fp16).
        branch_norms: the same per named branch (``model.branches()``); 0.0 for a branch that got no gradient.
        logits: (B,) detached float32 logits of all micro-batches. labels: (B,) the labels.
        scale: the fp16 loss scale after the step (``None`` without a scaler).
        skipped: the fp16 scaler found inf/NaN gradients and skipped the optimizer step.
    """

    loss: float
    losses: dict[str, float]
    grad_norm: float
    logits: torch.Tensor
    labels: torch.Tensor
    branch_norms: dict[str, float] = field(default_factory=dict)
    scale: float | None = None
    skipped: bool = False

    def __float__(self) -> float:
        return self.loss

    def __gt__(self, other) -> bool:
        return self.loss > other


def _spec_of(model: torch.nn.Module):
    return getattr(model, "spec", None) or model.module.spec


def _core(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


def branch_grad_norms(model: torch.nn.Module) -> dict[str, float]:
    """L2 norm of the current gradients of each branch the model names (``branches()``); 0.0 without gradients."""
    core = _core(model)
    if not hasattr(core, "branches"):
        return {}
    out = {}
    for name, mod in core.branches().items():
        sq = [p.grad.detach().float().pow(2).sum() for p in mod.parameters() if p.requires_grad and p.grad is not None]
        if any(p.requires_grad for p in mod.parameters()):
            out[name] = float(torch.stack(sq).sum().sqrt()) if sq else 0.0
    return out


def certain(batch: dict) -> dict:
    """``batch`` without its faces of undecided label (``label`` -1: ``label_source`` ``original_diff_uncertain``,
    see :mod:`facepipe.faces.labels`): every tensor and list of batch length is indexed alike. The faces stay in the
    shards and in predictions; the loss leaves them out, as the DFDC winner's per-face labels did."""
    keep = batch["label"] >= 0
    if bool(keep.all()):
        return batch
    n = keep.shape[0]
    idx = keep.nonzero().flatten().tolist()
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == n:
            out[k] = v[keep]
        elif isinstance(v, (list, tuple)) and len(v) == n:
            out[k] = type(v)(v[i] for i in idx)
        else:
            out[k] = v
    return out


def _loss_weights(model: torch.nn.Module, given: dict[str, float] | None, consistency) -> dict[str, float]:
    """The auxiliary losses' weights: the spec's, then ``given``, and the consistency term's (not under DDP)."""
    weights = {**_spec_of(model).loss_weights, **(given or {})}
    if consistency is not None:
        if hasattr(model, "no_sync"):
            raise ConfigError("train.consistency runs outside the model's forward and is not supported under DDP "
                              "(torchrun) yet; train on one process")
        weights["consistency"] = consistency.weight
    return weights


def _training_forward(model: torch.nn.Module, b: dict, consistency):
    """The model's output on a training batch (with the consistency term when configured)."""
    inputs = model_inputs(model, b, training=True)
    if consistency is None:
        return model(inputs)
    from facepipe.train.consistency import consistent_forward

    return consistent_forward(_core(model), inputs, consistency)


def train_step(model: torch.nn.Module, batch: dict | list[dict], optimizer: torch.optim.Optimizer, *,
               amp_dtype: torch.dtype | None = None, clip_norm: float | None = 1.0,
               loss_weights: dict[str, float] | None = None, scaler: torch.amp.GradScaler | None = None,
               branch_norms: bool = False, consistency=None) -> StepResult:
    """One optimisation step: for each micro-batch, forward (autocast when ``amp_dtype``), BCE-with-logits on the
    logit plus the model's auxiliary losses (``{"logit", "losses"}`` outputs) weighted by ``loss_weights`` (default:
    the model spec's ``loss_weights``, else 1), backward of ``loss / n``; then (fp16: unscale) gradient norm and
    clipping, optimizer step (fp16: through the scaler, which skips steps with inf/NaN gradients).

    Args:
        model: a zoo model (or DDP-wrapped one).
        batch: from :func:`facepipe.data.make_loader` (``label`` (B,) int64 0 real / 1 fake, each face's), or a
            list of such micro-batches accumulated into one step (gradient accumulation; DDP syncs on the last).
        optimizer: its optimizer.
        amp_dtype: ``torch.bfloat16`` / ``torch.float16`` for mixed precision, ``None`` for fp32.
        clip_norm: max global gradient norm, ``None`` to skip (the norm is still measured).
        loss_weights: weight per auxiliary loss name.
        scaler: a ``torch.amp.GradScaler`` for fp16 (its scale is reported).
        branch_norms: also measure each named branch's gradient norm.
        consistency: a :class:`facepipe.train.consistency.ConsistencyConfig`: add the global-local consistency term
            (``consistency``, weighted by its ``weight``); not under DDP (``torchrun``).

    A SAM optimizer (``first_step`` / ``second_step``: ``train.sam``) takes two passes: the gradient here, the weights
    moved along it, the gradient again there (clipped alike), and the update of the original weights with it; the
    loss and logits reported are the first pass's.

    Returns:
        A :class:`StepResult` (``float(result)`` is the total loss).

    Raises:
        NonFiniteLoss: the loss is NaN/inf; nothing was updated.
    """
    model.train()
    micro = [certain(b) for b in (batch if isinstance(batch, list) else [batch])]  # label -1: not in the loss
    micro = [b for b in micro if b["label"].shape[0] > 0]
    if not micro:  # every face undecided: nothing to learn from, no update
        empty = torch.zeros(0)
        return StepResult(0.0, {}, 0.0, empty, empty.long(), {}, scaler.get_scale() if scaler is not None else None,
                          True)
    weights = _loss_weights(model, loss_weights, consistency)
    optimizer.zero_grad(set_to_none=True)
    total_sum, sums, all_logits, all_labels = _backward(model, micro, optimizer, weights, amp_dtype, scaler,
                                                         consistency)
    if scaler is not None:
        scaler.unscale_(optimizer)
    norms = branch_grad_norms(model) if branch_norms else {}  # before clipping, like the global norm
    params = [p for p in model.parameters() if p.requires_grad and p.grad is not None]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm else float("inf")))
    skipped = False
    if hasattr(optimizer, "first_step") and hasattr(optimizer, "second_step"):  # SAM (train.sam)
        optimizer.first_step(zero_grad=True)  # to the sharpest point within rho
        _backward(model, micro, optimizer, weights, amp_dtype, None, consistency)
        torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm else float("inf"))
        optimizer.second_step(zero_grad=True)  # back to the weights, updated with the gradient found there
    elif scaler is not None:
        before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < before
    else:
        optimizer.step()
    return StepResult(total_sum, sums, grad_norm, torch.cat(all_logits), torch.cat(all_labels), norms,
                      scaler.get_scale() if scaler is not None else None, skipped)


def _backward(model, micro: list[dict], optimizer, weights: dict, amp_dtype, scaler, consistency):
    """Forward and backward of every micro-batch (``loss / n`` each; DDP syncs on the last). Returns the total loss,
    each term's mean, and the logits and labels.

    Raises:
        NonFiniteLoss: a micro-batch's loss is NaN/inf (the gradients are cleared).
    """
    n = len(micro)
    sums: dict[str, float] = {}
    total_sum = 0.0
    all_logits, all_labels = [], []
    for k, b in enumerate(micro):
        sync = contextlib.nullcontext() if k == n - 1 or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            device_type = b["label"].device.type
            with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                out = _training_forward(model, b, consistency)
            logits = logits_of(out).float()
            labels = b["label"]
            terms = {"bce": F.binary_cross_entropy_with_logits(logits, labels.float())}
            total = terms["bce"]
            if isinstance(out, dict):
                for name, value in (out.get("losses") or {}).items():
                    terms[name] = value.float()
                    total = total + float(weights.get(name, 1.0)) * value.float()
            if not torch.isfinite(total):
                bad = {k_: float(v.detach()) for k_, v in terms.items() if not torch.isfinite(v)}
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLoss(f"loss is {total.item()} ({bad or 'the weighted sum'})")
            (scaler.scale(total / n) if scaler is not None else total / n).backward()
        total_sum += float(total.item()) / n
        for name, v in terms.items():
            sums[name] = sums.get(name, 0.0) + float(v.item()) / n
        all_logits.append(logits.detach())
        all_labels.append(labels.detach())
    return total_sum, sums, all_logits, all_labels


PREDICTION_SCHEMA = {"key": pl.String, "dataset": pl.String, "video_id": pl.String, "method": pl.String,
                     "split": pl.String, "frame_index": pl.Int64, "track_id": pl.Int64, "label": pl.Int64,
                     "video_label": pl.Int64, "label_source": pl.String, "face_size": pl.Float64,
                     "score": pl.Float64, "clip_id": pl.Int64}
"""One row per face: its key and metadata, ``label`` (the face's), ``video_label``, ``face_size`` (the crop side
in source-frame pixels: ``crop_size`` over the scale of the source->crop ``affine``; DeepfakeBench's video
aggregation keeps the largest face of a frame) and the fake probability. For a clip set, one row per clip: its
``clip_id``, ``frame_index`` its first frame, ``label`` the clip's, ``face_size`` from its first frame (``clip_id``
is null for frame sets)."""


def _listed(v) -> list:
    """A batch field as a Python list (numeric metadata comes as a tensor, see
    :data:`facepipe.data.pipeline.NUMERIC_META`)."""
    return v.tolist() if isinstance(v, torch.Tensor) else list(v)


def face_sizes(affines: list, crop_sizes: list) -> list[float | None]:
    """Per sample, ``crop_size / sqrt(|det A|)`` of its (2, 3) source->crop ``affine`` (source pixels), or
    ``None`` where the sample has no affine."""
    out: list[float | None] = []
    for a, c in zip(affines, crop_sizes):
        if a is None or c is None:
            out.append(None)
            continue
        det = abs(float(a[0][0]) * float(a[1][1]) - float(a[0][1]) * float(a[1][0]))
        out.append(float(c) / det ** 0.5 if det > 0 else None)
    return out


@torch.no_grad()
def _rescale(image: torch.Tensor, s: float) -> torch.Tensor:
    """``image`` (..., H, W) resized by ``s`` about its centre (bilinear), then centre-cropped or zero-padded back to
    (H, W) (zero = the mean colour of a normalised image)."""
    if s == 1.0:
        return image
    h, w = image.shape[-2:]
    flat = image.reshape(-1, *image.shape[-3:])
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    r = torch.nn.functional.interpolate(flat, size=(nh, nw), mode="bilinear", align_corners=False)
    if s > 1:
        top, left = (nh - h) // 2, (nw - w) // 2
        r = r[..., top:top + h, left:left + w]
    else:
        top, left = (h - nh) // 2, (w - nw) // 2
        r = torch.nn.functional.pad(r, (left, w - nw - left, top, h - nh - top))
    return r.reshape(image.shape)


def _augmented(x: dict, loader, flip: bool, scale: float) -> dict:
    """A batch's model inputs with the image flipped and/or rescaled and every view recomputed from it."""
    image = _rescale(x["image"].flip(-1) if flip else x["image"], scale)
    out = {"image": image}
    if len(x) > 1:
        views = loader.views_of(image)
        out.update({k: views[k] for k in x if k != "image"})
    return out


def predict(model: torch.nn.Module, loader, *, amp_dtype: torch.dtype | None = None, tta_hflip: bool = False,
            tta_scales: tuple[float, ...] = (1.0,), progress: bool = False, desc: str = "predict") -> pl.DataFrame:
    """Fake probabilities for every sample of ``loader`` (a :class:`facepipe.data.loader.FaceLoader`).

    Test-time augmentation (:class:`facepipe.stages.evaluate.TTAConfig`): the probability is the mean over every
    scale of ``tta_scales`` (resized about the centre, cropped or padded back) and, with ``tta_hflip``, each
    also flipped. Every augmented batch's frequency views are recomputed from its image (``loader.views_of``),
    exactly as the loader computes them: flipping a spectrum (``dct``, ``fft``, ``block_dct``) is not the spectrum
    of the flipped image.

    Returns:
        One row per sample, :data:`PREDICTION_SCHEMA`.
    """
    model.eval()
    rows: dict[str, list] = {k: [] for k in PREDICTION_SCHEMA}
    for b in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
        if "clip_id" in b:  # a clip batch: one row per clip, placed at its first frame
            b = {**b, "frame_index": b["clip_start"], "affine": [a[0] for a in b["affines"]]}  # (T, 2, 3) -> first
        else:
            b = {**b, "clip_id": [None] * len(b["key"])}
        x = model_inputs(model, b)
        device_type = b["label"].device.type
        versions = [(f, s) for s in tta_scales for f in ((False, True) if tta_hflip else (False,))]
        with torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            p = sum(torch.sigmoid(logits_of(model(x if (f, s) == (False, 1.0) else _augmented(x, loader, f, s))).float())
                    for f, s in versions) / len(versions)
        for k in ("key", "dataset", "video_id", "method", "split", "frame_index", "track_id", "label_source",
                  "clip_id"):
            rows[k].extend(_listed(b[k]))
        rows["label"].extend(b["label"].tolist())
        rows["video_label"].extend(_listed(b["video_label"]))
        rows["face_size"].extend(face_sizes(b["affine"], b["crop_size"]))
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


@dataclass
class LoadedModel:
    """A checkpoint's model ready for inference: the module (eval mode, on ``device``), its spec, the image size,
    the ``freq`` parameters it was trained with, the autocast dtype, and the raw checkpoint."""

    model: torch.nn.Module
    spec: object
    size: int
    freq: object
    amp: torch.dtype | None
    device: torch.device
    checkpoint: dict


def model_from_checkpoint(path: str | Path, device: str | torch.device | None = None) -> LoadedModel:
    """Rebuild the model a facepipe checkpoint was trained as (its imports, options and size) and load its weights.

    Raises:
        InputError: unreadable checkpoint (see :func:`load_checkpoint`).
    """
    from facepipe.freq.config import FreqConfig
    from facepipe.models import create_model, get_spec, import_model_file

    ckpt = load_checkpoint(path)
    for f in ckpt.get("imports") or ():
        import_model_file(f)
    name = ckpt["model_name"]
    spec = get_spec(name)
    size = ckpt.get("image_size") or spec.input_size
    params = ckpt["params"]
    opts = dict(params.get("model_options", params.get("detector_options")) or {})  # detector_options: older checkpoints
    opts.update({k: size for k in spec.size_options if k not in opts})
    model = create_model(name, **opts)
    model.load_state_dict(ckpt["model"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    amp = amp_dtype_for(dev, ckpt["params"].get("amp", "auto"))
    return LoadedModel(model, model.spec, size, FreqConfig.model_validate(ckpt.get("freq") or {}), amp, dev, ckpt)
