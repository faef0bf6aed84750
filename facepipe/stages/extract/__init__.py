"""The ``extract`` stage: videos -> aligned face crops, per-face labels and masks, ``faces.parquet``, ``videos.parquet``.

Layout of ``OUT``::

    faces/<video_id>/<frame:06d>_<track>.png        crops (or .jpg)
    faces/<video_id>/<frame:06d>_<track>_mask.png   difference masks of fake faces compared with their original
    faces.parquet                                   one row per face   (FACE_SCHEMA)
    videos.parquet                                  one row per input  (VIDEO_SCHEMA)
    _parts/<video_id>.json / .parquet               per-video results: the unit of resume
    .lock                                           held while a run writes OUT

Work is per video and incremental. A video's cache key hashes the stage fingerprint (parameters, stage
version, the source of every module this stage imports), the file (size + mtime, or sha256), its
manifest row (label, method, links) and, for a fake, its original's file: a change to any of them redoes
that video. Results with status ``error`` (unexpected failures: a bug, a full disk, a crashed or hung
worker) are recorded but never cached: the next run retries them.

A fake is processed together with its original (``source_ids[0]`` of the manifest, the target video) in
one task, decoding the original once for all its fakes; see :mod:`facepipe.faces.labels`. Tasks run in
``pebble`` worker processes with a per-video timeout; a hung or crashing video is an ``error`` row and the
run goes on. Each video's crops go to a temporary folder renamed into place, then its part files are
written by temp-name-and-rename, so a killed run loses nothing finished and leaves nothing half-written.

The package, by job:

- :mod:`~facepipe.stages.extract.config`: :class:`ExtractConfig`, :class:`OutputConfig`, the
  ``align.preset`` (:data:`DEEPFAKEBENCH_PRESET`), the stage fingerprint;
- :mod:`~facepipe.stages.extract.inputs`: input discovery (:func:`discover_videos`, :func:`jobs_from_manifest`),
  file fingerprints, tasks (:class:`Task`: an original with its fakes);
- :mod:`~facepipe.stages.extract.tables`: :data:`FACE_SCHEMA`, :data:`VIDEO_SCHEMA`, part files,
  :func:`consolidate`;
- per-video work: :mod:`~facepipe.stages.extract.worker` (:func:`process_task` and its steps),
  :mod:`~facepipe.stages.extract.crops` (detection and crops per chunk), :mod:`~facepipe.stages.extract.pair`
  (comparison with the original), :mod:`~facepipe.stages.extract.finish` (tracks, labels, rows, publishing),
  :mod:`~facepipe.stages.extract.state`;
- :mod:`~facepipe.stages.extract.scheduler`: one scheduler (queue, timeouts, retry) with a ``pebble`` pool and a
  Ray backend;
- :mod:`~facepipe.stages.extract.driver`: :func:`run`.

The stage's code fingerprint is the import closure of this package (``STAGE_MODULE``): this file imports every
module of it, so a change to any of them changes the fingerprint.
"""

from __future__ import annotations

from facepipe.stages.extract.config import (
    DEEPFAKEBENCH_PRESET,
    MANIFEST_DATASET,
    STAGE,
    STAGE_MODULE,
    STAGE_VERSION,
    STATUSES,
    ExtractConfig,
    OutputConfig,
    fingerprint,
    preset_label,
)
from facepipe.stages.extract.crops import MAX_KEPT_FRAMES, encode_image
from facepipe.stages.extract.driver import ExtractSummary, run
from facepipe.stages.extract.inputs import Task, VideoJob, discover_videos, file_sha256, jobs_from_manifest
from facepipe.stages.extract.scheduler import run_tasks
from facepipe.stages.extract.tables import FACE_SCHEMA, VIDEO_SCHEMA, consolidate
from facepipe.stages.extract.worker import process_task

__all__ = ["DEEPFAKEBENCH_PRESET", "FACE_SCHEMA", "MANIFEST_DATASET", "MAX_KEPT_FRAMES", "STAGE", "STAGE_MODULE",
           "STAGE_VERSION", "STATUSES", "VIDEO_SCHEMA", "ExtractConfig", "ExtractSummary", "OutputConfig", "Task",
           "VideoJob", "consolidate", "discover_videos", "encode_image", "file_sha256", "fingerprint",
           "jobs_from_manifest", "preset_label", "process_task", "run", "run_tasks"]
