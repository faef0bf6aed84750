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

import os
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
from facepipe.freq.config import FreqConfig


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
        compute_views: views are computed on the device (else read from the shards).
        to_device: the :class:`~facepipe.data.device.ToDevice` applied to every batch.
    """

    def __init__(self, dataset: FaceDataset) -> None:
        cfg = dataset.cfg
        self.dataset = self._pipe = dataset  # _pipe: what the DataLoader workers receive
        self.cfg = cfg
        self.to_device = ToDevice(dataset)
        self.device = self.to_device.device
        self.views = self.to_device.views
        self.compute_views = dataset.compute_views
        self.freq_cfg = cfg.freq
        self.num_workers = cfg.num_workers
        self.shardset = dataset.shardset
        self.epoch_batches = dataset.epoch_batches
        self.epoch = 0
        self._next_epoch = 0
        self._loader: torch.utils.data.DataLoader | None = None  # made on the first pass, kept for every other

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

    def __len__(self) -> int:
        if self.epoch_batches is None:
            raise TypeError("length unknown: give epoch_samples, or build the shards with an index")
        return self.epoch_batches

    def views_of(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """See :meth:`facepipe.data.device.ToDevice.views_of` (test-time augmentation)."""
        return self.to_device.views_of(image)

    def __iter__(self) -> Iterator[dict]:
        self.epoch, self._next_epoch = self._next_epoch, self._next_epoch + 1
        self.dataset.set_epoch(self.epoch)
        batches: Iterator[dict] = iter(self.loader)
        if self.epoch_batches is not None and self.cfg.resampled:
            batches = islice(batches, self.epoch_batches)
        for b in batches:
            yield self.to_device(b)


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
    return FaceLoader(make_dataset(source, split, cfg))


__all__ = ["FaceDataset", "FaceLoader", "LoaderConfig", "ShardSet", "ToDevice", "_acceptance",
           "default_augmentation", "make_dataset", "make_loader", "META_KEYS", "read_index", "resolve_shards"]
