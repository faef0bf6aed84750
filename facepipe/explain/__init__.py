"""Where a detector looks: Grad-CAM family maps, gradient-weighted attention and attention rollout for every model
of the zoo, written as images, ``maps.npz``, ``summary.parquet`` and a ``gallery.html`` (``facepipe explain``).

Methods:

- ``gradcam`` / ``gradcam++``: the ``grad-cam`` library (pytorch-grad-cam; Selvaraju et al., ICCV 2017;
  Chattopadhay et al., WACV 2018) on the model's declared target layer (``ModelSpec.target_layer``). Token
  outputs (ViT / CLIP blocks) are reshaped to a grid with the prefix (class) tokens dropped; channels-last maps
  (Swin stages, window attention) are permuted to (B, C, H, W). The input always carries a gradient
  (``compute_input_gradient``): behind a frozen backbone the target layer's activations would otherwise have
  no gradient and the map would be blank.
- ``attn_grad``: gradient-weighted attention (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): per block ``cam = clamp(dy/dA * A, min=0)``
  fused over heads, accumulated as ``R = R + cam @ R`` from ``R = I``; the map is the class token's row over the
  patch tokens (or, for an average-pooled model, the mean row).
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  heads fused, ``0.5 A + 0.5 I`` renormalised per row, multiplied through the blocks. Gradient-free and
  class-agnostic: its real and fake maps are the same.

Attention methods read the softmax probabilities of *global* self-attention over all tokens (timm's ViT / CLIP
``Attention`` switched to its eager path, facepipe's :class:`~facepipe.models.attention.AttentionBlock`), kept in
the autograd graph. Windowed and local attention (Swin, local, multipole, global tokens) gives no token-to-token
matrix to roll out; such a model gets a :class:`~facepipe.errors.ConfigError` naming the methods that work.

The target is the model's one fake logit ``y`` for the fake map and ``-y`` for the real map.

Layer sets (``layers``): ``last`` (the declared target layer, or the last attention block), ``last4``, ``all``
(the layers of the same family: the target layer's name with its last index varied, e.g. every
``backbone.blocks.N.norm1``; every global attention block for the attention methods), or explicit module names.
The default (``auto``, :data:`DEFAULT_LAYERS`) is each method's published one: Grad-CAM / Grad-CAM++ on the last
(target) layer; ``attn_grad`` and ``rollout`` aggregate ALL attention blocks, as Chefer et al. (the relevance is
propagated from the first block to the last) and Abnar & Zuidema (rollout multiplies through every layer) do.
Head fusion (``mean`` | ``max`` | ``min``) applies to the attention methods, as in the seed's CLIP tool.

Modules: :mod:`~facepipe.explain.cam` (the model as grad-cam sees it, target layers, Grad-CAM / Grad-CAM++),
:mod:`~facepipe.explain.attention` (attention sites, gradient-weighted relevance, rollout),
:mod:`~facepipe.explain.scores` (face mass, pointing game, IoU with masks, their chance levels, the summary),
:mod:`~facepipe.explain.gallery` (the per-face images and ``gallery.html`` from a Jinja2 template); this package's
``__init__`` holds the method dispatch (:func:`explain_batch`), the seeded sample (:func:`choose_keys`) and the run
(:func:`explain`), and re-exports the names of all of them.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
import torch

from facepipe._io import atomic_path
from facepipe.errors import ConfigError, InputError
from facepipe.explain.attention import (
    HEAD_FUSIONS,
    AttentionSite,
    AttentionTap,
    attention_maps,
    attention_rollout,
    attention_sites,
    fuse_heads,
    gradient_weighted_relevance,
    relevance_to_grid,
)
from facepipe.explain.cam import (
    LAYER_SETS,
    ClipModel,
    ImageModel,
    LogitTarget,
    clip_gradcam_maps,
    gradcam_maps,
    target_layer_names,
    tokens_to_grid,
)
from facepipe.explain.gallery import _comparison, _overlay, _save_png, render_gallery, write_gallery
from facepipe.explain.scores import (
    FACE_SCALE,
    SUMMARY_SCHEMA,
    area_share,
    face_mass,
    face_region,
    face_scores,
    pointing_hit,
    summary_means,
    topk_iou,
)

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "attn_grad", "rollout")
#: each method's layer set for ``layers`` ``auto`` / ``None``: Grad-CAM's last (target) layer (Selvaraju et al.);
#: gradient-weighted attention (Chefer et al., ICCV 2021) and rollout (Abnar & Zuidema, ACL 2020) over all blocks
DEFAULT_LAYERS = {"gradcam": "last", "gradcam++": "last", "attn_grad": "all", "rollout": "all"}


def resolve_layers(method: str, layers: str | Sequence[str] | None = None) -> str | list[str]:
    """``layers``, or for ``None`` / ``auto`` the method's published default (:data:`DEFAULT_LAYERS`: ``last`` for
    Grad-CAM / Grad-CAM++, ``all`` blocks for ``attn_grad`` and ``rollout``).

    Raises:
        ConfigError: unknown method.
    """
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {method!r}")
    if layers is None or (isinstance(layers, str) and layers == "auto"):
        return DEFAULT_LAYERS[method]
    return layers if isinstance(layers, str) else list(layers)


def explain_batch(wrapper: ImageModel, x: torch.Tensor, method: str | None = None, layers=None,
                  fusion: str = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real and fake maps of a batch with ``method`` (default: the model's ``ModelSpec.explain``) on ``layers``
    (default ``auto``: :func:`resolve_layers`, all blocks for the attention methods).

    A clip batch (B, T, 3, H, W) of a video model gives (B, T, H, W) maps (:func:`clip_gradcam_maps`; Grad-CAM
    methods only).

    Returns:
        ``(real, fake, logits)``: (B, H, W) float32 in [0, 1] at the input size, and (B,) fake logits.

    Raises:
        ConfigError: unknown method or head fusion, a method the model does not support, unknown layers.
    """
    method = method or wrapper.spec.explain
    layers = resolve_layers(method, layers)
    if fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head fusion must be one of {HEAD_FUSIONS}, got {fusion!r}")
    wrapper.eval()
    if x.dim() == 5:  # a clip batch of a video model: Grad-CAM over the frames of each clip
        if method not in ("gradcam", "gradcam++"):
            raise ConfigError(f"model '{wrapper.spec.name}' reads clips: explain it with gradcam or gradcam++ "
                              f"(Grad-CAM over the frames of a clip), not {method}")
        return clip_gradcam_maps(wrapper.model, x, target_layer_names(wrapper.model, layers),
                                 plus_plus=method == "gradcam++")
    if method in ("gradcam", "gradcam++"):
        return gradcam_maps(wrapper, x, target_layer_names(wrapper.model, layers), plus_plus=method == "gradcam++")
    return attention_maps(wrapper, x, method, layers, fusion)


