"""``make_dataset``: a facepipe shard set as a webdataset pipeline of batches (a torch ``IterableDataset``), and
``LoaderConfig``, what it (and :func:`facepipe.data.make_loader` on top of it) is configured with.

The pipeline is a list of webdataset stages::

    shard list (index / URLs / brace pattern; epoch-wise shuffled, or resampled without epochs)
      -> split_by_node (torchrun ranks) -> split_by_worker (DataLoader workers)
      -> tar members -> samples  [handler]
      -> dataset-weight / class-balance thinning (seeded rejection sampling from the index's counts)
      -> sample shuffle buffer
      -> decode + check schema + albumentations augmentation (seeded per sample)  [handler]
      -> batches of uint8 images + labels + metadata (+ stored views) + the worker's stream position

or, on a ``shard.layout: cells`` set (one shard series per (dataset, label)), the cell mixer
(:mod:`facepipe.data.mixer`) in place of the first five stages: one stream per cell, its shards dealt over ranks
and workers, mixed by quota (weights up- and down-weight without reading samples only to drop them).

Exact resumption: every batch carries ``_position`` (worker, samples of its stream consumed, outputs of the next
sample already delivered); :meth:`FaceDataset.set_epoch` takes those positions back and each worker replays its
stream up to them without decoding (the shard order, mixing and shuffle buffer are seeded by (seed, rank, worker,
epoch); augmentation and self-blending by (seed, rank, worker, epoch, place in the stream)), so a resumed pass
continues with the next sample (:meth:`facepipe.data.FaceLoader.state_dict`).

then, in the training process, :class:`facepipe.data.device.ToDevice` moves them to the device (frequency views
computed there, normalisation).

One pipeline serves every epoch: :meth:`FaceDataset.set_epoch` reseeds shard order, resampling, thinning,
shuffling and augmentation (the epoch reaches persistent DataLoader workers through a small shared-memory
tensor, read when a worker starts a pass), so the same epoch gives the same samples in the same order.

Handlers: ``warn`` (log the shard and key, skip the sample, count it in ``errors``), ``raise``, or any of
webdataset's handler functions (``webdataset.handlers.warn_and_continue``, ``reraise_exception``,
``ignore_and_continue``, ``warn_and_stop``, ...): return ``True`` to skip (and count), ``False`` to stop the
pass, or raise. Shards are opened with ``webdataset.gopen``: local paths, ``http(s)://``, ``s3://`` (any
S3-compatible store; :mod:`facepipe.data.storage`), ``gs://``, ``hf://`` and ``pipe:COMMAND``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from itertools import islice
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import torch
import webdataset as wds
from pydantic import Field, field_validator

from facepipe.config import Section, validate_section
from facepipe.data import storage
from facepipe.data.index import ShardSet, resolve_shards
from facepipe.data.mixer import MixPlan, mix
from facepipe.data.sbi import SBIConfig
from facepipe.data.schema import SchemaError, decode_clip_sample, decode_sample
from facepipe.errors import ConfigError
from facepipe.freq.config import FreqConfig

log = logging.getLogger(__name__)
storage.register_schemes()  # s3:// (and gs:// with gcsfs) in webdataset's gopen, in every worker that imports this

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_KEYS = ("key", "dataset", "video_id", "method", "split", "frame_index", "track_id", "video_label", "label_source",
             "manipulation_score", "landmarks", "affine", "crop_size", "crop_landmarks")
CLIP_META_KEYS = ("key", "dataset", "video_id", "method", "split", "clip_id", "clip_start", "track_id", "video_label",
                  "label_source", "frame_indices", "timestamps_s", "frame_labels", "frame_label_sources",
                  "manipulation_scores", "gaps", "landmarks", "affines", "crop_size", "crop_landmarks")
"""The metadata lists of a clip batch (one entry per clip; the per-frame fields are lists of ``clip_length``)."""
NUMERIC_META = {"frame_index": torch.int64, "track_id": torch.int64, "video_label": torch.int64,
                "crop_size": torch.int64, "manipulation_score": torch.float32, "landmarks": torch.float32,
                "affine": torch.float64, "clip_id": torch.int64, "clip_start": torch.int64,
                "frame_indices": torch.int64, "timestamps_s": torch.float64, "frame_labels": torch.int64,
                "gaps": torch.bool, "manipulation_scores": torch.float32, "affines": torch.float64}
"""Metadata batched as tensors (CPU), with their dtypes: per sample ``frame_index``, ``track_id``, ``video_label``,
``crop_size`` (B,) int64, ``manipulation_score`` (B,) float32 (NaN: none), ``landmarks`` (B, 5, 2) float32 source-frame
pixels, ``affine`` (B, 2, 3) float64 source -> crop; per clip the same with a T axis (``frame_indices`` (B, T), ...,
``gaps`` (B, T) bool). A field some sample of the batch lacks (``None``: e.g. imported crops without landmarks) stays a
list; so do the strings and ``crop_landmarks`` (a varying number of points)."""
_NAN_OK = {"manipulation_score", "manipulation_scores", "timestamps_s"}


def _meta_tensor(key: str, values: list) -> Any:
    """``values`` as a tensor of :data:`NUMERIC_META`'s dtype (None -> NaN where that means 'none'), else the list."""
    dtype = NUMERIC_META.get(key)
    if dtype is None:
        return values
    if key in _NAN_OK:
        values = [float("nan") if v is None else ([float("nan") if x is None else x for x in v]
                                                   if isinstance(v, list) else v) for v in values]
    elif any(v is None for v in values):
        return values
    try:
        return torch.tensor(values, dtype=dtype)
    except (TypeError, ValueError):  # ragged or holding None deeper down: keep the list
        return values
