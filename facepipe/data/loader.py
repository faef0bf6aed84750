"""``make_loader``: stream facepipe shards into a PyTorch training loop (one GPU, many, or the CPU).

A thin layer over the pieces, each usable on its own:

- :mod:`facepipe.data.index`: :func:`~facepipe.data.index.read_index` and the shard set of a split;
- :mod:`facepipe.data.pipeline`: :class:`~facepipe.data.pipeline.LoaderConfig` and
  :func:`~facepipe.data.pipeline.make_dataset`, the webdataset pipeline (an ``IterableDataset``) of batches;
- :mod:`facepipe.data.device`: :class:`~facepipe.data.device.ToDevice`, batches to the device (views, normalisation).

:func:`make_loader` builds a :class:`LoaderConfig` from its keyword arguments, the dataset, and one torch
``DataLoader`` with persistent workers that serves every pass: each pass calls ``set_epoch`` (shuffle, resampling
and augmentation seeds) instead of building a new pipeline and new workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from itertools import islice
from typing import Callable, Iterator, Sequence

import torch

from facepipe.config import validate_section
from facepipe.data.device import ToDevice
from facepipe.data.index import ShardSet, read_index, resolve_shards
from facepipe.data.pipeline import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    META_KEYS,
    FaceDataset,
    LoaderConfig,
    _acceptance,
    default_augmentation,
    make_dataset,
)
from facepipe.data.sbi import SBIConfig
from facepipe.errors import ConfigError, FacepipeError
from facepipe.freq.config import FreqConfig
from facepipe.ids import FACE_LABEL_NAMES

log = logging.getLogger(__name__)
STATE_VERSION = 1


def _as_is(batch: dict) -> dict:
    """The DataLoader's collate function: batches are built in the pipeline (its default would walk every
    nested metadata list of every batch)."""
    return batch


class FaceLoader:
    """Iterable of training batches (see :func:`make_loader`); one pass = one epoch.

    One :class:`~facepipe.data.pipeline.FaceDataset` and one ``DataLoader`` (persistent workers when
    ``num_workers`` > 0) serve every pass, one pass at a time: starting a pass ends the one before it.

    Args:
        dataset: from :func:`~facepipe.data.pipeline.make_dataset`; its ``cfg`` gives the DataLoader's options.

    Attributes:
        dataset: the pipeline.
        shardset: the resolved shards.
        epoch: the epoch of the pass under way (or the last one); passes count up from 0, or from what
            :meth:`set_epoch` chose.
        shares: the realised share of each ``"<dataset>:<real|fake|uncertain>"`` in the pass under way (or the last
            one), counted over the batches delivered (self-blended fakes count as fake); logged when a pass ends.
        history: one ``{"epoch", "samples", "shares"}`` per finished pass.
        compute_views: views are computed on the device (else read from the shards).
        to_device: the :class:`~facepipe.data.device.ToDevice` applied to every batch.
    """

    def __init__(self, dataset: FaceDataset, source: str | os.PathLike | Sequence[str] | None = None,
                 split: str | None = None) -> None:
        cfg = dataset.cfg
        self.cfg = cfg
        self._source, self._split = source, split
        self._attach(dataset)
        self.freq_cfg = cfg.freq
        self.num_workers = cfg.num_workers
        self.epoch = 0
        self._next_epoch = 0
        self._loader: torch.utils.data.DataLoader | None = None  # made on the first pass, kept for every other
        self._positions: dict[int, tuple[int, int]] = {}  # worker -> (samples consumed, outputs of the next)
        self._counts: Counter = Counter()  # "<dataset>:<label>" -> samples delivered this pass
        self._batches = 0  # batches delivered this pass
        self._in_pass = False
        self._resume: dict | None = None  # a loaded state, used by the next pass
        self.history: list[dict] = []

    def _attach(self, dataset: FaceDataset) -> None:
        self.dataset = self._pipe = dataset  # _pipe: what the DataLoader workers receive
        self.to_device = ToDevice(dataset)
        self.device = self.to_device.device
        self.views = self.to_device.views
        self.compute_views = dataset.compute_views
        self.shardset = dataset.shardset
        self.epoch_batches = dataset.epoch_batches

    def _published_version(self) -> str | None:
        """The set version the index names now, or ``None`` to keep the set: not following, no index, or a process
        of a multi-process job (several ranks, or an initialised ``torch.distributed`` process group: ranks reading
        the index apart could switch at different passes and hang a collective)."""
        if not self.cfg.follow_index or self._source is None or self.shardset.version is None:
            return None
        dist = torch.distributed
        if self.dataset.world_size > 1 or (dist.is_available() and dist.is_initialized()):
            return None
        try:
            return read_index(self._source).get("version")
        except FacepipeError as e:
            log.warning("cannot re-read the shard index (%s); this pass reads set %s again", e, self.shardset.version)
            return None

    def _follow_index(self) -> None:
        """Start the pass on the set the index names now (``follow_index``): a newer set replaces the pipeline and
        the workers; a pass under way is never switched."""
        version = self._published_version()
        if version is None or version == self.shardset.version:
            return
        log.warning("%s: the index now names shard set %s (this loader read %s): the pass reads the new set",
                    self._source, version, self.shardset.version)
        old = self._loader
        self._attach(make_dataset(self._source, self._split, self.cfg))
        self._loader = None
        if old is not None and getattr(old, "_iterator", None) is not None:
            old._iterator._shutdown_workers()  # the old set's persistent workers

    @property
    def loader(self) -> torch.utils.data.DataLoader:
        """The one ``DataLoader`` over :attr:`dataset` (workers persist across passes when ``num_workers`` > 0)."""
        if self._loader is None:
            k = self.cfg.num_workers
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, collate_fn=_as_is, num_workers=k,
                pin_memory=self.device.type == "cuda", persistent_workers=k > 0,
                multiprocessing_context=self.cfg.multiprocessing_context if k else None)
        return self._loader

    @property
    def errors(self) -> int:
        """Samples skipped by the handler in the last pass, summed over workers (exact once the pass ends)."""
        return self.dataset.errors

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (the passes after it count up from there)."""
        self._next_epoch = int(epoch)
        self._resume = None

    @property
    def shares(self) -> dict[str, float]:
        n = sum(self._counts.values())
        return {k: v / n for k, v in sorted(self._counts.items())} if n else {}

    def _identity(self) -> dict:
        ds = self.dataset
        digest = hashlib.sha256("\n".join(self.shardset.urls).encode()).hexdigest()[:16]
        return {"shards": digest, "seed": self.cfg.seed, "rank": ds.rank, "world_size": ds.world_size,
                "num_workers": self.cfg.num_workers, "resampled": self.cfg.resampled,
                "dataset_weights": self.cfg.dataset_weights, "class_balance": self.cfg.class_balance,
                "epoch_samples": self.cfg.epoch_samples, "shuffle": self.cfg.shuffle,
                "shuffle_buffer": self.cfg.shuffle_buffer}

    def state_dict(self) -> dict:
        """Where this rank's stream stands, to continue exactly there after a restart (:meth:`load_state_dict`).

        Returns:
            A JSON-able dict: ``epoch`` (the pass to run next, or the one under way), ``positions`` (worker ->
            [samples of its stream consumed, outputs of the next sample delivered]) and ``batches`` of the pass
            under way (empty / 0 between passes), its realised ``counts``, and what the positions depend on
            (shard list digest, seed, rank, world size, workers, weights, shuffling). Take it between batches:
            the batch last yielded counts as consumed.
        """
        state = {"version": STATE_VERSION, **self._identity(), "epoch": self._next_epoch, "positions": {},
                 "batches": 0, "counts": {}}
        if self._in_pass:
            state.update(epoch=self.epoch, positions={str(w): list(p) for w, p in self._positions.items()},
                         batches=self._batches, counts=dict(self._counts))
        elif self._resume is not None:
            state.update(self._resume)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`: the next pass is its epoch, each worker's stream resumed after the
        samples already delivered, so the two runs together deliver each sample of the epoch exactly once (the
        augmentation and self-blending draws too, for albumentations pipelines). The shard order, mixing and
        shuffle buffer are replayed up to the position, reading (not decoding) the samples before it.

        Raises:
            ConfigError: the state is from another shard list, seed, rank, world size, number of workers, weighting
                or shuffling (the positions would point elsewhere), or another state version.
        """
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"loader state version {state.get('version')}, this facepipe reads {STATE_VERSION}")
        mine = self._identity()
        differ = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if differ:
            raise ConfigError("the loader state does not fit this loader: "
                              + ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differ.items()))
        self._next_epoch = int(state["epoch"])
        self._resume = {"epoch": int(state["epoch"]), "positions": dict(state.get("positions") or {}),
                        "batches": int(state.get("batches", 0)), "counts": dict(state.get("counts") or {})}

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("length unknown: give epoch_samples, or build the shards with an index")
        return self.epoch_batches

    def views_of(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """See :meth:`facepipe.data.device.ToDevice.views_of` (test-time augmentation)."""
        return self.to_device.views_of(image)

    def __iter__(self) -> Iterator[dict]:
        resume, self._resume = self._resume or {}, None
        if not resume.get("positions"):
            self._follow_index()
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        self._positions = {int(w): (int(p[0]), int(p[1])) for w, p in resume.get("positions", {}).items()}
        self._counts = Counter(resume.get("counts", {}))
        self._batches = int(resume.get("batches", 0))
        self.dataset.set_epoch(self.epoch, self._positions)
        with torch.random.fork_rng(devices=[]):  # the DataLoader draws its base seed: leave the caller's RNG as it was
            batches: Iterator[dict] = iter(self.loader)
        if self.epoch_batches is not None and self.cfg.resampled:
            batches = islice(batches, max(0, self.epoch_batches - self._batches))
        self._in_pass = True
        for b in batches:
            w, consumed, pending = b.pop("_position")
            self._positions[int(w)] = (int(consumed), int(pending))
            self._counts.update(f"{d}:{FACE_LABEL_NAMES[int(lab)]}" for d, lab in zip(b["dataset"], b["label"]))
            self._batches += 1
            yield self.to_device(b)
        self._in_pass = False
        self.history.append({"epoch": self.epoch, "samples": sum(self._counts.values()), "shares": self.shares})
        log.debug("epoch %d: %d samples, realised shares %s", self.epoch, sum(self._counts.values()),
                 ", ".join(f"{k} {v:.3f}" for k, v in self.shares.items()))


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
    handler: str | Callable[[Exception], bool] = "warn",
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
    masks: bool = False,
    multiprocessing_context: str | None = None,
    decode: str = "auto",
    clips: bool | None = None,
    sbi: SBIConfig | dict | None = None,
    follow_index: bool = True,
) -> FaceLoader:
    """Stream facepipe shards as training batches: :class:`LoaderConfig` from the keyword arguments, then
    :func:`make_dataset` and a :class:`FaceLoader` (one persistent ``DataLoader``) over it. Every argument but
    ``source`` and ``split`` is the :class:`~facepipe.data.pipeline.LoaderConfig` field of that name (documented
    there).

    Args:
        source: the shard index (``index.json``, its folder, or a URL to it), a brace pattern
            (``/data/train-{000000..000099}.tar``) or a list of shard URLs.
        split: split to read from an index.

    Returns:
        A :class:`FaceLoader`; each batch is a dict with ``image`` (B, 3, H, W) float32 normalised,
        ``label`` (B,) int64 (the face's label: 0 real, 1 fake), every view in ``views`` (B, C', H', W')
        float32, and lists ``key``, ``dataset``, ``video_id``, ``method``, ``split``, ``frame_index``,
        ``track_id``, ``video_label``, ``label_source``, ``manipulation_score``, ``landmarks`` (5 x,y points in
        source-frame pixels), ``affine`` (the 2x3 source -> crop matrix) and ``crop_size`` (the stored crop's side;
        the batch's images are resized from it to ``image_size``). A clip set (``clips``, or the index's
        ``sample_kind: clip``): ``image`` (B, T, 3, H, W), views (B, T, C', H', W'), ``label`` (B,) the clip's, and
        the lists of :data:`~facepipe.data.pipeline.CLIP_META_KEYS`.

    Raises:
        ShardIndexError / InputError: see :func:`resolve_shards`.
        ConfigError: bad options, e.g. fewer shards than ranks (a rank would read nothing and a DDP
            job would hang), thinning without an index, unknown views or handler.
    """
    options = dict(locals())
    del options["source"], options["split"]
    cfg = validate_section(LoaderConfig, options, "make_loader")
    return FaceLoader(make_dataset(source, split, cfg), source, split)


__all__ = ["FaceDataset", "FaceLoader", "LoaderConfig", "ShardSet", "ToDevice", "_acceptance",
           "default_augmentation", "make_dataset", "make_loader", "META_KEYS", "read_index", "resolve_shards"]
