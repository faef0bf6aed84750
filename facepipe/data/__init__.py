"""Shards: the sample schema (``schema``) and ``make_loader`` for training (the shard stage is
:mod:`facepipe.stages.shard`).

``make_loader`` is imported lazily so that the schema does not pull in torch.
"""

from __future__ import annotations

from typing import Any

from facepipe.data.schema import hf_features

__all__ = ["hf_features", "make_loader"]


def __getattr__(name: str) -> Any:
    if name == "make_loader":
        from facepipe.data.loader import make_loader

        return make_loader
    raise AttributeError(f"module 'facepipe.data' has no attribute {name!r}")