# ------------------------------------------------------------------------------------------------------------------
# the sample


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _local_shard_keys(urls: Iterable[str]) -> list[str]:
    """Sample keys of local tar shards, in order, from the member names only (nothing decoded)."""
    import tarfile

    keys: list[str] = []
    for u in urls:
        path = u[len("file://"):] if u.startswith("file://") else u
        with tarfile.open(path) as tf:
            for name in tf.getnames():
                base = name.rsplit("/", 1)[-1]
                k = base.split(".", 1)[0]
                if not keys or keys[-1] != k:
                    keys.append(k)
    return list(dict.fromkeys(keys))


def choose_keys(shards: str | Path, split: str, n: int, seed: int = 0) -> list[str]:
    """A seeded random sample of ``n`` keys of a split (sorted keys, then ``numpy.random.default_rng(seed)``):
    the same shards and seed give the same faces.

    Raises:
        InputError: the split has no samples, or its shards are not local files.
    """
    from facepipe.data.loader import resolve_shards

    ss = resolve_shards(shards, split)
    if any("://" in u and not u.startswith("file://") for u in ss.urls):
        raise InputError(f"{shards}: choosing a sample needs local shards; give --keys FILE instead")
    keys = sorted(_local_shard_keys(ss.urls))
    if not keys:
        raise InputError(f"{shards}: split '{split}' holds no samples")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(keys, size=min(n, len(keys)), replace=False).tolist())


