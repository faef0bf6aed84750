"""``make_loader``: stream facepipe shards into a PyTorch training loop (one GPU, many, or the CPU).

The pipeline is a list of webdataset stages::

    shard list (index / URLs / brace pattern; epoch-wise shuffled, or resampled without epochs)
      -> split_by_node (torchrun ranks) -> split_by_worker (DataLoader workers)
      -> tar members -> samples  [handler]
      -> dataset-weight / class-balance thinning (seeded rejection sampling from the index's counts)
      -> sample shuffle buffer
      -> decode + check schema + albumentations augmentation (seeded per rank, worker and epoch)  [handler]
      -> batches of uint8 images + labels + metadata (+ stored views)
    then, in the training process: images to ``device``, frequency views computed there by
    :mod:`facepipe.freq.torch` (after augmentation), normalisation.

Handlers: ``warn`` (log the shard and key, skip the sample, count it in ``loader.errors``) or
``raise``. Shards are opened with ``webdataset.gopen``: local paths, ``http(s)://``, ``s3://`` (any
S3-compatible store; :mod:`facepipe.data.storage`), ``gs://``, ``hf://`` and ``pipe:COMMAND``.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from facepipe.data import storage
from facepipe.data.schema import SCHEMA_VERSION, SchemaError, decode_sample
from facepipe.errors import ConfigError, InputError
from facepipe.freq.config import FreqConfig

log = logging.getLogger(__name__)
storage.register_schemes()  # s3:// (and gs:// with gcsfs) in webdataset's gopen, in every worker that imports this

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
META_KEYS = ("key", "dataset", "video_id", "method", "split", "frame_index", "track_id", "video_label", "label_source",
             "manipulation_score", "landmarks", "affine", "crop_size")


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs of one split and what the index says about them (counts are ``None`` without an index)."""

    urls: tuple[str, ...]
    samples: int | None
    cells: dict[tuple[str, int], int] | None  # (dataset, label) -> samples
    views: tuple[str, ...]
    view_params: dict | None = None  # the freq parameters the stored views were computed with
    crop_size: int | None = None
    image_format: str | None = None  # png | jpg | mixed (None: not recorded)


def _read_text(url: str) -> str:
    if storage.is_remote(url):
        return storage.read_text(url)
    import webdataset as wds

    with wds.gopen(url, "rb") as f:
        return f.read().decode()


def resolve_shards(source: str | os.PathLike | Sequence[str], split: str | None = "train") -> ShardSet:
    """Turn an index (file, folder or URL), a brace pattern or a list of URLs into a :class:`ShardSet`.

    Raises:
        InputError: the index is missing or unreadable, the split is unknown or has no shards, or the
            source names no shard at all.
        SchemaError: the index was written with another schema version.
    """
    import braceexpand

    if isinstance(source, (list, tuple)):
        urls = tuple(str(u) for u in source)
        if not urls:
            raise InputError("make_loader: empty list of shard URLs")
        return ShardSet(urls, None, None, ())
    src = str(source)
    if os.path.isdir(src):
        src = os.path.join(src, "index.json")
    elif storage.is_remote(src) and "{" not in src and not src.endswith((".json", ".tar")):
        src = storage.join(src, "index.json")  # s3://bucket/prefix: the shard folder's index
    if src.endswith(".json"):
        try:
            index = json.loads(_read_text(src))
        except (OSError, ValueError) as e:
            raise InputError(f"{src}: cannot read shard index: {e}") from None
        if index.get("schema_version") != SCHEMA_VERSION:
            raise SchemaError(f"{src}: shards have schema version {index.get('schema_version')}, this facepipe "
                              f"reads {SCHEMA_VERSION}; rebuild them with 'facepipe shard'")
        if split not in index.get("splits", {}):
            raise InputError(f"{src}: no split '{split}' (have {sorted(index.get('splits', {}))})")
        info = index["splits"][split]
        if not info["shards"]:
            raise InputError(f"{src}: split '{split}' has no shards (0 samples)")
        base = src.rsplit("/", 1)[0] if "/" in src else "."
        urls = tuple(f"{base}/{s['url']}" for s in info["shards"])
        cells: Counter = Counter()
        for s in info["shards"]:
            for cell, n in s["cells"].items():
                d, lab = cell.rsplit(":", 1)
                cells[(d, 1 if lab == "fake" else 0)] += n
        return ShardSet(urls, int(info["samples"]), dict(cells), tuple(index.get("views", ())),
                        index.get("view_params"), index.get("crop_size"), index.get("image_format"))
    remote = "://" in src or src.startswith("pipe:")
    if not remote and "{" not in src and not os.path.exists(src):
        raise InputError(f"{src}: no such shard, shard folder or index")
    urls = tuple(braceexpand.braceexpand(src))
    return ShardSet(urls, None, None, ())


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


