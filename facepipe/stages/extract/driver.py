"""The extract stage's driver: inputs, cache keys and what is already done, the tasks, running them (in this
process, the local pool or Ray: :mod:`~facepipe.stages.extract.scheduler`), consolidation and the summary."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from facepipe.errors import Interrupted
from facepipe.stages import contract
from facepipe.stages.extract.config import MANIFEST_DATASET, STAGE, ExtractConfig, fingerprint
from facepipe.stages.extract.inputs import Task, VideoJob, discover_videos, input_sha256, jobs_from_manifest, plan_tasks
from facepipe.stages.extract.tables import consolidate, is_done

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    """What one run did. ``statuses`` counts every input's status after the run; ``problems`` the first
    messages of each problem status among the videos an earlier run did (this run's are printed as they finish);
    ``labels`` faces per (label_source, label)."""

    processed: int = 0
    skipped: int = 0
    faces_written: int = 0
    seconds: float = 0.0
    detector: str = ""
    fingerprint: str = ""
    statuses: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    out_dir: str = ""


def _inputs(video_dir: str | Path, cfg: ExtractConfig, manifest: str | Path | None) -> list[VideoJob]:
    if manifest is not None:
        from facepipe.manifest import read_manifest

        return jobs_from_manifest(video_dir, read_manifest(manifest, dataset=MANIFEST_DATASET))
    return discover_videos(video_dir, cfg.extensions)


def _clear_stale(out: Path) -> None:
    """Create ``faces/`` and ``_parts/``; remove the temporary files and folders a killed run left."""
    (out / "faces").mkdir(parents=True, exist_ok=True)
    (out / "_parts").mkdir(parents=True, exist_ok=True)
    for stale in (out / "faces").glob(".*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in [*out.glob(".*.tmp-*"), *(out / "_parts").glob(".*.tmp-*")]:
        stale.unlink(missing_ok=True)


def _plan(jobs: list[VideoJob], out: Path, cfg: ExtractConfig, stage_fp: str) -> tuple[list[Task], set[str]]:
    """Each video's cache key (stage fingerprint, file, manifest row, its original's file), the videos not done
    under their key, and the tasks that do them."""
    shas = ({j.video_id: sha for j in jobs if (sha := input_sha256(j.path)) is not None}
            if cfg.file_fingerprint == "sha256" else {})
    by_id = {j.video_id: j for j in jobs}

    def file_fp(j: VideoJob):
        return shas.get(j.video_id) if cfg.file_fingerprint == "sha256" else (j.size, j.mtime_ns)

    keys = {}
    for j in jobs:
        orig = by_id.get(j.original) if j.original else None
        keys[j.video_id] = contract.item_key(stage_fp, file_fp(j), j.label, j.method, list(j.sources),
                                             file_fp(orig) if orig else None)
    pending = {j.video_id for j in jobs
               if not is_done(out / "_parts" / f"{j.video_id}.json", keys[j.video_id], out, j.video_id)}
    return plan_tasks(jobs, pending, by_id, keys, shas), pending


class _Progress:
    """The tqdm bar over videos (with faces/s) and the summary's counts, updated per finished video."""

    def __init__(self, summary: ExtractSummary, total: int, progress: bool) -> None:
        self.summary = summary
        self.bar = tqdm(total=total, unit="video", desc="extract", disable=not progress or not total,
                        dynamic_ncols=True)
        self.t0 = time.perf_counter()

    def done(self, row: dict, n: int) -> None:
        s = self.summary
        s.processed += 1
        s.faces_written += n
        self.bar.update(1)
        rate = s.faces_written / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(faces=s.faces_written, faces_s=f"{rate:.1f}", refresh=False)
        if row["status"] in ("decode_error", "unsupported", "error"):  # named here, once (the summary counts them)
            tqdm.write(f"{row['path']}: {row['status']}: {contract.short_message(row['message'], row['path'])}")


def _label_counts(out: Path) -> dict[str, int]:
    """Faces per ``label_source:label`` in ``faces.parquet``."""
    faces = pl.read_parquet(out / "faces.parquet", columns=["label", "label_source"])
    return {f"{src or 'unlabelled'}:{'fake' if lab == 1 else 'real' if lab == 0 else '?'}": n
            for src, lab, n in faces.group_by("label_source", "label").len().sort("label_source", "label").iter_rows()}


def write_settings(out: Path, cfg: ExtractConfig, *, detector_id: str, stage_fp: str) -> None:
    """Write :data:`~facepipe.stages.contract.EXTRACT_SETTINGS` in ``out`` (temp name, then rename): the parameters
    that change results, the detector id and the stage fingerprint."""
    import json

    from facepipe import __version__
    from facepipe._io import atomic_path

    doc = {"params": json.loads(json.dumps(cfg.result_params(), default=str)), "detector": detector_id,
           "stage_fingerprint": stage_fp, "facepipe_version": __version__}
    with atomic_path(out / contract.EXTRACT_SETTINGS) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))