# ------------------------------------------------------------------------------------------------------------------
# the run, in steps: the model and its settings, the faces batch by batch, the files


@dataclass
class _Run:
    """What the steps of one :func:`explain` run share: the loaded checkpoint, the model as :class:`ImageModel`,
    the method and its settings, the output folder and the (3, 1, 1) normalisation to undo for the images."""

    lm: Any  # facepipe.train.engine's loaded model (model, spec, freq, device, size, checkpoint)
    wrapper: ImageModel
    method: str
    layers: str | list[str]
    head_fusion: str
    top_percent: float
    out: Path
    mean: np.ndarray
    std: np.ndarray

    @property
    def model_name(self) -> str:
        return self.lm.checkpoint["model_name"]


def _face(run: _Run, b: dict, i: int, rgb01: np.ndarray, real: np.ndarray, fake: np.ndarray, logit: float,
          mask: np.ndarray, size: int, region: np.ndarray | None | str = "landmarks") -> dict:
    """Write one face's images (maps over the crop, the comparison figure) and return its summary row (sample
    ``i`` of batch ``b``; ``size``: the model's input side; ``region``: the face region, by default from the
    sample's landmarks)."""
    key = b["key"][i]
    score = float(1 / (1 + math.exp(-float(logit))))
    label = int(b["label"][i])
    caption = (f"{key}   score {score:.3f}   face label {'fake' if label else 'real'}   "
               f"method {b['method'][i]}   [{run.method}, {run.model_name}]")
    stem = _safe(key)
    _save_png(run.out / f"{stem}_real.png", _overlay(rgb01, real))
    _save_png(run.out / f"{stem}_fake.png", _overlay(rgb01, fake))
    _comparison(run.out / f"{stem}_comparison.png", rgb01, real, fake, caption, run.method == "rollout")
    if isinstance(region, str):
        region = face_region(b["landmarks"][i], b["affine"][i], b["crop_size"][i], size)
    return {"key": key, "dataset": b["dataset"][i], "video_id": b["video_id"][i], "method": b["method"][i],
            "label": label, "video_label": int(b["video_label"][i]), "label_source": b["label_source"][i],
            "score": score, **face_scores(real, fake, region, mask, run.top_percent),
            "real_png": f"{stem}_real.png", "fake_png": f"{stem}_fake.png", "comparison_png": f"{stem}_comparison.png"}


def _strip(a: np.ndarray) -> np.ndarray:
    """(T, H, W[, C]) -> (H, T * W[, C]): a clip's frames side by side."""
    return np.concatenate(list(a), axis=1)


def _clip_region(b: dict, i: int, size: int) -> np.ndarray | None:
    """The face regions of clip ``i``'s frames side by side (None when a frame has no landmarks)."""
    regions = [face_region(lm, a, b["crop_size"][i], size) for lm, a in zip(b["landmarks"][i], b["affines"][i])]
    return None if any(r is None for r in regions) else _strip(np.stack(regions))


def _batch_clips(run: _Run, b: dict, sel: list[int]) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """:func:`_batch_faces` for a clip batch: each clip's frames, maps, masks and face regions laid side by side as
    one strip (H, T * W), so the images, the face mass and the pointing game cover the whole clip."""
    x = b["image"][sel]  # (n, T, 3, H, W)
    real, fake, logit = explain_batch(run.wrapper, x, run.method, run.layers, run.head_fusion)
    imgs = np.clip(x.detach().cpu().numpy() * run.std[None] + run.mean[None], 0, 1).transpose(0, 1, 3, 4, 2)
    masks = b["mask"][sel, :, 0].cpu().numpy() > 0.5
    size = x.shape[-1]
    for j, i in enumerate(sel):
        row = _face(run, b, i, _strip(imgs[j]), _strip(real[j]), _strip(fake[j]), logit[j], _strip(masks[j]), size,
                    region=_clip_region(b, i, size))
        yield row, _strip(real[j]), _strip(fake[j])


