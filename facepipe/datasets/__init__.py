"""Dataset adapters: one per public layout, registered by name (``facepipe datasets`` lists them).

``build_manifest(adapter, root, dataset, cfg)`` scans a dataset in its published layout and returns a
validated manifest with official labels and splits (or leak-free grouped splits where none exist).
"""

from facepipe.datasets import celebdf, dfdc, ffpp, generic, others  # noqa: F401  (registration)
from facepipe.datasets.base import (
    ManifestConfig,
    Row,
    build_manifest,
    get_adapter,
    group_split,
    list_adapters,
    register_adapter,
    split_report,
)

__all__ = ["ManifestConfig", "Row", "build_manifest", "get_adapter", "group_split", "list_adapters",
           "register_adapter", "split_report"]