def run(video_dir: str | Path, out_dir: str | Path, cfg: ExtractConfig, *, progress: bool = True,
        manifest: str | Path | None = None) -> ExtractSummary:
    """Run the extract stage.

    Args:
        video_dir: folder searched recursively for files with ``cfg.extensions`` (or the root the
            manifest's paths are relative to).
        out_dir: output folder (created; locked while the run writes it).
        cfg: stage parameters (``cfg.workers`` processes; 0 runs everything in this process).
        progress: show a tqdm bar over videos with faces/s.
        manifest: process exactly the videos this manifest lists, with its labels and original links
            (per-face labels need it); ``None`` = every video file under ``video_dir``, labels unknown.

    Returns:
        An :class:`ExtractSummary`.

    Raises:
        InputError: missing or empty ``video_dir`` (nothing is written then).
        DetectorError: the detector cannot be created.
        StageBusy: another run holds ``out_dir``.
        InputError: ``out_dir`` cannot be the output folder (a file in the way, not creatable, not writable).
        Interrupted: SIGINT (or SIGTERM, through the CLI) during the run: the abandoned videos' temporary files are
            removed, the finished videos' parts kept (a rerun resumes from them).
    """
    from facepipe.stages.extract.scheduler import PoolBackend

    t0 = time.perf_counter()
    jobs = _inputs(video_dir, cfg, manifest)
    contract.make_output_folder(Path(out_dir), STAGE)  # before the detector loads: a bad --out fails at once
    workers = cfg.workers
    threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if workers else 0
    # the local workers start now: they import and load their detectors while this process checks its own and plans
    pool = PoolBackend(cfg, Path(out_dir), workers, threads).start() if workers and cfg.engine != "ray" else None
    try:
        summary = _run(jobs, Path(out_dir), cfg, workers, threads, pool, progress)
    finally:
        if pool is not None:
            pool.close()
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(jobs: list, out: Path, cfg: ExtractConfig, workers: int, threads: int, pool, progress: bool) -> ExtractSummary:
    """:func:`run` after its inputs are found: check the detector, plan, process (on ``pool`` when started), write
    the tables."""
    from facepipe.faces import create_face_detector
    from facepipe.stages.extract.scheduler import open_backend, run_tasks
    from facepipe.stages.extract.worker import process_task

    detector = create_face_detector(cfg.face_detector, threads=threads)  # also checks the detector before any work
    if cfg.landmarks68 and cfg.preset != "deepfakebench":  # and the 68-point model, before any video
        from facepipe.faces.dlib68 import crop_landmarks68

        crop_landmarks68(np.zeros((32, 32, 3), np.uint8), np.array([4.0, 4.0, 28.0, 28.0]))
    stage_fp = fingerprint(cfg, detector.id)
    log.info("detector %s, stage fingerprint %s, %d videos, %d workers", detector.id, stage_fp, len(jobs), workers)
    with contract.stage_lock(out, STAGE):
        _clear_stale(out)
        tasks, pending = _plan(jobs, out, cfg, stage_fp)
        summary = ExtractSummary(skipped=len(jobs) - len(pending), detector=detector.id, fingerprint=stage_fp,
                                 out_dir=str(out))
        if summary.skipped:
            log.info("%d of %d videos already done with this code and these parameters: skipped", summary.skipped,
                     len(jobs))
        prog = _Progress(summary, len(pending), progress)
        try:
            if tasks and workers == 0 and cfg.engine != "ray":
                for t in tasks:
                    for r in process_task(t, str(out), cfg, detector):
                        prog.done(*r)
            elif tasks:
                del detector  # the workers make their own
                with open_backend(cfg, out, workers, threads, pool) as backend:  # leaving it stops the workers
                    run_tasks(tasks, out, cfg, backend, prog.done)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
            prog.bar.close()
            _clear_stale(out)  # the abandoned videos' temporary folders and files
            raise Interrupted(f"extract: interrupted after {summary.processed} of {len(pending)} videos "
                              f"({summary.skipped} done before); the finished ones are kept (their part files), "
                              f"the tables are not updated: rerun the same command to resume") from None
        prog.bar.close()
        rows = consolidate(out, jobs)
        write_settings(out, cfg, detector_id=summary.detector, stage_fp=stage_fp)
    summary.statuses, _ = contract.status_summary(rows)
    # problems of videos done by an earlier run (this run named its own as they finished)
    _, summary.problems = contract.status_summary([r for r in rows if r["video_id"] not in pending])
    summary.labels = _label_counts(out)
    return summary
