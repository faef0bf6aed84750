"""Shards: the sample schema (``schema``), the shard index (``index``: ``read_index``) and the training loader
(``pipeline``: ``LoaderConfig`` and ``make_dataset``; ``device``: ``ToDevice``; ``loader``: ``make_loader``); the
shard stage is :mod:`facepipe.stages.shard`.

Everything but the schema is imported lazily, so that the schema does not pull in torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "hf_features": "facepipe.data.hf",
    "make_loader": "facepipe.data.loader", "FaceLoader": "facepipe.data.loader",
    "make_dataset": "facepipe.data.pipeline", "LoaderConfig": "facepipe.data.pipeline",
    "FaceDataset": "facepipe.data.pipeline", "ToDevice": "facepipe.data.device",
    "read_index": "facepipe.data.index", "resolve_shards": "facepipe.data.index", "ShardSet": "facepipe.data.index",
    "SBIConfig": "facepipe.data.sbi",
}

__all__ = [*_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'facepipe.data' has no attribute {name!r}")