_SLOTS = 256  # per-worker skip counters in the shared state (worker id modulo this)


class LoaderConfig(Section):
    """What :func:`make_dataset` and :func:`facepipe.data.make_loader` are configured with: the fields are
    ``make_loader``'s keyword arguments. ``num_workers``, ``device``, ``mean``, ``std`` and
    ``multiprocessing_context`` configure the DataLoader and :class:`~facepipe.data.device.ToDevice` on top of
    the dataset. Invalid values are :class:`~facepipe.errors.ConfigError` through ``make_loader`` (or
    :func:`facepipe.config.validate_section`).

    Attributes:
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = in this process); they persist across passes.
        shuffle: shuffle shard order per epoch and samples in a buffer of ``shuffle_buffer``.
        resampled: draw shards with replacement forever (no epochs); each pass then stops after
            ``epoch_samples`` samples (default: the split's size from the index) per rank.
        epoch_samples: samples per pass (resampled mode) across all ranks.
        seed: seeds shard order, mixing, shuffle buffer, thinning (mixed with rank, worker, epoch) and
            augmentation (also with the sample's place in the worker's stream).
        augment: ``True`` for :func:`default_augmentation`, a callable ``f(image=...) -> {"image": ...}``
            (e.g. an ``albumentations.Compose``), or ``False``.
        image_size: output side in pixels (isotropic resize + pad when augmenting, resize otherwise);
            ``None`` keeps the crop size.
        views: frequency views to add to each batch (:data:`facepipe.freq.VIEWS`).
        view_source: ``compute`` (torch, on ``device``, from the final image: after augmentation and
            resizing), ``stored`` (read from the shards: refused when they were computed with other ``freq``
            parameters or at another size than the images), or ``auto`` (stored when that gives exactly
            what ``compute`` would: not augmenting, same parameters, same size; else computed).
        freq: view parameters (bands, log, ...), e.g. params.yaml's ``freq`` section; defaults to
            :class:`FreqConfig`.
        mean, std: per-channel normalisation of the [0, 1] RGB image.
        device: where batches (and computed views) go.
        dataset_weights: target share of each dataset in the stream, e.g. ``{"ffpp": 1, "dfdc": 1}``;
            needs the index's counts. On a ``shard.layout: cells`` set, cell streams mixed by quota
            (:mod:`facepipe.data.mixer`: up- and down-weighting, every epoch exact); on a ``mixed`` set, seeded
            rejection sampling (down-weighting only: samples are read and dropped).
        class_balance: equalise real and fake within each dataset (as ``dataset_weights``).
        handler: ``warn`` (skip and count broken samples/shards), ``raise``, or a webdataset handler function
            (``webdataset.handlers.warn_and_continue``, ``reraise_exception``, ...: ``True`` skips and counts,
            ``False`` stops the pass; a module-level function when workers are spawned).
        rank, world_size: this process's node split; default from ``torchrun`` (RANK/WORLD_SIZE or
            ``torch.distributed``).
        drop_last: drop a last partial batch.
        masks: add ``mask`` (B, 1, H, W) float32 in [0, 1]: each fake face's difference from its
            original, augmented with the image (zeros for real faces and for fakes without an original).
        multiprocessing_context: start method of the DataLoader workers (``spawn``, ``forkserver``,
            ``fork``; default the platform's). Everything the workers receive is picklable.
        decode: where crops are decoded. ``workers``: in the DataLoader workers (libspng for PNG,
            libjpeg-turbo for JPEG); ``device``: the workers pass the JPEG bytes on and each batch is decoded in
            one ``torchvision.io.decode_jpeg`` call on ``device`` (nvJPEG on CUDA), then resized there
            (bilinear, antialiased) to ``image_size``; needs JPEG shards (``extract.output.format: jpg``) and no
            augmentation (albumentations runs on the CPU). ``auto``: ``device`` when ``device`` is CUDA, the
            index records JPEG crops and ``augment`` is off, else ``workers``.
        clips: read a clip set (``extract.sampling.mode: clips``; the index says ``sample_kind: clip``): each
            sample is one (video, clip, track) and batches carry ``image`` (B, T, 3, H, W), ``mask`` (B, T, 1, H,
            W), views (B, T, C, H, W) computed per frame, ``label`` (B,) the clip's label, and per-frame lists
            (:data:`CLIP_META_KEYS`). The augmentation draws its parameters once per clip and applies them to
            every frame (albumentations' additional targets), so a clip stays a clip. ``None`` (default): what the
            index says; ``True`` / ``False`` refuse a set of the other kind.
        sbi: self-blended images on the fly (:class:`facepipe.data.sbi.SBIConfig`; Shiohara & Yamasaki, CVPR
            2022): real faces give self-blended fakes (``label`` 1, ``label_source`` ``sbi``, the blend mask as
            ``mask``), made before the augmentation; needs frame shards with 68-point landmarks
            (``extract.landmarks68``). ``reals_only`` leaves the set's own fakes out.
        follow_index: when the source is an index and ``facepipe shard`` publishes a new set there, the next pass
            reads the new set (:class:`~facepipe.data.loader.FaceLoader` re-reads the index when a pass starts; a
            pass under way finishes on its set, which the publisher keeps ``shard.grace_hours``). A process of a
            multi-process job (``world_size`` > 1, or an initialised ``torch.distributed`` process group) keeps the
            set it started with: ranks reading the index apart could switch at different passes. ``False``: every
            pass reads the set of the first.
    """

    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(4, ge=0)
    shuffle: bool = True
    shuffle_buffer: int = Field(2000, ge=0)
    resampled: bool = False
    epoch_samples: int | None = Field(None, ge=1)
    seed: int = 0
    augment: bool | Callable = False
    image_size: int | None = Field(None, ge=1)
    views: tuple[str, ...] = ()
    view_source: Literal["auto", "compute", "stored"] = "auto"
    freq: FreqConfig = Field(default_factory=FreqConfig)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: str = "cpu"
    dataset_weights: dict[str, float] | None = None
    class_balance: bool = False
    handler: Literal["warn", "raise"] | Callable = "warn"
    rank: int | None = None
    world_size: int | None = None
    drop_last: bool = False
    masks: bool = False
    multiprocessing_context: str | None = None
    decode: Literal["auto", "workers", "device"] = "auto"
    clips: bool | None = None
    sbi: SBIConfig | None = None
    follow_index: bool = True

    @field_validator("freq", mode="before")
    @classmethod
    def _default_freq(cls, v: Any) -> Any:
        return FreqConfig() if v is None else v

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, v: Any) -> Any:
        return str(v) if isinstance(v, torch.device) else v

    @field_validator("views")
    @classmethod
    def _known_views(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from facepipe.freq import VIEWS

        bad = [x for x in v if x not in VIEWS]
        if bad:
            raise ValueError(f"unknown views {bad}; known: {list(VIEWS)}")
        return v


def loader_config(**options: Any) -> LoaderConfig:
    """:class:`LoaderConfig` from keyword arguments; an invalid one is a :class:`~facepipe.errors.ConfigError`."""
    return validate_section(LoaderConfig, options, "loader options")


def default_augmentation(size: int | None, seed: int):
    """The field's usual face-forgery training augmentation (DeepfakeBench / SBI style), albumentations.

    Horizontal flip, small rotation (±10°), Gaussian blur, isotropic resize of the longest side to
    ``size`` with a random interpolation and constant padding to a square, brightness/contrast or
    HSV jitter, JPEG re-compression at quality 40–100. Targets: ``image`` (H, W, 3) uint8 RGB.
    """
    import albumentations as A
    import cv2

    steps = [
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-10, 10), border_mode=cv2.BORDER_CONSTANT, p=0.3),
        A.GaussianBlur(blur_limit=(3, 7), p=0.1),
    ]
    if size:
        steps += [
            A.OneOf([A.LongestMaxSize(max_size=size, interpolation=i)
                     for i in (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)], p=1.0),
            A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0),
        ]
    steps += [
        A.OneOf([A.RandomBrightnessContrast(p=1.0), A.HueSaturationValue(p=1.0)], p=0.5),
        A.ImageCompression(quality_range=(40, 100), p=0.5),
    ]
    return A.Compose(steps, seed=seed)


