"""The ``manifest`` stage: a dataset in its published layout -> ``manifest.parquet`` (labels, protocol splits,
original links, identities), validated and leakage-checked (see :mod:`facepipe.datasets`).

The parquet's key-value metadata holds the stage fingerprint, the split report (videos per split and
label, and the shares reached) and the videos the official protocol leaves out (count and examples per reason).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from facepipe._io import atomic_path
from facepipe.datasets import ManifestConfig, build_manifest, split_report
from facepipe.stages import contract

STAGE = "manifest"
STAGE_VERSION = 2


def fingerprint(cfg: ManifestConfig, adapter: str) -> str:
    """Parameters, adapter name, stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, {**cfg.model_dump(), "_adapter": adapter}, __name__)


@dataclass
class ManifestSummary:
    videos: int
    report: dict
    fingerprint: str
    excluded: dict


def run(adapter: str, root: str | Path, dataset: str, cfg: ManifestConfig, out: str | Path) -> ManifestSummary:
    """Build the manifest of ``root`` with ``adapter`` and write it to ``out`` (temp name, then rename).

    Raises:
        InputError: see :func:`facepipe.datasets.build_manifest`.
        StageBusy: another manifest run writes the same folder.
    """
    out = Path(out)
    info: dict = {}
    df = build_manifest(adapter, root, dataset, cfg, report=info)
    report = split_report(df)
    fp = fingerprint(cfg, adapter)
    with contract.stage_lock(out.parent, STAGE):
        with atomic_path(out) as tmp:
            df.write_parquet(tmp, metadata={"facepipe_stage_fingerprint": fp, "facepipe_split_report":
                                            json.dumps(report, sort_keys=True),
                                            "facepipe_excluded": json.dumps(info.get("excluded", {}), sort_keys=True),
                                            "facepipe_adapter": adapter})
    return ManifestSummary(df.height, report, fp, info.get("excluded", {}))


def read_excluded(path: str | Path) -> dict:
    """The videos the official protocol left out, per reason (``{reason: {"n", "examples"}}``; empty when absent)."""
    return json.loads(pl.read_parquet_metadata(path).get("facepipe_excluded", "{}"))


def read_adapter(path: str | Path) -> str | None:
    """The dataset adapter a manifest written by this stage was built with (``None``: not recorded)."""
    return pl.read_parquet_metadata(path).get("facepipe_adapter")


def read_report(path: str | Path) -> dict:
    """The split report stored in a manifest written by this stage (empty when absent)."""
    meta = pl.read_parquet_metadata(path)
    return json.loads(meta.get("facepipe_split_report", "{}"))