class _Counts:
    """Per-worker count of skipped samples (read back through the batches and a final stats item)."""

    def __init__(self) -> None:
        self.n = 0


def _worker() -> tuple[int, int]:
    wi = torch.utils.data.get_worker_info()
    return (wi.id, wi.num_workers) if wi is not None else (0, 1)


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python runs, unlike ``hash``)."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, np.uint32).view(np.uint64)[0]
               >> np.uint64(1))


class _Pipeline:
    """The stages as methods of one picklable object (DataLoader workers may be spawned: macOS, Windows,
    Python >= 3.14 on Linux). Every random choice is seeded by (seed, rank, worker, epoch)."""

    def __init__(self, shardset: ShardSet, batch_size: int, shuffle: bool, shuffle_buffer: int,
                 resampled: bool, seed: int, augment, image_size: int | None, stored_views: tuple[str, ...],
                 accept: dict[tuple[str, int], float] | None, handler: str, rank: int, world_size: int,
                 explicit_node: bool, drop_last: bool, masks: bool, device_decode: bool = False) -> None:
        self.__dict__.update(locals())
        del self.__dict__["self"]
        self.epoch = 0
        self.counts = _Counts()

    # -- handlers --
    def _handle(self, exn: Exception) -> bool:
        if self.handler == "raise":
            raise exn
        self.counts.n += 1
        log.warning("skipped a sample: %s", exn)
        return True

    def _rng(self, salt: int) -> np.random.Generator:
        w, _ = _worker()
        return np.random.default_rng([self.seed, self.rank, w, self.epoch, salt])

    # -- stages --
    def _wanted(self, name: str) -> bool:
        """Skip tar members this loader does not use (stored views it was not asked for, masks)."""
        if name.endswith(".npy"):
            return name.rsplit(".", 2)[-2] in self.stored_views
        if name.endswith(".mask.png"):
            return self.masks
        return True

    def _nodes(self, src: Iterator) -> Iterator:
        if self.explicit_node:
            return islice(src, self.rank, None, self.world_size)
        import webdataset as wds

        return wds.split_by_node(src)

    def _resampled_shards(self, src: Iterator | None = None) -> Iterator[dict]:
        """Shards drawn with replacement, a new draw every pass (epoch), independently per rank and worker."""
        rng = random.Random(_seed(self.seed, self.rank, _worker()[0], self.epoch, 11))
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
        import webdataset as wds

        rng = random.Random(_seed(self.seed, self.rank, _worker()[0], self.epoch, 3))
        yield from wds.shuffle(self.shuffle_buffer, initial=min(self.shuffle_buffer, 100), rng=rng)(src)

    def _decode(self, src: Iterator[dict]) -> Iterator[dict]:
        w, _ = _worker()
        aug = None
        if self.augment is True:
            aug = default_augmentation(self.image_size, seed=int(self._rng(2).integers(2**31)))
        elif callable(self.augment):
            aug = self.augment
        resize = None
        if aug is None and self.image_size:
            import albumentations as A

            resize = A.Resize(self.image_size, self.image_size)
        for s in src:
            try:
                d = decode_sample(s, self.stored_views, mask=self.masks, image=not self.device_decode)
                if self.device_decode:
                    if d["image_ext"] != "jpg":
                        raise SchemaError(f"{s.get('__url__', '?')}: sample {d['key']}: decoding on the device "
                                          f"needs JPEG crops, this one is {d['image_ext']}")
                    if self.masks and self.image_size and d["mask"].shape[0] != self.image_size:
                        import cv2

                        d["mask"] = cv2.resize(d["mask"], (self.image_size,) * 2, interpolation=cv2.INTER_LINEAR)
                    d["_worker"] = (w, self.counts)
                    yield d
                    continue
                t = aug or resize
                if t is not None:
                    res = t(image=d["image"], mask=d["mask"]) if self.masks else t(image=d["image"])
                    d["image"] = res["image"]
                    if self.masks:
                        d["mask"] = res["mask"]
                d["_worker"] = (w, self.counts)
                yield d
            except Exception as e:  # noqa: BLE001  under 'raise' _handle re-raises; under 'warn' it counts, skips
                if self._handle(e):
                    continue

    def _collate(self, samples: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"label": torch.tensor([s["label"] for s in samples], dtype=torch.long)}
        if self.device_decode:  # encoded JPEGs, decoded as one batch on the loader's device
            out["image_jpeg"] = [torch.frombuffer(bytearray(s["image_bytes"]), dtype=torch.uint8) for s in samples]
        else:
            out["image_u8"] = torch.from_numpy(np.stack([s["image"] for s in samples]))  # (B, H, W, 3) uint8
        if self.masks:
            out["mask_u8"] = torch.from_numpy(np.stack([s["mask"] for s in samples]))  # (B, H, W) uint8
        for k in META_KEYS:
            out[k] = [s["meta"].get(k) for s in samples]
        for v in self.stored_views:
            out[v] = torch.from_numpy(np.stack([s[v] for s in samples]).astype(np.float16))
        w, counts = samples[-1]["_worker"]
        out["_errors"] = (w, counts.n)
        return out

    def _tail(self, src: Iterator[dict]) -> Iterator[dict]:
        """After a worker's last batch: one stats item with its final skip count (exact counts)."""
        yield from src
        yield {"_final_errors": (_worker()[0], self.counts.n)}

    def build(self):
        import webdataset as wds

        h = self._handle
        stages: list = []
        if self.resampled:
            stages.append(self._resampled_shards)
        else:
            stages.append(wds.SimpleShardList(list(self.shardset.urls)))
            if self.shuffle:
                stages.append(wds.detshuffle(bufsize=len(self.shardset.urls), initial=len(self.shardset.urls),
                                             seed=self.seed, epoch=self.epoch - 1))
            stages.append(self._nodes)
        stages.append(wds.split_by_worker)
        stages.append(wds.tarfile_to_samples(handler=h, select_files=self._wanted))
        stages.append(self._select)
        if self.shuffle and self.shuffle_buffer > 1:
            stages.append(self._shuffle)
        stages.append(self._decode)
        stages.append(wds.batched(self.batch_size, collation_fn=self._collate, partial=not self.drop_last))
        stages.append(self._tail)
        return wds.DataPipeline(*stages)