def _worker() -> tuple[int, int]:
    wi = torch.utils.data.get_worker_info()
    return (wi.id, wi.num_workers) if wi is not None else (0, 1)


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python runs, unlike ``hash``)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


class FaceDataset(wds.DataPipeline):
    """A shard split as batches: a ``webdataset.DataPipeline`` (a torch ``IterableDataset``) built by
    :func:`make_dataset`; put it in a ``DataLoader(ds, batch_size=None, ...)`` (batches are made in the pipeline),
    call :meth:`set_epoch` before each pass, and move batches with :class:`facepipe.data.device.ToDevice`.

    Every stage is a method of this one picklable object (DataLoader workers may be spawned: macOS, Windows,
    Python >= 3.14 on Linux). Every random choice is seeded by (seed, rank, worker, epoch).

    Each batch: ``label`` (B,) int64, ``image_u8`` (B, H, W, 3) uint8 (``image_jpeg``, a list of encoded JPEG
    tensors, when decoding on the device), ``mask_u8`` (B, H, W) uint8 with ``masks``, each stored view
    (B, C, H, W) float16, and the lists of :data:`META_KEYS`. A clip set (``clips``): ``image_u8`` (B, T, H, W, 3),
    ``mask_u8`` (B, T, H, W), and the lists of :data:`CLIP_META_KEYS`.

    Attributes:
        cfg: the :class:`LoaderConfig`.
        shardset: the resolved shards.
        epoch: the epoch of the pass under way (as given to :meth:`set_epoch`).
        epoch_batches: batches per pass and rank (``None`` without an index or ``epoch_samples``); a resampled
            stream is endless: take this many (:class:`facepipe.data.FaceLoader` does).
        compute_views: views are computed on the device (else read from the shards).
        device_decode: JPEG crops are decoded on the device.
    """

    def __init__(self, cfg: LoaderConfig, shardset: ShardSet, *, rank: int, world_size: int, explicit_node: bool,
                 compute_views: bool, device_decode: bool, accept: dict[tuple[str, int], float] | None,
                 epoch_batches: int | None, clips: bool = False, plan: MixPlan | None = None) -> None:
        self.cfg, self.shardset, self.clips, self.plan = cfg, shardset, clips, plan
        self.rank, self.world_size, self.explicit_node = rank, world_size, explicit_node
        self.compute_views, self.device_decode, self.accept = compute_views, device_decode, accept
        self.epoch_batches = epoch_batches
        self.stored_views = () if compute_views else tuple(cfg.views)
        self.view_size = None if compute_views else (cfg.image_size or shardset.crop_size)
        self.epoch, self._generation, self._resume_at = 0, 0, (0, 0)
        # [epoch, generation (bumped by set_epoch), skipped samples per worker slot, resume position per worker slot
        # (samples consumed, outputs of the next delivered)], shared with the workers
        self._shared = torch.zeros(2 + 3 * _SLOTS, dtype=torch.int64).share_memory_()
        super().__init__(*self._stages())

    # -- epochs and error counts --
    def set_epoch(self, epoch: int, positions: dict[int, tuple[int, int]] | None = None) -> None:
        """Seed the next pass (shard order, resampling, thinning, shuffling, augmentation) with ``epoch`` and reset
        :attr:`errors`; call it before iterating (the workers read it when the pass starts).

        Args:
            epoch: the pass's epoch.
            positions: resume the pass: worker id -> (samples of its stream consumed, outputs of the next sample
                already delivered), as the batches' ``_position`` said; each worker replays its stream to there
                without decoding and goes on with the next sample.
        """
        self._shared[2:] = 0
        for w, (consumed, pending) in (positions or {}).items():
            base = 2 + _SLOTS + 2 * (int(w) % _SLOTS)
            self._shared[base], self._shared[base + 1] = int(consumed), int(pending)
        self._shared[1] += 1
        self._shared[0] = int(epoch)
        self.epoch = int(epoch)

    @property
    def errors(self) -> int:
        """Samples skipped by the handler since the last :meth:`set_epoch`, summed over workers (exact once the
        pass ends)."""
        return int(self._shared[2:].sum())

    def __iter__(self) -> Iterator[dict]:
        self.epoch, self._generation = int(self._shared[0]), int(self._shared[1])
        base = 2 + _SLOTS + 2 * (_worker()[0] % _SLOTS)
        self._resume_at = (int(self._shared[base]), int(self._shared[base + 1]))
        return super().__iter__()

    @property
    def _pass(self) -> int:
        """The 1-based pass number the seeds have always mixed in (epoch 0 is the first pass)."""
        return self.epoch + 1

    def _handle(self, exn: Exception) -> bool:
        h = self.cfg.handler
        if h == "raise":
            raise exn
        if h == "warn":
            log.warning("skipped a sample: %s", exn)
            keep = True
        else:
            keep = bool(h(exn))
        if keep and int(self._shared[1]) == self._generation:  # not a straggler of an abandoned pass
            self._shared[2 + _worker()[0] % _SLOTS] += 1
        return keep

    def _rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.cfg.seed, self.rank, _worker()[0], self._pass, salt])

    # -- stages --
    def _stages(self) -> list:
        cfg = self.cfg
        if self.plan is not None:
            stages: list = [self._mixed]
        elif cfg.resampled:
            stages = [self._resampled_shards]
        else:
            stages = [wds.SimpleShardList(list(self.shardset.urls))]
            if cfg.shuffle:
                stages.append(self._shard_order)
            stages.append(self._nodes)
        if self.plan is None:
            stages += [wds.split_by_worker, wds.tarfile_to_samples(handler=self._handle, select_files=self._wanted),
                       self._select]
        if cfg.shuffle and cfg.shuffle_buffer > 1:
            stages.append(self._shuffle)
        stages += [self._decode, wds.batched(cfg.batch_size, collation_fn=self._collate, partial=not cfg.drop_last)]
        return stages

    def _wanted(self, name: str) -> bool:
        """Skip tar members this loader does not use (stored views it was not asked for, masks)."""
        if name.endswith(".npy"):
            return name.rsplit(".", 2)[-2] in self.stored_views
        if name.endswith(".mask.png"):
            return self.cfg.masks
        return True

    def _shard_order(self, src: Iterator[dict]) -> Iterator[dict]:
        """The epoch's shard order: what ``wds.detshuffle(n, n, seed)`` gives on its pass ``epoch + 1``, for any
        epoch (detshuffle counts its own passes, which persistent workers and ``set_epoch`` would not match)."""
        n = len(self.shardset.urls)
        rng = random.Random()
        rng.seed(self.cfg.seed + self._pass)
        return wds.shuffle(n, initial=n, rng=rng)(src)

    def _nodes(self, src: Iterator) -> Iterator:
        if self.explicit_node:
            return islice(src, self.rank, None, self.world_size)
        return wds.split_by_node(src)

    def _mixed(self, src: Iterator | None = None) -> Iterator[dict]:
        """This (rank, worker)'s cell streams mixed by quota (:mod:`facepipe.data.mixer`)."""
        w, nw = _worker()
        streams = self.plan.streams(self.rank, self.world_size, w, nw, self.cfg.resampled)
        read = wds.tarfile_to_samples(handler=self._handle, select_files=self._wanted)
        return mix(streams, read, _seed(self.cfg.seed, self.rank, w, self._pass, 21), self.cfg.shuffle)

    def _resampled_shards(self, src: Iterator | None = None) -> Iterator[dict]:
        """Shards drawn with replacement, a new draw every pass (epoch), independently per rank and worker."""
        rng = random.Random(_seed(self.cfg.seed, self.rank, _worker()[0], self._pass, 11))
        urls = self.shardset.urls
        while True:
            yield {"url": urls[rng.randrange(len(urls))]}

    def _select(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = self._rng(1)
        for s in src:
            if self.accept is not None:
                try:
                    meta = json.loads(s["json"])
                    p = self.accept.get((meta["dataset"], int(meta["label"])), 1.0)
                except Exception as e:  # noqa: BLE001  a broken sample: let the decode stage report it
                    log.debug("cannot read metadata for thinning: %s", e)
                    p = 1.0
                if rng.random() >= p:
                    continue
            yield s

    def _shuffle(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = random.Random(_seed(self.cfg.seed, self.rank, _worker()[0], self._pass, 3))
        yield from wds.shuffle(self.cfg.shuffle_buffer, initial=min(self.cfg.shuffle_buffer, 100), rng=rng)(src)

    def _transform(self) -> Callable | None:
        """The per-sample image transform: the augmentation, else a resize to ``image_size``, else none."""
        cfg = self.cfg
        if cfg.augment is True:
            return default_augmentation(cfg.image_size, seed=int(self._rng(2).integers(2**31)))
        if callable(cfg.augment):
            return cfg.augment
        if cfg.image_size:
            import albumentations as A

            return A.Compose([A.Resize(cfg.image_size, cfg.image_size)])
        return None

    def _decode_clip(self, s: dict, t: Callable | None) -> dict:
        """A clip sample decoded, its frames (and masks) transformed with one draw of the parameters."""
        d = decode_clip_sample(s, mask=self.cfg.masks)
        if t is None:
            return d
        frames, n = d["frames"], len(d["frames"])
        t = _clip_transform(t, n, self.cfg.masks)
        args = {"image": frames[0], **{f"image{i}": frames[i] for i in range(1, n)}}
        if self.cfg.masks:
            args.update({"mask": d["masks"][0], **{f"mask{i}": d["masks"][i] for i in range(1, n)}})
        res = t(**args)
        d["frames"] = np.stack([res["image"]] + [res[f"image{i}"] for i in range(1, n)])
        if self.cfg.masks:
            d["masks"] = np.stack([res["mask"]] + [res[f"mask{i}"] for i in range(1, n)])
        return d

    def _decode_one(self, s: dict, t: Callable | None) -> dict:
        if self.clips:
            return self._decode_clip(s, t)
        masks, size = self.cfg.masks, self.cfg.image_size
        d = decode_sample(s, self.stored_views, mask=masks, image=not self.device_decode)
        if self.device_decode:
            if d["image_ext"] != "jpg":
                raise SchemaError(f"{s.get('__url__', '?')}: sample {d['key']}: decoding on the device "
                                  f"needs JPEG crops, this one is {d['image_ext']}")
            if masks and size and d["mask"].shape[0] != size:
                import cv2

                d["mask"] = cv2.resize(d["mask"], (size,) * 2, interpolation=cv2.INTER_LINEAR)
            return d
        return self._transformed(d, t)

    def _self_blend(self, s: dict, t: Callable | None, blender) -> list[dict]:
        """A real sample and/or its self-blended fake (:mod:`facepipe.data.sbi`), each transformed; other samples
        as they are."""
        d = decode_sample(s, self.stored_views, mask=self.cfg.masks)
        out = [d]
        if d["label"] == 0:
            lm = d["meta"].get("crop_landmarks")
            if lm is None:
                raise SchemaError(f"{s.get('__url__', '?')}: sample {d['key']} has no 68-point landmarks: sbi needs "
                                  "shards extracted with extract.landmarks68: true")
            sbi = self.cfg.sbi
            if sbi.mode == "pair" or blender.rng.random() < sbi.p:
                target, fake, m = blender(d["image"], np.asarray(lm))
                f = {**d, "image": fake, "label": 1,
                     "meta": {**d["meta"], "label": 1, "label_name": "fake", "label_source": "sbi"}}
                if self.cfg.masks:
                    f["mask"] = np.round(m * 255).astype(np.uint8)
                out = [{**d, "image": target}, f] if sbi.mode == "pair" else [f]
        return [self._transformed(x, t) for x in out]

    def _transformed(self, d: dict, t: Callable | None) -> dict:
        """``d``'s image (and mask) through the per-sample transform ``t`` (none: as it is)."""
        if t is not None:
            res = t(image=d["image"], mask=d["mask"]) if self.cfg.masks else t(image=d["image"])
            d["image"] = res["image"]
            if self.cfg.masks:
                d["mask"] = res["mask"]
        return d

    def _reseed(self, t: Callable | None, blender, i: int) -> None:
        """Seed the augmentation (an albumentations ``Compose``) and the self-blender for the ``i``-th sample of this
        worker's stream: the same draws whether the pass ran through or was resumed."""
        w = _worker()[0]
        if hasattr(t, "set_random_seed"):
            t.set_random_seed(_seed(self.cfg.seed, self.rank, w, self._pass, 5, i))
        if blender is not None:
            blender.reseed(_seed(self.cfg.seed, self.rank, w, self._pass, 6, i))

    def _decode(self, src: Iterator[dict]) -> Iterator[dict]:
        """Decoded samples, each tagged ``_pos`` = (its input's place in the stream, its place among that input's
        outputs, their number); a resumed pass skips the inputs before its position undecoded."""
        t = self._transform()
        blender = None
        if self.cfg.sbi is not None:
            from facepipe.data.sbi import SelfBlender

            blender = SelfBlender(0)
        skip_in, skip_out = self._resume_at
        for i, s in enumerate(src):
            if i < skip_in:
                continue
            self._reseed(t, blender, i)
            try:
                ds = self._self_blend(s, t, blender) if blender is not None else [self._decode_one(s, t)]
            except Exception as e:  # noqa: BLE001  the handler re-raises, skips (counted) or stops the pass
                if self._handle(e):
                    continue
                return
            for j, d in enumerate(ds):
                if i > skip_in or j >= skip_out:
                    d["_pos"] = (i, j, len(ds))
                    yield d

    def _collate(self, samples: list[dict]) -> dict[str, Any]:
        out = self._collate_clips(samples) if self.clips else self._collate_frames(samples)
        i, j, n = samples[-1]["_pos"]
        # (worker, samples of its stream consumed, outputs of the next one delivered) once this batch is consumed
        out["_position"] = (_worker()[0], i + 1, 0) if j + 1 == n else (_worker()[0], i, j + 1)
        return out

    def _collate_frames(self, samples: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"label": torch.tensor([s["label"] for s in samples], dtype=torch.long)}
        if self.device_decode:  # encoded JPEGs, decoded as one batch on the loader's device
            out["image_jpeg"] = [torch.frombuffer(bytearray(s["image_bytes"]), dtype=torch.uint8) for s in samples]
        else:
            out["image_u8"] = torch.from_numpy(np.stack([s["image"] for s in samples]))  # (B, H, W, 3) uint8
        if self.cfg.masks:
            out["mask_u8"] = torch.from_numpy(np.stack([s["mask"] for s in samples]))  # (B, H, W) uint8
        for k in META_KEYS:
            out[k] = _meta_tensor(k, [s["meta"].get(k) for s in samples])
        for v in self.stored_views:
            out[v] = torch.from_numpy(np.stack([s[v] for s in samples]).astype(np.float16))
        return out


    def _collate_clips(self, samples: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "image_u8": torch.from_numpy(np.stack([s["frames"] for s in samples])),  # (B, T, H, W, 3) uint8
        }
        if self.cfg.masks:
            out["mask_u8"] = torch.from_numpy(np.stack([s["masks"] for s in samples]))  # (B, T, H, W) uint8
        for k in CLIP_META_KEYS:
            out[k] = _meta_tensor(k, [s["meta"].get(k) for s in samples])
        return out


def _clip_transform(t: Callable, n: int, masks: bool) -> Callable:
    """``t`` applied with the same parameters to the ``n`` frames of a clip (and their masks): an albumentations
    ``Compose`` given ``image1 .. image{n-1}`` (and ``mask1 ..``) as additional targets.

    Raises:
        ConfigError: ``t`` is not an albumentations ``Compose`` (a plain callable cannot promise one draw per clip).
    """
    if not hasattr(t, "add_targets"):
        raise ConfigError("clips: augment must be True or an albumentations Compose (its additional targets apply "
                          "one draw of the parameters to every frame of a clip); got "
                          f"{type(t).__name__}")
    have = getattr(t, "additional_targets", {}) or {}
    want = {f"image{i}": "image" for i in range(1, n)}
    if masks:
        want.update({f"mask{i}": "mask" for i in range(1, n)})
    missing = {k: v for k, v in want.items() if k not in have}
    if missing:
        t.add_targets(missing)
    return t


# -- make_dataset: the checks and plans, one small function each --

def _node(cfg: LoaderConfig) -> tuple[int, int, bool]:
    """(rank, world_size, given explicitly): the options, else torchrun's environment / torch.distributed."""
    explicit = cfg.rank is not None or cfg.world_size is not None
    if explicit:
        rank, world_size = int(cfg.rank or 0), int(cfg.world_size or 1)
    else:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} not in [0, world_size={world_size})")
    return rank, world_size, explicit


def _check_shard_count(shardset: ShardSet, cfg: LoaderConfig, world_size: int, plan: MixPlan | None) -> None:
    n = len(shardset.urls) if plan is None else len(plan.shards)
    if cfg.resampled:
        return
    if n < world_size:
        raise ConfigError(
            f"{n} shard(s) for {world_size} rank(s): some ranks would read nothing in an epoch "
            "and a DDP job would hang; write more, smaller shards (shard.max_samples) or use resampled=True")
    if n < world_size * max(1, cfg.num_workers):
        log.warning("%d shard(s) for %d rank(s) x %d worker(s): some workers will idle; write smaller shards",
                    n, world_size, max(1, cfg.num_workers))
    if world_size > 1 and n % world_size:
        log.warning("%d shards over %d ranks: ranks get unequal sample counts per epoch; with DDP prefer "
                    "resampled=True (fixed epoch length per rank)", n, world_size)


def _stored_views_problem(cfg: LoaderConfig, shardset: ShardSet) -> str | None:
    """Why the shards' stored views are not what computing them would give (``None``: they are)."""
    views = cfg.views
    if not all(v in shardset.views for v in views):
        return f"the shards store {list(shardset.views)}"
    params = json.loads(json.dumps(cfg.freq.view_params()))
    if views and shardset.view_params is not None and shardset.view_params != params:
        return (f"the stored views were computed with freq parameters {shardset.view_params}, not "
                f"{cfg.freq.view_params()}")
    if views and cfg.image_size and shardset.crop_size and cfg.image_size != shardset.crop_size:
        return f"the stored views are {shardset.crop_size} px, the images will be {cfg.image_size} px"
    return None


def _compute_views(cfg: LoaderConfig, shardset: ShardSet) -> bool:
    """Whether views are computed on the device (``view_source``; ``auto``: unless the stored ones are exact)."""
    problem = _stored_views_problem(cfg, shardset)
    if cfg.view_source == "stored" and cfg.views and (problem or cfg.augment):
        raise ConfigError(f"views {list(cfg.views)} asked for from the shards, but "
                          + (problem or "augmentation changes the images after the views were stored"))
    return cfg.view_source == "compute" or (cfg.view_source == "auto" and (bool(cfg.augment) or problem is not None))


def _device_decode(cfg: LoaderConfig, shardset: ShardSet, compute: bool) -> bool:
    """Whether JPEG crops are decoded on the device (``decode``; ``auto``: on CUDA when nothing prevents it)."""
    if cfg.decode == "device":
        if shardset.sample_kind == "clip":
            raise ConfigError("decode='device' reads frame sets; clip sets decode in the workers")
        if cfg.augment:
            raise ConfigError("decode='device' cannot augment (albumentations runs on the CPU in the workers); "
                              "use decode='workers' or augment=False")
        if shardset.image_format not in (None, "jpg"):
            raise ConfigError(f"decode='device' needs JPEG crops; the index records {shardset.image_format!r} "
                              "(write them with extract.output.format: jpg)")
        if cfg.views and not compute:
            raise ConfigError("decode='device' with stored views: use view_source='compute'")
        return True
    return (cfg.decode == "auto" and torch.device(cfg.device).type == "cuda" and not cfg.augment
            and shardset.image_format == "jpg" and compute and shardset.sample_kind != "clip")


def _clips(cfg: LoaderConfig, shardset: ShardSet) -> bool:
    """Whether the set is read as clips: ``clips`` given, checked against the index's ``sample_kind``, else that."""
    kind = shardset.sample_kind
    if cfg.clips and kind == "frame":
        raise ConfigError("clips=True, but this shard set holds frame samples: extract with "
                          "extract.sampling.mode clips (facepipe extract --sampling clips) and shard again")
    if cfg.clips is False and kind == "clip":
        raise ConfigError(f"clips=False, but this shard set holds clips of {shardset.clip_length} frames "
                          "(sampling.mode clips): read it with clips=True")
    return bool(cfg.clips) if cfg.clips is not None else kind == "clip"


def _acceptance(cells: dict[tuple[str, int], float], weights: dict[str, float] | None,
                balance: bool) -> dict[tuple[str, int], float]:
    """Acceptance probability per (dataset, label) so the kept stream follows the target shares. Faces of undecided
    label (-1) are never accepted: the loss leaves them out (:func:`facepipe.train.engine.certain`)."""
    undecided = {c: 0.0 for c in cells if c[1] < 0}
    cells = {c: n for c, n in cells.items() if c[1] >= 0}
    if not cells:
        return undecided
    datasets = sorted({d for d, _ in cells})
    w = {d: float((weights or {}).get(d, 1.0 if not weights else 0.0)) for d in datasets}
    if weights:
        unknown = set(weights) - set(datasets)
        if unknown:
            raise ConfigError(f"dataset_weights names {sorted(unknown)}, shards hold {datasets}")
    total_w = sum(w.values())
    target = {}
    for (d, lab), n in cells.items():
        nd = sum(m for (dd, _), m in cells.items() if dd == d)
        labels_here = sum(1 for (dd, _) in cells if dd == d)
        share = (1.0 / labels_here) if balance else n / nd
        target[(d, lab)] = w[d] / total_w * share
    total = sum(cells.values())
    ratio = {c: target[c] / (cells[c] / total) if cells[c] else 0.0 for c in cells}
    top = max(ratio.values())
    return {**{c: r / top for c, r in ratio.items()}, **undecided}


def _mix_plan(cfg: LoaderConfig, shardset: ShardSet) -> MixPlan | None:
    """The cell mixer's plan on a ``shard.layout: cells`` set (every shard one (dataset, label) cell), else ``None``."""
    if shardset.cell_of_shard() is None:
        return None
    reals_only = cfg.sbi is not None and cfg.sbi.reals_only
    return MixPlan.build(shardset.urls, shardset.shard_cells, cfg.dataset_weights, cfg.class_balance, reals_only,
                         cfg.epoch_samples)


def _thinning(cfg: LoaderConfig, shardset: ShardSet, plan: MixPlan | None) -> dict[tuple[str, int], float] | None:
    reals_only = cfg.sbi is not None and cfg.sbi.reals_only
    if plan is not None or not (cfg.dataset_weights or cfg.class_balance or reals_only):
        return None
    if shardset.cells is None:
        raise ConfigError("dataset_weights / class_balance / sbi.reals_only need the shard index's counts: pass "
                          "index.json")
    log.info("dataset_weights / class_balance / sbi.reals_only on a shard set of mixed shards: samples are read and "
             "dropped (rejection), and no share can rise above its own; write the set with shard.layout: cells for "
             "the cell mixer")
    if not reals_only:
        return _acceptance(shardset.cells, cfg.dataset_weights, cfg.class_balance)
    reals = {c: n for c, n in shardset.cells.items() if c[1] == 0}  # the set's own fakes left out
    accept = (_acceptance(reals, cfg.dataset_weights, False) if cfg.dataset_weights else {c: 1.0 for c in reals})
    return {**{c: 0.0 for c in shardset.cells}, **accept}


def _check_sbi(cfg: LoaderConfig, shardset: ShardSet, clips: bool, device_decode: bool) -> None:
    """SBI needs frame samples decoded in the workers, with 68 (or 81) landmarks per face (when the index says)."""
    if cfg.sbi is None:
        return
    if clips or device_decode:
        raise ConfigError("sbi blends single frames in the loader's workers: not with clip sets or decode='device'")
    if shardset.sample_kind is not None and shardset.crop_landmarks not in (68, 81):
        raise ConfigError("sbi needs 68-point landmarks per face and this shard set has none: extract with "
                          "extract.landmarks68: true (pip install 'facepipe[deepfakebench]') and shard again")


def _batches(cfg: LoaderConfig, samples: float) -> int:
    return int(samples // cfg.batch_size) if cfg.drop_last else int(np.ceil(samples / cfg.batch_size))


def _mixed_epoch_batches(cfg: LoaderConfig, plan: MixPlan, rank: int, world_size: int) -> int:
    """Batches per pass of rank ``rank`` under the cell mixer: exact per worker (each batches its own quotas), SBI
    pairs doubling the real cells."""
    pair = cfg.sbi is not None and cfg.sbi.mode == "pair"
    workers = max(1, cfg.num_workers)
    return sum(_batches(cfg, sum(s.quota * (2 if pair and s.cell[1] == 0 else 1)
                                 for s in plan.streams(rank, world_size, w, workers, cfg.resampled)))
               for w in range(workers))


def _epoch_batches(cfg: LoaderConfig, shardset: ShardSet, accept: dict | None, world_size: int) -> int | None:
    total = cfg.epoch_samples or shardset.samples
    if total is None:
        if cfg.resampled:
            raise ConfigError("resampled=True needs epoch_samples (or an index to take the split size from)")
        return None
    per_rank = total / world_size
    pair = cfg.sbi is not None and cfg.sbi.mode == "pair"
    if accept is not None or pair:
        cells = shardset.cells or {("", 0): 1}
        acc = accept or {c: 1.0 for c in cells}
        # SBI pairs: every accepted real sample comes with its self-blended fake
        per_rank *= sum(cells[c] * acc[c] * (2 if pair and c[1] == 0 else 1) for c in cells) / max(
            1, sum(cells.values()))
    return _batches(cfg, per_rank)


def make_dataset(source: str | os.PathLike | Sequence[str], split: str = "train",
                 cfg: LoaderConfig | None = None) -> FaceDataset:
    """One split of a shard set as a webdataset pipeline of batches (a torch ``IterableDataset``).

    Args:
        source: the shard index (``index.json``, its folder, or a URL to it), a brace pattern
            (``/data/train-{000000..000099}.tar``) or a list of shard URLs.
        split: split to read from an index.
        cfg: the options (:class:`LoaderConfig`; defaults when ``None``).

    A clip set (``sample_kind: clip`` in the index, or ``cfg.clips``) gives clip batches: see
    :attr:`LoaderConfig.clips`.

    Returns:
        A :class:`FaceDataset`. Use it as::

            ds = make_dataset("data/shards", "train", LoaderConfig(batch_size=64, augment=True))
            dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=4, persistent_workers=True)
            to_device = ToDevice(ds)
            for epoch in range(n):
                ds.set_epoch(epoch)
                for batch in dl:
                    batch = to_device(batch)  # image (B, 3, H, W) float32 normalised, views, label on the device

    Raises:
        ShardIndexError / InputError: see :func:`facepipe.data.index.resolve_shards`.
        ConfigError: bad options, e.g. fewer shards than ranks (a rank would read nothing and a DDP
            job would hang), thinning without an index, stored views that differ from computed ones.
    """
    cfg = cfg if cfg is not None else LoaderConfig()
    shardset = resolve_shards(source, split)
    rank, world_size, explicit = _node(cfg)
    plan = _mix_plan(cfg, shardset)
    _check_shard_count(shardset, cfg, world_size, plan)
    compute = _compute_views(cfg, shardset)
    device_decode = _device_decode(cfg, shardset, compute)
    accept = _thinning(cfg, shardset, plan)
    _check_sbi(cfg, shardset, _clips(cfg, shardset), device_decode)
    batches = (_epoch_batches(cfg, shardset, accept, world_size) if plan is None
               else _mixed_epoch_batches(cfg, plan, rank, world_size))
    return FaceDataset(cfg, shardset, rank=rank, world_size=world_size, explicit_node=explicit,
                       compute_views=compute, device_decode=device_decode, accept=accept,
                       epoch_batches=batches, clips=_clips(cfg, shardset), plan=plan)


__all__ = ["CLIP_META_KEYS", "IMAGENET_MEAN", "IMAGENET_STD", "META_KEYS", "FaceDataset", "LoaderConfig",
           "default_augmentation", "loader_config", "make_dataset"]