def _batch_faces(run: _Run, b: dict, sel: list[int]) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
    """The maps of the selected samples ``sel`` of a loader batch: per face its summary row and its real and fake
    maps (images written as it goes)."""
    if b["image"].dim() == 5:
        yield from _batch_clips(run, b, sel)
        return
    x = b["image"][sel]
    real, fake, logit = explain_batch(run.wrapper, x, run.method, run.layers, run.head_fusion)
    imgs = np.clip(x.detach().cpu().numpy() * run.std + run.mean, 0, 1).transpose(0, 2, 3, 1)
    masks = b["mask"][sel, 0].cpu().numpy() > 0.5
    size = x.shape[-1]
    for j, i in enumerate(sel):
        yield _face(run, b, i, imgs[j], real[j], fake[j], logit[j], masks[j], size), real[j], fake[j]


def _explain_faces(run: _Run, loader: Iterable[dict], wanted: Sequence[str], progress: bool
                   ) -> tuple[dict[str, list], list[np.ndarray], list[np.ndarray], set[str]]:
    """Run through the loader until every wanted key is explained: the summary columns, the float16 real and fake
    maps in that order, and the keys never seen."""
    from tqdm.auto import tqdm

    rows: dict[str, list] = {k: [] for k in SUMMARY_SCHEMA}
    reals, fakes = [], []
    todo = set(wanted)
    bar = tqdm(total=len(wanted), desc=f"explain {run.model_name} ({run.method})", unit="face",
               disable=not progress)
    for b in loader:
        sel = [i for i, k in enumerate(b["key"]) if k in todo]
        if not sel:
            continue
        for row, real, fake in _batch_faces(run, b, sel):
            todo.discard(row["key"])
            for k in SUMMARY_SCHEMA:
                rows[k].append(row[k])
            reals.append(real.astype(np.float16))
            fakes.append(fake.astype(np.float16))
            bar.update(1)
        if not todo:
            break
    bar.close()
    return rows, reals, fakes, todo


