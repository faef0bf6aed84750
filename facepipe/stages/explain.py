"""The ``explain`` stage: where the trained detector looks, on a fixed seeded sample of the test split.

Runs :func:`facepipe.explain.explain` (Grad-CAM family, gradient-weighted attention or rollout; per-face real /
fake / comparison images, ``maps.npz``, ``summary.parquet``, ``gallery.html``) into a staging folder beside the
output and swaps it in whole, so the output never mixes two runs' images; the summary means go to a metrics JSON
for DVC: face mass and the pointing game each next to its chance level (``face_mass_chance``: the face region's
share of the crop area; ``pointing_game_chance``: the mask's area share), averaged over the same faces.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field

from facepipe.config import Section
from facepipe.stages import contract

STAGE = "explain"
STAGE_VERSION = 2  # 2: layers auto (attention methods over all blocks), chance levels in the summary


class ExplainConfig(Section):
    """Parameters of the ``explain`` stage (section ``explain``).

    ``method``: ``auto`` (the model's default: Grad-CAM for CNNs and hybrids, gradient-weighted attention for
    ViT / CLIP models) | ``gradcam`` | ``gradcam++`` | ``attn_grad`` | ``rollout``. ``layers``: ``auto`` (each
    method's published set: ``last`` for Grad-CAM, ``all`` blocks for ``attn_grad`` / ``rollout``) | ``last`` |
    ``last4`` | ``all`` or a list of module names. ``head_fusion``: ``mean`` | ``max`` | ``min`` (attention
    methods). ``n`` faces of ``split`` chosen with ``seed``; ``top_percent``: the map's top share compared with
    manipulation masks (IoU).
    """

    split: str = "test"
    n: int = Field(16, ge=1)
    seed: int = 0
    method: Literal["auto", "gradcam", "gradcam++", "attn_grad", "rollout"] = "auto"
    layers: Union[Literal["auto", "last", "last4", "all"], list[str]] = "auto"
    head_fusion: Literal["mean", "max", "min"] = "mean"
    top_percent: float = Field(20.0, gt=0, le=100)
    batch_size: int = Field(8, ge=1)


def fingerprint(cfg: ExplainConfig) -> str:
    """Parameters, stage version and code."""
    return contract.fingerprint(STAGE, STAGE_VERSION, cfg.model_dump(exclude={"batch_size"}), __name__)


def _record_fingerprint(summary: Path, stage_fp: str) -> None:
    """Add ``stage_fingerprint`` (parameters + code of this stage) to the run's ``summary.json``."""
    import json

    from facepipe._io import atomic_path

    doc = json.loads(summary.read_text())
    doc["stage_fingerprint"] = stage_fp
    with atomic_path(summary) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def run(checkpoint: str | Path, shards: str | Path, out_dir: str | Path, cfg: ExplainConfig,
        keys: Optional[list[str]] = None, metrics: str | Path | None = None, progress: bool = True) -> dict:
    """Explain ``cfg.n`` seeded faces (or ``keys``) of ``cfg.split`` into ``out_dir`` (replaced whole).

    Returns:
        The summary means (also ``OUT/summary.json``; ``metrics``, when given, gets the :data:`HEADLINE` ones).

    Raises:
        InputError / ConfigError: see :func:`facepipe.explain.explain`.
    """
    from facepipe.explain import explain

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contract.stage_lock(out.parent, STAGE):
        staging = out.parent / f".staging-{out.name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            means = explain(checkpoint, shards, staging, split=cfg.split, n=cfg.n, keys=keys, seed=cfg.seed,
                            method=None if cfg.method == "auto" else cfg.method, layers=cfg.layers,
                            head_fusion=cfg.head_fusion, top_percent=cfg.top_percent, batch_size=cfg.batch_size,
                            progress=progress)
            _record_fingerprint(staging / "summary.json", fingerprint(cfg))
            old = out.parent / f".old-{out.name}-{os.getpid()}"
            if out.exists():
                out.rename(old)
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if metrics is not None:
            import json

            from facepipe._io import atomic_path

            Path(metrics).parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(Path(metrics)) as tmp:
                tmp.write_text(json.dumps(headline(means), indent=1))
    return means


HEADLINE = ("n", "n_masked", "face_mass", "face_mass_chance", "pointing_game", "pointing_game_chance")
"""What ``--metrics`` (``dvc metrics show``) gets: how much of the map falls on the face and the pointing game, each
with its chance level; every mean (per face label, IoU) stays in ``OUT/summary.json``."""


def headline(means: dict) -> dict:
    """The :data:`HEADLINE` numbers of the summary means."""
    return {k: means[k] for k in HEADLINE if k in means}