def _as_is(batch: dict) -> dict:
    """The DataLoader's collate function: batches are built in the pipeline (its default would walk every
    nested metadata list of every batch)."""
    return batch


class FaceLoader:
    """Iterable of training batches (see :func:`make_loader`); one pass = one epoch.

    Attributes:
        shardset: the resolved shards.
        errors: samples skipped by the ``warn`` handler in the last pass (summed over workers; exact once
            the pass ends).
        epoch: incremented at the start of every pass; seeds shard order, resampling, shuffling and
            augmentation.
    """

    def __init__(self, pipe: _Pipeline, num_workers: int, device: torch.device, views: tuple[str, ...],
                 compute_views: bool, freq_cfg: FreqConfig, mean, std, epoch_batches: int | None,
                 view_size: int | None, mp_context: str | None = None) -> None:
        self._pipe = pipe
        self.mp_context = mp_context
        self.num_workers = num_workers
        self.device = device
        self.views = views
        self.compute_views = compute_views
        self.freq_cfg = freq_cfg
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = -self.mean / self.std
        self.epoch_batches = epoch_batches
        self.view_size = view_size
        self.shardset = pipe.shardset
        self.errors = 0
        self.epoch = 0

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("length unknown: give epoch_samples, or build the shards with an index")
        return self.epoch_batches

    def views_of(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loader's views of a batch of *normalised* images, computed as for its batches.

        Used by test-time augmentation: flip the image, then recompute every view from it (spectral
        views such as ``dct`` or ``fft`` must not be flipped themselves).

        Args:
            image: (B, 3, H, W) float, normalised with this loader's mean and std.

        Returns:
            view name -> (B, C', H', W') float32.
        """
        from facepipe.freq import compute_views_torch

        return compute_views_torch(self.views, (image * self.std + self.mean).float(), self.freq_cfg)

    def _images(self, b: dict) -> torch.Tensor:
        """The batch's images as (B, 3, H, W) float32 in [0, 255] on the device (one copy out of uint8)."""
        if "image_jpeg" in b:  # nvJPEG on CUDA (libjpeg-turbo on the CPU), the whole batch in one call
            import warnings

            with warnings.catch_warnings():  # torchvision >= 0.29 points to torchcodec, which its API still equals
                warnings.simplefilter("ignore", DeprecationWarning)
                from torchvision.io import ImageReadMode, decode_jpeg

                imgs = decode_jpeg(b.pop("image_jpeg"), mode=ImageReadMode.RGB, device=self.device)
            side = self._pipe.image_size
            out = torch.empty((len(imgs), 3, side or imgs[0].shape[1], side or imgs[0].shape[2]), device=self.device)
            for i, im in enumerate(imgs):
                if im.shape[1:] != out.shape[2:]:
                    im = torch.nn.functional.interpolate(im[None].float(), size=tuple(out.shape[2:]), mode="bilinear",
                                                         antialias=True, align_corners=False)[0].clamp_(0, 255)
                out[i].copy_(im)
            return out
        u8 = b.pop("image_u8").to(self.device, non_blocking=True)  # (B, H, W, 3) uint8
        out = torch.empty((u8.shape[0], 3, u8.shape[1], u8.shape[2]), device=self.device)
        return out.copy_(u8.permute(0, 3, 1, 2))

    def _to_device(self, b: dict) -> dict:
        from facepipe.freq import compute_views_torch

        x = self._images(b)
        need01 = self.compute_views and bool(self.views)
        if need01:
            x.div_(255.0)
        if self.compute_views and self.views:
            b.update(compute_views_torch(self.views, x, self.freq_cfg))
        else:
            for v in self.views:
                t = b[v].to(self.device, non_blocking=True).float()
                if self.view_size and t.shape[-1] != self.view_size and v != "block_dct":
                    raise ConfigError(f"stored view {v} is {tuple(t.shape[-2:])}, the images {self.view_size}")
                b[v] = t
        if "mask_u8" in b:
            b["mask"] = b.pop("mask_u8").to(self.device, non_blocking=True).unsqueeze(1).float().div_(255.0)
        if need01:  # views above were computed from the [0, 1] image before this
            b["image"] = x.sub_(self.mean).div_(self.std)
        else:  # (x / 255 - mean) / std in two passes
            b["image"] = x.mul_(self._scale).add_(self._shift)
        b["label"] = b["label"].to(self.device, non_blocking=True)
        return b

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        self.epoch += 1
        self._pipe.epoch = self.epoch
        self._pipe.counts = _Counts()
        loader = wds.WebLoader(self._pipe.build(), batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                               pin_memory=self.device.type == "cuda", persistent_workers=False,
                               multiprocessing_context=self.mp_context if self.num_workers else None)
        if self.epoch_batches is not None and self._pipe.resampled:
            loader = loader.with_epoch(self.epoch_batches)
        seen: dict[int, int] = {}
        for b in loader:
            if "_final_errors" in b:
                w, n = b["_final_errors"]
                seen[w] = n
                self.errors = sum(seen.values())
                continue
            w, n = b.pop("_errors")
            seen[w] = n
            self.errors = sum(seen.values())
            yield self._to_device(b)


def make_loader(
    source: str | os.PathLike | Sequence[str],
    split: str = "train",
    batch_size: int = 32,
    num_workers: int = 4,
    *,
    shuffle: bool = True,
    shuffle_buffer: int = 2000,
    resampled: bool = False,
    epoch_samples: int | None = None,
    seed: int = 0,
    augment: bool | Callable = False,
    image_size: int | None = None,
    views: Sequence[str] = (),
    view_source: str = "auto",
    freq: FreqConfig | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: str | torch.device = "cpu",
    dataset_weights: dict[str, float] | None = None,
    class_balance: bool = False,
    handler: str = "warn",
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    masks: bool = False,
    multiprocessing_context: str | None = None,
    decode: str = "auto",
) -> FaceLoader:
    """Stream facepipe shards as training batches.

    Args:
        source: the shard index (``index.json``, its folder, or a URL to it), a brace pattern
            (``/data/train-{000000..000099}.tar``) or a list of shard URLs.
        split: split to read from an index.
        batch_size: samples per batch.
        num_workers: DataLoader worker processes (0 = in this process).
        shuffle: shuffle shard order per epoch and samples in a buffer of ``shuffle_buffer``.
        resampled: draw shards with replacement forever (no epochs); each pass then stops after
            ``epoch_samples`` samples (default: the split's size from the index) per rank.
        epoch_samples: samples per pass (resampled mode) across all ranks.
        seed: seeds shard order, shuffle buffer, thinning and augmentation (mixed with rank, worker, epoch).
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
            needs the index's counts.
        class_balance: equalise real and fake within each dataset (seeded rejection sampling).
        handler: ``warn`` (skip and count broken samples/shards) or ``raise``.
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

    Returns:
        A :class:`FaceLoader`; each batch is a dict with ``image`` (B, 3, H, W) float32 normalised,
        ``label`` (B,) int64 (the face's label: 0 real, 1 fake), every view in ``views`` (B, C', H', W')
        float32, and lists ``key``, ``dataset``, ``video_id``, ``method``, ``split``, ``frame_index``,
        ``track_id``, ``video_label``, ``label_source``, ``manipulation_score``, ``landmarks`` (5 x,y points in
        source-frame pixels), ``affine`` (the 2x3 source -> crop matrix) and ``crop_size`` (the stored crop's side;
        the batch's images are resized from it to ``image_size``).

    Raises:
        InputError / SchemaError: see :func:`resolve_shards`.
        ConfigError: bad options, e.g. fewer shards than ranks (a rank would read nothing and a DDP
            job would hang), thinning without an index, unknown views or handler.
    """
    from facepipe.freq import VIEWS

    if handler not in ("warn", "raise"):
        raise ConfigError(f"handler must be 'warn' or 'raise', got {handler!r}")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise ConfigError(f"unknown views {bad}; known: {list(VIEWS)}")
    shardset = resolve_shards(source, split)
    explicit = rank is not None or world_size is not None
    if explicit:
        rank, world_size = int(rank or 0), int(world_size or 1)
    else:
        import webdataset as wds

        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} not in [0, world_size={world_size})")
    if not resampled and len(shardset.urls) < world_size:
        raise ConfigError(
            f"{len(shardset.urls)} shard(s) for {world_size} rank(s): some ranks would read nothing in an epoch "
            "and a DDP job would hang; write more, smaller shards (shard.max_samples) or use resampled=True")
    if not resampled and len(shardset.urls) < world_size * max(1, num_workers):
        log.warning("%d shard(s) for %d rank(s) x %d worker(s): some workers will idle; write smaller shards",
                    len(shardset.urls), world_size, max(1, num_workers))
    if not resampled and world_size > 1 and len(shardset.urls) % world_size:
        log.warning("%d shards over %d ranks: ranks get unequal sample counts per epoch; with DDP prefer "
                    "resampled=True (fixed epoch length per rank)", len(shardset.urls), world_size)
    if view_source not in ("auto", "compute", "stored"):
        raise ConfigError(f"view_source must be auto, compute or stored, got {view_source!r}")
    freq = freq or FreqConfig()
    stored_problem = None
    if not all(v in shardset.views for v in views):
        stored_problem = f"the shards store {list(shardset.views)}"
    elif views and shardset.view_params is not None and shardset.view_params != json.loads(json.dumps(
            freq.view_params())):
        stored_problem = (f"the stored views were computed with freq parameters {shardset.view_params}, not "
                          f"{freq.view_params()}")
    elif views and image_size and shardset.crop_size and image_size != shardset.crop_size:
        stored_problem = f"the stored views are {shardset.crop_size} px, the images will be {image_size} px"
    if view_source == "stored" and views and (stored_problem or augment):
        raise ConfigError(f"views {list(views)} asked for from the shards, but "
                          + (stored_problem or "augmentation changes the images after the views were stored"))
    compute = view_source == "compute" or (view_source == "auto" and (bool(augment) or stored_problem is not None))
    if decode not in ("auto", "workers", "device"):
        raise ConfigError(f"decode must be auto, workers or device, got {decode!r}")
    if decode == "device":
        if augment:
            raise ConfigError("decode='device' cannot augment (albumentations runs on the CPU in the workers); "
                              "use decode='workers' or augment=False")
        if shardset.image_format not in (None, "jpg"):
            raise ConfigError(f"decode='device' needs JPEG crops; the index records {shardset.image_format!r} "
                              "(write them with extract.output.format: jpg)")
        if views and not compute:
            raise ConfigError("decode='device' with stored views: use view_source='compute'")
    device_decode = decode == "device" or (decode == "auto" and torch.device(device).type == "cuda" and not augment
                                           and shardset.image_format == "jpg" and compute)
    accept = None
    if dataset_weights or class_balance:
        if shardset.cells is None:
            raise ConfigError("dataset_weights / class_balance need the shard index's counts: pass index.json")
        accept = _acceptance(shardset.cells, dataset_weights, class_balance)
    total = epoch_samples or shardset.samples
    epoch_batches = None
    if total is not None:
        per_rank = total / world_size
        if accept is not None:
            per_rank *= sum(shardset.cells[c] * accept[c] for c in shardset.cells) / max(1, sum(shardset.cells.values()))
        epoch_batches = int(per_rank // batch_size) if drop_last else int(np.ceil(per_rank / batch_size))
    if resampled and epoch_batches is None:
        raise ConfigError("resampled=True needs epoch_samples (or an index to take the split size from)")
    pipe = _Pipeline(shardset, batch_size, shuffle, shuffle_buffer, resampled, seed, augment, image_size,
                     () if compute else tuple(views), accept, handler, rank, world_size, explicit, drop_last, masks,
                     device_decode)
    return FaceLoader(pipe, num_workers, torch.device(device), tuple(views), compute, freq, mean, std, epoch_batches,
                      None if compute else (image_size or shardset.crop_size), multiprocessing_context)


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


__all__ = ["FaceLoader", "ShardSet", "default_augmentation", "make_loader", "resolve_shards"]