def _write_outputs(run: _Run, rows: dict[str, list], reals: list[np.ndarray], fakes: list[np.ndarray]) -> dict:
    """``summary.parquet``, ``maps.npz``, ``summary.json`` and ``gallery.html``; returns the summary means."""
    summary = pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
    with atomic_path(run.out / "summary.parquet") as tmp:
        summary.write_parquet(tmp)
    with atomic_path(run.out / "maps.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, keys=np.asarray(rows["key"]), real=np.stack(reals), fake=np.stack(fakes))
    masked = summary.filter(pl.col("has_mask"))
    means = {"model": run.model_name, "explain_method": run.method,
             "layers": run.layers if isinstance(run.layers, str) else list(run.layers),
             "head_fusion": run.head_fusion, "n": summary.height, "n_masked": masked.height,
             **summary_means(summary, run.top_percent)}
    with atomic_path(run.out / "summary.json") as tmp:
        tmp.write_text(json.dumps(means, indent=1))
    write_gallery(run.out, summary, means)
    return means


def explain(checkpoint: str | Path, shards: str | Path, out_dir: str | Path, *, split: str = "test", n: int = 32,
            keys: Sequence[str] | None = None, seed: int = 0, method: str | None = None, layers=None,
            head_fusion: str = "mean", top_percent: float = 20.0, batch_size: int = 8, progress: bool = True) -> dict:
    """Explain a checkpoint's decisions on a sample of a split.

    Writes, in ``out_dir``: per sample ``<key>_real.png`` and ``<key>_fake.png`` (map over the crop),
    ``<key>_comparison.png`` (crop, both overlays, their difference; score, face label and method in the caption);
    ``maps.npz`` (``keys`` and float16 ``real`` / ``fake`` maps (N, H, W) in [0, 1] at the model's input size, the
    crop the model saw); ``summary.parquet`` (:data:`SUMMARY_SCHEMA`: score, labels, ``face_mass`` = share of the
    fake map inside the face region from the stored landmarks with its chance level ``face_mass_chance`` (the
    region's area share), and where the sample has a manipulation mask (fakes compared with their original) the
    pointing-game hit with its chance level ``pointing_chance`` (the mask's area share) and the IoU of the map's top
    ``top_percent`` % with the mask); ``summary.json`` (means, each chance level averaged over the same faces as its
    statistic: ``face_mass_chance``, ``face_mass_fake_faces_chance``, ``face_mass_real_faces_chance``,
    ``pointing_game_chance``) and ``gallery.html`` (every sample, sortable by score, label, face mass).
    Files are written under temporary names and renamed. A video model on a clip set: each sample is a clip, its
    maps Grad-CAM over the clip's frames (:func:`clip_gradcam_maps`), its images, maps and statistics over the
    frames laid side by side (``maps.npz``: (N, H, T * W)).

    Args:
        checkpoint: a ``facepipe train`` checkpoint.
        shards: shard folder / index; split: which split.
        n: samples, a seeded choice (``seed``) among the split's keys; ``keys`` instead lists them.
        method: ``gradcam`` | ``gradcam++`` | ``attn_grad`` | ``rollout`` (default: the model's).
        layers: ``auto`` (default: :func:`resolve_layers`, ``last`` for Grad-CAM, ``all`` blocks for ``attn_grad``
            / ``rollout``) | ``last`` | ``last4`` | ``all`` or module names (``summary.json`` records the set
            used). head_fusion: ``mean`` | ``max`` | ``min``.

    Returns:
        The summary means (``summary.json``).

    Raises:
        InputError: unreadable checkpoint or shards, an empty split, keys not in the split (named).
        ConfigError: a method the model does not support (names those that work), unknown layers.
    """
    from facepipe.data.loader import make_loader
    from facepipe.train.engine import check_sample_kind, model_from_checkpoint

    lm = model_from_checkpoint(checkpoint)
    clips = lm.spec.sample_kind == "clip"
    method = method or ("gradcam" if clips else lm.spec.explain)
    layers = resolve_layers(method, layers)
    wrapper = ImageModel(lm.model, lm.freq).to(lm.device)
    wanted = sorted(set(keys)) if keys else choose_keys(shards, split, n, seed)
    loader = make_loader(shards, split, batch_size, 0, shuffle=False, rank=0, world_size=1, image_size=lm.size,
                         views=(), freq=lm.freq, mean=lm.spec.mean, std=lm.spec.std, device=lm.device, masks=True)
    check_sample_kind(lm.model, loader.shardset.sample_kind, loader.shardset.clip_length, str(shards))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(lm, wrapper, method, layers, head_fusion, top_percent, out,
               mean=np.asarray(lm.spec.mean, np.float32)[:, None, None],
               std=np.asarray(lm.spec.std, np.float32)[:, None, None])
    rows, reals, fakes, todo = _explain_faces(run, loader, wanted, progress)
    if todo:
        raise InputError(f"{shards}: split '{split}' has no samples {sorted(todo)[:5]}"
                         f"{' …' if len(todo) > 5 else ''} ({len(todo)} keys not found)")
    return _write_outputs(run, rows, reals, fakes)


__all__ = ["DEFAULT_LAYERS", "FACE_SCALE", "HEAD_FUSIONS", "LAYER_SETS", "METHODS", "SUMMARY_SCHEMA", "AttentionSite",
           "AttentionTap", "ClipModel", "ImageModel", "LogitTarget", "area_share", "attention_maps",
           "attention_rollout", "attention_sites", "choose_keys", "clip_gradcam_maps", "explain", "explain_batch",
           "face_mass", "face_region", "face_scores", "fuse_heads", "gradcam_maps", "gradient_weighted_relevance",
           "pointing_hit", "relevance_to_grid", "render_gallery", "resolve_layers", "summary_means",
           "target_layer_names", "tokens_to_grid", "topk_iou", "write_gallery"]
