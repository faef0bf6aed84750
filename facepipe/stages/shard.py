"""The ``shard`` stage: extract (+ freq) outputs of one or more datasets -> WebDataset tar shards per split.

Layout of ``OUT``::

    README.md              the set's dataset card (Hugging Face form: datasets.load_dataset(OUT) reads the splits;
                           counts, how the crops were made, label sources, protocols and citations)
    index.json             THE pointer: the published set's version, and every shard with its samples, bytes
                           and counts by dataset, label, method, label source and (dataset, label) cell;
                           ``videos`` names the set's video table
    set-<version>/         the shard set: train-<dataset>-<label>-000000.tar ... val-... test-... (one
                           series per (dataset, label) cell; ``layout: mixed``: train-000000.tar ...),
                           _meta.json (schema
                           version, facepipe version, parameters, inputs, stage fingerprint), videos.parquet
                           (one row per video: split, label, method, originals, people)
    stats.json, counts.csv samples, videos, fake share and bytes per sample per split (DVC metrics) and samples
                           per split/dataset/label (DVC plot data)
    .lock                  held while a run writes OUT

Publishing is one atomic step: the new set is written to ``OUT/.staging-<pid>/``, renamed to
``OUT/set-<version>/``, and only then ``index.json`` is replaced (temp name, then rename), so a reader
always sees a complete set. A replaced set stays for ``grace_hours`` (default 24) so that loader passes begun on it
finish (a pass reads the index when it starts); a later run removes it (:func:`retire_sets`). A failed run
removes its staging folder and leaves the published set untouched. ``<version>`` is a hash of the stage
fingerprint and the input tables, so the same inputs, parameters and code give the same name and byte-identical
tars (samples sorted by key, then shuffled with the seed; tar members with mtime 0, fixed owner and mode): DVC's
cache works.

Labels are per face: each sample's ``label`` comes from ``faces.parquet`` (see
:mod:`facepipe.faces.labels`); the manifest gives splits, methods and links, and must agree with the
video labels extract used (else extract is stale). Leakage is checked within and across the combined
datasets (``dataset:video_id`` links and shared identities).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache, wraps
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import polars as pl
from pydantic import Field
from tqdm.auto import tqdm

from facepipe import __version__, _faults
from facepipe._io import atomic_path
from facepipe.config import Section
from facepipe.data import card, storage
from facepipe.data.card import CARD_NAME
from facepipe.data.footprint import VIDEO_TABLE_SCHEMA, VIDEOS_NAME, video_table
from facepipe.data.schema import SCHEMA_VERSION, SPLITS, encode_clip_sample, encode_sample
from facepipe.errors import InputError, Interrupted
from facepipe.ids import FACE_LABEL_NAMES, KEY_SEP, check_name
from facepipe.manifest import check_leakage, read_manifest
from facepipe.stages import contract

log = logging.getLogger(__name__)

STAGE = "shard"
STAGE_VERSION = 5
INDEX_NAME = "index.json"
META_NAME = "_meta.json"
STATS_NAME = "stats.json"
COUNTS_NAME = "counts.csv"
SET_PREFIX = "set-"
REPLACED_NAME = "_replaced.json"
"""In a replaced set's folder: when a run first found it replaced (:func:`retire_sets`)."""


class ShardInput(Section):
    """One dataset going into a shard set: its extract output, its manifest, optionally its freq output."""

    dataset: str
    extract: str
    manifest: str
    freq: Optional[str] = None


class ReencodeConfig(Section):
    """``shard.reencode``: every crop of both classes re-encoded identically before sharding, so compression
    differences between real and fake sources ("Fake or JPEG?", Grönquist et al., 2021: detectors learn the JPEG
    quality of the classes instead of the forgery) are levelled. ``format`` ``jpg`` (OpenCV's libjpeg, 4:2:0) at
    ``quality``. Masks are not re-encoded; stored views (computed from the original crops) are refused."""

    format: Literal["jpg"] = "jpg"
    quality: int = Field(90, ge=1, le=100)


class ShardConfig(Section):
    """Parameters of the ``shard`` stage (section ``shard``).

    ``inputs``: the datasets (several go into one shard set, each sample keeping its dataset).
    A shard closes after ``max_samples`` samples or ``max_bytes`` bytes. ``seed`` fixes the shuffle
    across videos, datasets and labels. ``views``: stored views to include (``None`` = all the freq
    stage stored; ``[]`` = none). ``masks``: include the difference masks. ``cross_dataset_leakage``:
    ``error`` (default) or ``warn`` when links or identities join two datasets across splits.

    ``statuses``: the extract statuses (``videos.parquet``) whose videos contribute faces. Default ``ok`` only: a
    ``decode_error`` video (a truncated or damaged file; extract keeps the faces of its decodable frames) goes into
    no shard unless ``decode_error`` is listed here. Faces left out are counted per status
    (:attr:`ShardSummary.left_out`) and logged.

    ``layout``: ``cells`` (default) writes each (dataset, label) cell of a split to its own shards
    (``train-<dataset>-<real|fake|uncertain>-000000.tar``, samples shuffled within the cell), so the loader reads
    one stream per cell and mixes them by weight (:mod:`facepipe.data.mixer`: ``dataset_weights`` and
    ``class_balance`` up- and down-weight without reading samples only to drop them, every epoch exact); ``mixed``
    shuffles datasets and labels together into ``train-000000.tar`` ... (the loader can then only thin by
    rejection).

    ``reencode``: :class:`ReencodeConfig` (``null``: crops as extract wrote them). ``bias_probe``: samples per split
    (drawn with ``seed``) on which the shortcut probe (:mod:`facepipe.data.bias`) runs after writing: a warning when
    nuisance features alone (JPEG quality, blockiness, source resolution and bitrate, face size, sharpness,
    brightness) tell the classes apart; ``0`` turns it off.

    ``grace_hours``: a set replaced by a newer one stays readable this long after the new index is published (a
    loader reads the index when a pass starts, so a pass begun on the old set finishes on it; the next pass reads the
    new set), then the next ``shard`` run on the same folder or prefix removes it (:func:`retire_sets`). ``0`` removes
    replaced sets at once. Not part of the set's fingerprint.
    """

    inputs: tuple[ShardInput, ...] = ()
    max_samples: int = Field(2000, ge=1)
    max_bytes: int = Field(500_000_000, ge=1_000)
    seed: int = 0
    views: Optional[tuple[str, ...]] = None
    masks: bool = True
    cross_dataset_leakage: Literal["error", "warn"] = "error"
    statuses: tuple[Literal["ok", "decode_error"], ...] = ("ok",)
    layout: Literal["cells", "mixed"] = "cells"
    reencode: Optional[ReencodeConfig] = None
    bias_probe: int = Field(2000, ge=0)
    grace_hours: float = Field(24.0, ge=0)


def fingerprint(cfg: ShardConfig) -> str:
    """Parameters (inputs by dataset name, not path), stage version and code."""
    params = cfg.model_dump(exclude={"inputs", "grace_hours"})
    params["datasets"] = [i.dataset for i in cfg.inputs]
    return contract.fingerprint(STAGE, STAGE_VERSION, params, __name__)


_OLD_CATEGORICALS = not hasattr(pl, "Categories")
"""polars before 1.32 (the floor is 1.30) compares, joins and concatenates ``Categorical`` columns only when they
were made under one string cache; later versions keep one global set of categories (``pl.Categories``) and
deprecate ``pl.StringCache``."""


def _under_one_string_cache(fn):
    """Run ``fn`` under ``pl.StringCache()`` where polars needs it for the :data:`COMPACT` columns (see
    :data:`_OLD_CATEGORICALS`); contexts nest, so the public stage and its parts can each hold one."""
    @wraps(fn)
    def wrapper(*args, **kwargs):
        with pl.StringCache() if _OLD_CATEGORICALS else contextlib.nullcontext():
            return fn(*args, **kwargs)
    return wrapper


COMPACT = ("dataset", "video_id", "split", "method", "crop_mode", "detector", "detector_version", "label_source",
           "preset", "npz")
"""Text columns with few distinct values, held as ``Categorical`` while a run holds every sample (4 bytes a row
instead of a 16-byte view and, past 12 bytes, the text); :meth:`Samples.rows_at` gives them back as text."""
PER_VIDEO = ("source_ids", "identity_ids", "source_width", "source_height", "source_kbps", "source_codec")
"""Columns held once per video (:attr:`Samples.videos`), joined to the rows as they are read."""
OPTIONAL = ("mask_path", "preset", "crop_landmarks", "manipulation_score", "clip_id", "clip_start", "gap")
"""``faces.parquet`` columns that may hold no value at all (a set without masks, presets or crop landmarks, of real
faces only, a frame set's clip columns): such a column is not held (:meth:`Samples.rows_at` gives it back, null)."""
_CHUNK = 10_000
"""Rows gathered at a time when samples are read in write order."""


@_under_one_string_cache
def collect_samples(inp: ShardInput, views: tuple[str, ...] | None, statuses: tuple[str, ...] = ("ok",),
                    left_out: Counter | None = None) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame,
                                                              tuple[str, ...]]:
    """Join one dataset's faces with its manifest (and stored views). Only faces of videos whose ``videos.parquet``
    status is in ``statuses`` are kept; the others are counted in ``left_out`` (``"<dataset>:<status>"`` -> faces).
    ``faces.parquet`` is checked on a per-video summary, then read once in one streamed pass.

    Returns:
        (one row per face, in ``faces.parquet``'s order: its columns, ``dataset``, ``split`` and ``method``, with
        stored views the freq stage's ``npz`` and ``member``, and ``_v``, its video's row in the second table; the
        columns of :data:`COMPACT` are ``Categorical``, those of :data:`OPTIONAL` that hold no value left out, every
        column in one chunk;
        one row per video with faces: ``video_id`` and the :data:`PER_VIDEO` columns;
        the dataset's manifest; the views that will be stored).

    Raises:
        InputError: missing tables (``videos.parquet`` included), faces of videos the manifest does not list, faces
            extracted without
            the manifest (no face labels), video labels that disagree with the manifest (stale extract),
            or views asked for that the freq output lacks.
    """
    ex = Path(inp.extract)
    fp = ex / "faces.parquet"
    if not fp.is_file():
        raise InputError(f"{fp}: not found (run 'facepipe extract' first)")
    faces = pl.scan_parquet(fp)
    names = faces.collect_schema().names()
    if "label_source" not in names:
        raise InputError(f"{fp}: written by an older facepipe without per-face labels; rerun 'facepipe extract'")
    per_video = faces.group_by("video_id").agg(
        pl.len().alias("_faces"), pl.col("label_source").is_null().any().alias("_nolabel"),
        pl.col("video_label").min().alias("_lo"), pl.col("video_label").max().alias("_hi")).collect()
    kept = _by_status(per_video, ex, inp.dataset, statuses, left_out)
    man = read_manifest(inp.manifest, dataset=inp.dataset).filter(pl.col("dataset") == inp.dataset)
    videos = _check_labels(kept, man, inp, fp)
    stored, vt = _stored_views(inp, views)
    lf = faces.join(videos.select("_v", "video_id", pl.col("split", "method").cast(pl.Categorical)).lazy(),
                    on="video_id", how="inner", maintain_order="left")
    if stored:
        lf = lf.join(vt.select("video_id", "frame_index", "track_id", "npz", "member"),
                     on=["video_id", "frame_index", "track_id"], how="left", maintain_order="left")
    present = {*names, "dataset", "split", "method", *(("npz",) if stored else ())}
    rows = lf.with_columns(pl.lit(inp.dataset).alias("dataset")).with_columns(
        pl.col(c).cast(pl.Categorical) for c in COMPACT if c in present).collect(engine="streaming")
    rows = _one_chunk(rows.drop([c for c in OPTIONAL if c in names and rows[c].null_count() == rows.height]))
    if stored:
        missing = rows.filter(pl.col("npz").is_null())
        if missing.height:
            raise InputError(f"{Path(inp.freq) / 'views.parquet'}: no views for {missing.height} crop(s), e.g. "
                             f"{missing['crop_path'][0]}; rerun 'facepipe freq'")
    return rows, videos.select("video_id", *PER_VIDEO), man, stored


def _stored_views(inp: ShardInput, views: tuple[str, ...] | None) -> tuple[tuple[str, ...], pl.LazyFrame | None]:
    """The views to store from ``inp``'s freq output and its ``views.parquet`` (scanned), or ``()`` and ``None``."""
    if not inp.freq:
        if views:
            raise InputError(f"dataset '{inp.dataset}': views {list(views)} asked for but no freq output given")
        return (), None
    vp = Path(inp.freq) / "views.parquet"
    if not vp.is_file():
        raise InputError(f"{vp}: not found (run 'facepipe freq' first)")
    vt = pl.scan_parquet(vp)
    first = vt.select("views").head(1).collect()
    have = set(first["views"][0]) if first.height else set()
    want = tuple(sorted(have)) if views is None else views
    lacking = [v for v in want if v not in have]
    if lacking:
        raise InputError(f"{vp}: views {lacking} asked for but the freq stage stored {sorted(have)}")
    return want, vt


def _by_status(per_video: pl.DataFrame, ex: Path, dataset: str, statuses: tuple[str, ...],
               left_out: Counter | None) -> pl.DataFrame:
    """The videos of ``per_video`` (one row per video with faces, ``_faces`` their number) whose extract status is in
    ``statuses`` (see :attr:`ShardConfig.statuses`), with the source columns of ``videos.parquet``; the others are
    counted in ``left_out`` and logged."""
    vp = ex / "videos.parquet"
    if not vp.is_file():
        raise InputError(f"{vp}: not found (run 'facepipe extract' first; shards take faces of videos whose status "
                         "is ok)")
    status = pl.read_parquet(vp, columns=["video_id", "status", "width", "height", "file_size", "duration_s", "codec"])
    status = status.select(
        "video_id", "status", pl.col("width").alias("source_width"), pl.col("height").alias("source_height"),
        (pl.col("file_size") * 8 / 1000 / pl.col("duration_s")).round(1).alias("source_kbps"),
        pl.col("codec").alias("source_codec"))
    rows = per_video.join(status, on="video_id", how="left").with_columns(pl.col("status").fill_null("no video row"))
    dropped = rows.filter(~pl.col("status").is_in(list(statuses)))
    if dropped.height:
        per = dropped.group_by("status").agg(pl.col("_faces").sum().alias("faces"), pl.len().alias("videos"))
        for r in per.sort("status").iter_rows(named=True):
            if left_out is not None:
                left_out[f"{dataset}:{r['status']}"] += r["faces"]
            log.warning("shard: %d face(s) of %d '%s' video(s) of '%s' left out (shard.statuses %s)", r["faces"],
                        r["videos"], r["status"], dataset, list(statuses))
    return rows.filter(pl.col("status").is_in(list(statuses))).drop("status")


def _check_labels(kept: pl.DataFrame, man: pl.DataFrame, inp: ShardInput, fp: Path) -> pl.DataFrame:
    """``kept`` (one row per video, see :func:`_by_status`) with its manifest row and ``_v`` (its row number), after
    the checks of :func:`collect_samples`: every video in the manifest, every face labelled, no stale video label."""
    rows = kept.join(man.drop("path", "dataset").rename({"label": "manifest_label"}), on="video_id", how="left")
    unlabelled = rows.filter(pl.col("manifest_label").is_null())["video_id"].sort().to_list()
    if unlabelled:
        raise InputError(f"{inp.manifest}: no manifest row for {len(unlabelled)} extracted video(s) of "
                         f"'{inp.dataset}', e.g. {unlabelled[:3]}")
    nolabel = rows.filter(pl.col("_nolabel"))["video_id"].sort().to_list()
    if nolabel:
        raise InputError(f"{fp}: {len(nolabel)} video(s) were extracted without the manifest, so their faces have no "
                         f"labels (e.g. {nolabel[:3]}); rerun 'facepipe extract --manifest {inp.manifest}'")
    label = pl.col("manifest_label")
    stale = rows.filter((pl.col("_lo") != label) | (pl.col("_hi") != label))["video_id"].sort().to_list()
    if stale:
        raise InputError(f"{fp}: video labels of {len(stale)} video(s) differ from {inp.manifest} (e.g. {stale[:3]}): "
                         "the extract output is stale; rerun 'facepipe extract'")
    return rows.sort("video_id").with_row_index("_v")


@dataclass
class ShardSummary:
    samples: dict[str, int] = field(default_factory=dict)
    shards: dict[str, int] = field(default_factory=dict)
    label_sources: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # "<dataset>:<status>" -> faces (ShardConfig.statuses)
    bytes: int = 0
    seconds: float = 0.0
    version: str = ""
    bias: dict = field(default_factory=dict)  # the shortcut probe's report (facepipe.data.bias.probe_table)
    bias_warnings: list = field(default_factory=list)
    written: int = 0  # samples written so far (all of them once the run ends)
    published: bool = False  # the index names this run's set


def _inputs_hash(cfg: ShardConfig) -> str:
    """sha256 over the input tables (faces, manifest, views), so the set's version follows its inputs."""
    h = hashlib.sha256()
    for inp in cfg.inputs:
        files = [Path(inp.extract) / "faces.parquet", Path(inp.extract) / "videos.parquet", Path(inp.manifest)]
        if inp.freq:
            files.append(Path(inp.freq) / "views.parquet")
        for f in files:
            h.update(inp.dataset.encode() + b"\0")
            if f.is_file():
                with open(f, "rb") as src:  # in blocks: the tables are read whole nowhere (170 MB at 1.6M faces)
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
            else:
                h.update(b"-")
            h.update(b"\0")
    return h.hexdigest()


@_under_one_string_cache
def run(out_dir: str | Path, cfg: ShardConfig, progress: bool = True) -> ShardSummary:
    """Write the shard set for ``cfg.inputs`` and publish it in ``out_dir`` (replacing the set there).

    ``out_dir`` may be an object-storage URL (``s3://bucket/prefix``; see :mod:`facepipe.data.storage`): the
    same layout is uploaded there, the index last.

    Raises:
        InputError: no inputs, bad inputs (see :func:`collect_samples`), duplicate datasets, leakage
            within or across datasets, or no face at all.
        StageBusy: another run holds ``out_dir``.
    """
    import webdataset as wds

    t0 = time.perf_counter()
    samples, stored, view_params, left_out = _gather(cfg)
    stage_fp = fingerprint(cfg)
    version = SET_PREFIX + contract.item_key(stage_fp, _inputs_hash(cfg))
    summary = ShardSummary(version=version, left_out=dict(left_out))
    try:
        if storage.is_remote(out_dir):
            _publish_remote(str(out_dir), version, stage_fp, samples, stored, view_params, cfg, summary, progress,
                            wds)
        else:
            _publish_local(Path(out_dir), version, stage_fp, samples, stored, view_params, cfg, summary, progress,
                           wds)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM as the CLI turns it into one
        if summary.published:
            raise Interrupted(f"shard: interrupted after publishing set {version} ({out_dir}/index.json names it); "
                              "replaced sets may not be retired yet: the next run does it") from None
        raise Interrupted(f"shard: interrupted after {summary.written} of {samples.height} samples; nothing was "
                          f"published: {out_dir}/index.json still names the set it named before (if any) and the "
                          "staging files are removed; rerun the same command") from None
    summary.bias, summary.bias_warnings = _probe(samples, cfg)
    summary.seconds = time.perf_counter() - t0
    return summary


def _probe(samples: Samples, cfg: ShardConfig) -> tuple[dict, list[str]]:
    """The shortcut probe (:mod:`facepipe.data.bias`) on ``cfg.bias_probe`` faces per split (drawn with the seed from
    the split's faces in key order, re-encoded as the shards are), its warnings logged; nothing for clip sets or
    ``bias_probe: 0``."""
    if not cfg.bias_probe or samples.clips:
        return {}, []
    from facepipe.data.bias import face_features, features_frame, probe_table, warnings_of

    rows = []
    for s_i, split in enumerate(SPLITS):
        positions = samples.split_positions(s_i)
        if len(positions) > cfg.bias_probe:  # the rows DataFrame.sample draws from a table of the split's faces
            positions = pl.DataFrame({"i": positions}).sample(cfg.bias_probe, seed=cfg.seed)["i"].to_numpy()
        for r in samples.rows_at(positions).iter_rows(named=True):
            crop = Path(r["_root"]) / r["crop_path"]
            ext = crop.suffix.lstrip(".").lower().replace("jpeg", "jpg")
            try:
                image, ext = reencoded(crop.read_bytes(), ext, cfg.reencode, str(crop))
                feats = face_features(image, ext, {"box": list(r["box"]), "source": _source(r), "key": r["key"]})
            except (OSError, ValueError, InputError) as e:
                log.debug("shortcut probe: %s left out (%s)", crop, e)
                continue
            rows.append({**feats, "label": r["label"], "dataset": r["dataset"], "video_id": r["video_id"],
                         "split": split})
    report = probe_table(features_frame(rows), seed=cfg.seed)
    lines = warnings_of(report, "shard")
    for line in lines:
        log.warning(line)
    return report, lines


@dataclass
class Samples:
    """Every sample of a shard set, held once (:func:`_gather`): the rows in the inputs' order (never a sorted copy)
    and, as small arrays, the order the shards hold them in.

    Attributes:
        rows: one row per sample (face; clip for clip sets): the columns of :func:`collect_samples`' first table
            (:func:`clip_rows` of them for clip sets), ``_v`` indexing :attr:`videos`; one chunk per input.
        starts: the first row of each input's chunk, and the number of rows.
        videos: one row per video: ``dataset``, ``video_id`` and the :data:`PER_VIDEO` columns.
        roots: dataset -> its extract folder (resolved): the crops' root.
        freqs: dataset -> its freq folder (resolved), for sets that store views.
        clips: a clip set (keys ``<dataset>__<video>__c<clip>__<track>``).
        decode: the type the inputs give each column held otherwise (``Categorical``) or not held (no value).
        order: the row positions sorted by key.
        split_of: per row, the index of its split in ``SPLITS`` (``len(SPLITS)``: none of them).
        cell_of: per row, its (dataset, label) cell: ``256 * i + label + 128`` for ``datasets[i]``.
        datasets: the dataset names, sorted.
    """

    rows: pl.DataFrame
    starts: np.ndarray
    videos: pl.DataFrame
    roots: dict[str, str]
    freqs: dict[str, str]
    clips: bool
    decode: dict[str, pl.DataType]
    order: np.ndarray
    split_of: np.ndarray
    cell_of: np.ndarray
    datasets: list[str]

    @property
    def height(self) -> int:
        return self.rows.height

    def rows_at(self, positions: np.ndarray) -> pl.DataFrame:
        """The rows at ``positions``, in that order, as the inputs hold them (text as text), with their video's
        :data:`PER_VIDEO` columns, ``key``, ``_root`` and (stored views) ``_freq``."""
        part = self._gather_rows(np.asarray(positions, dtype=np.int64))
        part = _as_given(part, self.decode)
        part = part.hstack(self.videos[part["_v"].to_numpy()].drop("dataset", "video_id")).drop("_v")
        extra = [_key_expr(self.clips), pl.col("dataset").replace_strict(self.roots, return_dtype=pl.String)
                 .alias("_root")]
        if self.freqs:
            extra.append(pl.col("dataset").replace_strict(self.freqs, return_dtype=pl.String).alias("_freq"))
        return part.with_columns(extra)

    def _gather_rows(self, positions: np.ndarray) -> pl.DataFrame:
        """``rows[positions]``, gathered from each input's chunk on its own (a gather across chunks is slow, see
        :func:`_one_chunk`)."""
        part_of = np.searchsorted(self.starts, positions, side="right") - 1
        pieces, where = [], []
        for p in np.unique(part_of).tolist():
            here = np.flatnonzero(part_of == p)
            start = int(self.starts[p])
            pieces.append(self.rows.slice(start, int(self.starts[p + 1]) - start)[positions[here] - start])
            where.append(here)
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            return self.rows.clear()
        return pl.concat(pieces, rechunk=True)[np.argsort(np.concatenate(where), kind="stable")]

    def split_positions(self, s_i: int) -> np.ndarray:
        """The positions of the rows of split ``SPLITS[s_i]``, in key order."""
        return self.order[self.split_of[self.order] == s_i]


@_under_one_string_cache
def _gather(cfg: ShardConfig) -> tuple[Samples, tuple[str, ...], dict | None, Counter]:
    """Every input's samples in one table, after the leakage checks, and their order by key.

    Returns:
        (the :class:`Samples`; the views stored per sample; the freq parameters they were computed with, or None;
        faces left out per ``"<dataset>:<status>"``).

    Raises:
        InputError: as :func:`run`.
    """
    if not cfg.inputs:
        raise InputError("shard: no inputs (give at least one dataset=NAME,extract=DIR,manifest=FILE)")
    names = [i.dataset for i in cfg.inputs]
    if len(set(names)) != len(names):
        raise InputError(f"shard: dataset names must be unique, got {names}")
    parts, videos, manifests, stored_sets = [], [], [], []
    left_out: Counter = Counter()
    for inp in cfg.inputs:
        rows, vids, man, stored = collect_samples(inp, cfg.views, cfg.statuses, left_out)
        first = sum(v.height for v in videos)  # this input's videos follow the earlier inputs'
        parts.append(rows.with_columns((pl.col("_v") + first).cast(pl.UInt32)) if first else rows)
        videos.append(vids.select(pl.lit(inp.dataset).alias("dataset"), pl.all()))
        manifests.append(man)
        stored_sets.append(stored)
    del rows
    if len(set(stored_sets)) > 1:
        raise InputError(f"shard: datasets store different views {dict(zip(names, stored_sets))}; "
                         "pick common ones with shard.views")
    stored = stored_sets[0]
    if stored and cfg.reencode is not None:
        raise InputError(f"shard.reencode: the stored views {list(stored)} were computed from the original crops, not "
                         "the re-encoded ones; set shard.views: [] and let the loader compute views")
    view_params = _view_params(cfg) if stored else None
    starts = np.cumsum([0] + [p.height for p in parts])
    same = all(p.schema == parts[0].schema for p in parts)  # else the inputs' columns are aligned (copies)
    allrows = pl.concat(parts, how="vertical" if same else "diagonal_relaxed", rechunk=False)
    del parts  # allrows holds their columns (not copied when the inputs' schemas agree)
    if allrows.height == 0:
        raise InputError("shard: the inputs hold no faces" + (
            f" of videos with status {list(cfg.statuses)} (left out: {dict(left_out)}; see shard.statuses)"
            if left_out else ""))
    allman = pl.concat(manifests, how="vertical_relaxed")
    check_leakage(allman, "shard inputs", identities=False, scope="within")
    check_leakage(allman, "shard inputs (across datasets)", identities=True, mode=cfg.cross_dataset_leakage,
                  scope="across")
    clips = _is_clip_set(allrows)
    if clips and stored:
        raise InputError(f"shard: views {list(stored)} asked for on clip faces (sampling.mode clips): clip sets store "
                         "no views (the loader computes them per frame); set shard.views: [] or drop the freq input")
    decode = _plain_types(cfg, allrows)
    if clips:
        allrows, decode = _one_chunk(clip_rows(_as_given(allrows, decode))), {}
        starts = np.array([0, allrows.height])
    videos = pl.concat(videos, how="vertical_relaxed")
    roots = {i.dataset: str(Path(i.extract).resolve()) for i in cfg.inputs}
    freqs = {i.dataset: str(Path(i.freq).resolve()) for i in cfg.inputs} if stored else {}
    return (Samples(allrows, starts, videos, roots, freqs, clips, decode, *_ordered(allrows, videos, clips)), stored,
            view_params, left_out)


def _plain_types(cfg: ShardConfig, rows: pl.DataFrame) -> dict[str, pl.DataType]:
    """The type the inputs give each ``Categorical`` column of ``rows`` and each ``faces.parquet`` column ``rows``
    leaves out (:data:`OPTIONAL`): the file's (a column typed differently by two inputs: their common supertype),
    text for the joined columns."""
    plain = pl.concat([pl.DataFrame(schema=pl.scan_parquet(Path(i.extract) / "faces.parquet").collect_schema())
                       for i in cfg.inputs], how="diagonal_relaxed").schema
    return {**{c: plain.get(c, pl.String) for c, t in rows.schema.items() if t == pl.Categorical},
            **{c: t for c, t in plain.items() if c not in rows.columns}}


def _as_given(rows: pl.DataFrame, types: dict[str, pl.DataType]) -> pl.DataFrame:
    """``rows`` with the columns of ``types`` as the inputs give them: cast, or (not held) null."""
    rows = rows.cast({c: t for c, t in types.items() if c in rows.columns})
    return rows.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in types.items() if c not in rows.columns)


def _one_chunk(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` with every column in one chunk, rechunked one column at a time (the copy costs a column, not a table):
    polars gathers rows of an ``Array`` column (box, landmarks, affine) held in several chunks 50 times slower (a
    streamed read gives dozens: 17 s against 1.2 s for 3.2M faces), and columns whose chunks do not line up are
    all copied by the next operation on the table."""
    for i, name in enumerate(df.columns):
        if df.get_column(name).n_chunks() > 1:
            df.replace_column(i, df.get_column(name).rechunk())
    return df


def _ordered(rows: pl.DataFrame, videos: pl.DataFrame, clips: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                              list[str]]:
    """The key order of ``rows`` and each row's split and cell (:class:`Samples`' ``order``, ``split_of``,
    ``cell_of`` and ``datasets``).

    The key order is computed without building the keys: a key is ``<dataset>__<video>__`` + a suffix
    (``<frame:06d>__<track>``, clips ``c<clip>__<track>``), and since no name starts or ends with ``_`` or holds
    ``__`` (:func:`~facepipe.ids.check_name`), no video's prefix is the start of another's, so sorting the keys sorts
    by the prefix first (ranked once per video) and by the suffix among a video's rows.

    Raises:
        IdError: a dataset or video id that cannot be part of a key.
    """
    _check_names(videos)
    prefix = pl.concat_str("dataset", "video_id", pl.lit(""), separator=KEY_SEP)
    rank = videos.select(prefix.rank("dense")).to_series()
    sort = pl.DataFrame({"rank": rank.gather(rows["_v"]), "suffix": rows.select(_key_suffix(clips)).to_series()})
    order = sort.select(pl.arg_sort_by("rank", "suffix", maintain_order=True)).to_series().to_numpy()
    del sort
    split_of = rows.select(pl.col("split").replace_strict({s: i for i, s in enumerate(SPLITS)}, default=len(SPLITS),
                                                          return_dtype=pl.Int8).fill_null(len(SPLITS)))
    datasets = videos["dataset"].unique().sort().to_list()
    cell_of = rows.select(pl.col("dataset").replace_strict({d: i for i, d in enumerate(datasets)},
                                                           return_dtype=pl.Int32) * 256
                          + pl.col("label").cast(pl.Int32).fill_null(-128) + 128)
    return order, split_of.to_series().to_numpy(), cell_of.to_series().to_numpy(), datasets


def _check_names(rows: pl.DataFrame) -> None:
    for kind in ("dataset", "video_id"):
        for name in rows[kind].unique().to_list():
            check_name(kind, name)


def _key_suffix(clips: bool) -> pl.Expr:
    """The part of a sample key after ``<dataset>__<video>__``."""
    middle = (pl.format("c{}", pl.col("clip_id").cast(pl.Int64)) if clips
              else pl.col("frame_index").cast(pl.Int64).cast(pl.String).str.zfill(6))
    return pl.concat_str([middle, pl.col("track_id").cast(pl.Int64).cast(pl.String)], separator=KEY_SEP)


def _key_expr(clips: bool) -> pl.Expr:
    return pl.concat_str([pl.col("dataset"), pl.col("video_id"), _key_suffix(clips)], separator=KEY_SEP).alias("key")


def sample_keys(rows: pl.DataFrame, clips: bool = False) -> pl.Expr:
    """The ``key`` column: :func:`~facepipe.ids.sample_key` of every row (:func:`~facepipe.ids.clip_key` with
    ``clips``), built by polars in one pass (3.2M keys in 0.3 s where a Python call per row took 5 s), the names
    checked once per distinct value.

    Raises:
        IdError: a dataset or video id that cannot be part of a key (:func:`~facepipe.ids.check_name`).
    """
    _check_names(rows)
    return _key_expr(clips)


def _is_clip_set(rows: pl.DataFrame) -> bool:
    """Whether the faces come from clip mode (every row has a ``clip_id``); a mix is an InputError."""
    if "clip_id" not in rows.columns:
        return False
    n_clip = rows.height - rows["clip_id"].null_count()
    if 0 < n_clip < rows.height:
        raise InputError(f"shard: {n_clip} of {rows.height} faces come from clip mode (sampling.mode clips), the "
                         "others from frame mode: a set holds one kind; shard them into separate folders")
    return n_clip > 0


_CLIP_FRAME_COLUMNS = ("frame_index", "timestamp_s", "box", "landmarks", "affine", "label", "label_source",
                       "manipulation_score", "gap", "crop_path", "mask_path", "crop_landmarks")
"""The face-row columns a clip row keeps per frame (lists in frame order)."""


def clip_rows(faces: pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, video, clip, track) of clip-mode face rows: the per-frame columns as lists in frame
    order (``frame_labels``, ``frame_label_sources`` for the faces' labels), the others as in the faces (one value
    per clip), the clip's ``label`` and ``label_source`` (:func:`facepipe.data.schema.clip_label`), and
    ``clip_length`` / ``frame_step``.

    Raises:
        InputError: clips of different lengths or frame steps in one set, or a clip whose frames are not evenly
            spaced (a stale or hand-edited ``faces.parquet``).
    """
    keys = ["dataset", "video_id", "clip_id", "track_id"]
    per_frame = [c for c in _CLIP_FRAME_COLUMNS if c in faces.columns]
    once = [c for c in faces.columns if c not in per_frame and c not in keys]
    src = {lab: pl.col("label_source").filter(pl.col("label") == lab).first().alias(f"_src{lab}")
           for lab in (1, 0, -1)}
    out = (faces.sort("frame_index").group_by(keys, maintain_order=True)
           .agg(*[pl.col(c) for c in per_frame], *[pl.col(c).first() for c in once], *src.values(),
                (pl.col("frame_index").diff().drop_nulls().unique().alias("_steps")))
           .rename({"label": "frame_labels", "label_source": "frame_label_sources"}))
    out = out.with_columns(
        pl.when(pl.col("frame_labels").list.contains(1)).then(1)
        .when(pl.col("frame_labels").list.contains(0)).then(0).otherwise(-1).cast(pl.Int8).alias("label"),
        pl.col("frame_index").list.len().alias("clip_length"))
    out = out.with_columns(
        pl.when(pl.col("label") == 1).then(pl.col("_src1")).when(pl.col("label") == 0).then(pl.col("_src0"))
        .otherwise(pl.col("_src-1")).alias("label_source"))
    lengths = out["clip_length"].unique().to_list()
    steps = out["_steps"].explode().drop_nulls().unique().to_list()
    uneven = out.filter(pl.col("_steps").list.len() > 1)
    if len(lengths) > 1 or len(steps) > 1 or uneven.height:
        raise InputError(f"shard: clips of lengths {sorted(lengths)} and frame steps {sorted(steps)} "
                         f"({uneven.height} clip(s) unevenly spaced): one set holds clips of one length and step; "
                         "rerun 'facepipe extract' or shard them apart")
    return out.with_columns(pl.lit(int(steps[0]) if steps else 1).alias("frame_step")).drop(
        "_src1", "_src0", "_src-1", "_steps")


def _view_params(cfg: ShardConfig) -> dict:
    """The freq parameters every input's stored views were computed with (one set for all, else InputError)."""
    found = {i.dataset: pl.read_parquet_metadata(Path(i.freq) / "views.parquet").get("facepipe_freq_params")
             for i in cfg.inputs}
    if len(set(found.values())) > 1 or None in found.values():
        raise InputError(f"shard: the datasets' views were computed with different freq parameters {found}; "
                         "rerun 'facepipe freq' with one freq section")
    return json.loads(next(iter(found.values())))


def _publish_local(out: Path, version: str, stage_fp: str, samples: Samples, stored: tuple[str, ...],
                   view_params: dict | None, cfg: ShardConfig, summary: ShardSummary, progress: bool, wds) -> None:
    """Write the set in a staging folder under ``out``, move it to ``out/<version>``, then publish ``index.json``
    (the one atomic step readers see) and remove older sets. Holds the stage lock of ``out`` throughout."""
    with contract.stage_lock(out, STAGE):
        for stale in out.glob(".staging-*"):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        stage = out / f".staging-{os.getpid()}"
        stage.mkdir()
        try:
            index = _write_set(stage, version, samples, stored, cfg, summary, progress, wds)
            _write_videos(stage, version, samples, index)
            _describe(index, samples.rows, view_params, cfg)
            (stage / META_NAME).write_text(_meta_json(cfg, stored, stage_fp, version))
            final = out / version
            if final.exists():
                shutil.rmtree(final)
            os.replace(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _write_card(out, index, version, samples.rows, cfg)
        with atomic_path(out / INDEX_NAME) as tmp:  # the publishing step
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        summary.published = True
        _write_stats(out, index, samples.rows)
        for old in out.iterdir():  # tars of the pre-versioned layout
            if old.is_file() and (old.suffix == ".tar" or old.name == META_NAME):
                old.unlink()
        sets = sorted(p.name for p in out.iterdir() if p.name.startswith(SET_PREFIX) and p.is_dir())
        retire_sets(sets, version, cfg.grace_hours, _LocalSets(out))


def _write_card(folder: Path, index: dict, version: str, allrows: pl.DataFrame, cfg: ShardConfig) -> None:
    """``README.md``: the set's Hugging Face dataset card (:mod:`facepipe.data.card`), written before the index is
    published (both sets exist then, so the card never names a missing one)."""
    info = {}
    for inp in cfg.inputs:  # the adapter and split report a manifest stage recorded (none in a hand-written CSV)
        meta = pl.read_parquet_metadata(inp.manifest) if Path(inp.manifest).suffix == ".parquet" else {}
        info[inp.dataset] = card.dataset_info(meta.get("facepipe_adapter"),
                                              json.loads(meta.get("facepipe_split_report", "{}")))
    with atomic_path(folder / CARD_NAME) as tmp:
        tmp.write_text(card.render(index, version, allrows, info, cfg.layout))


def _write_videos(stage: Path, version: str, samples: Samples, index: dict) -> None:
    """``videos.parquet`` of the set (one row per video: split, label, method, originals, people; see
    :mod:`facepipe.data.footprint`), named in the index: training records its footprint, evaluation checks test
    sets against it."""
    _video_table(samples).write_parquet(stage / VIDEOS_NAME)
    index["videos"] = f"{version}/{VIDEOS_NAME}"


def _video_table(samples: Samples) -> pl.DataFrame:
    """:func:`~facepipe.data.footprint.video_table` of the samples: the rows hold no per-video lists (they are in
    :attr:`Samples.videos`), so the table's ``source_ids`` and ``identity_ids`` are taken from there."""
    lists = samples.videos.select("dataset", "video_id", "source_ids", "identity_ids").unique(
        ["dataset", "video_id"], keep="first", maintain_order=True)
    table = video_table(samples.rows)  # without per-video lists: empty ones, replaced below
    return (table.drop("source_ids", "identity_ids").join(lists, on=["dataset", "video_id"], how="left",
                                                          maintain_order="left")
            .select([pl.col(c).cast(t) for c, t in VIDEO_TABLE_SCHEMA.items()]))


def _describe(index: dict, allrows: pl.DataFrame, view_params: dict | None, cfg: ShardConfig) -> None:
    """Set-wide facts readers need before opening a shard: view parameters, crop size, image format, the
    alignment preset when every sample has the same one (``deepfakebench``, ``deepfakebench-68``; else null), and
    ``extract``: per dataset, the settings its crops were made with (its extract output's ``extract.json``; null
    from an older facepipe), which training records in checkpoints for ``facepipe predict``."""
    reencode = cfg.reencode
    index["extract"] = {i.dataset: contract.read_extract_settings(i.extract) for i in cfg.inputs}
    sizes = allrows["crop_size"].unique().to_list()
    paths = allrows["crop_path"].explode() if allrows["crop_path"].dtype == pl.List(pl.String) else allrows["crop_path"]
    suffixes = paths.str.extract(r"\.([^./]*)$").fill_null("").str.to_lowercase().unique().to_list()
    formats = sorted({f.replace("jpeg", "jpg") for f in suffixes})
    presets = allrows["preset"].unique().to_list() if "preset" in allrows.columns else [None]
    points = None  # every frame sample's crop landmarks have this many points (SBI needs 68)
    if "crop_landmarks" in allrows.columns and allrows["crop_landmarks"].dtype != pl.List(
            pl.List(pl.Array(pl.Float32, 2))) and allrows["crop_landmarks"].null_count() == 0:  # (left out: none)
        counts = allrows["crop_landmarks"].list.len().unique().to_list()
        points = int(counts[0]) if len(counts) == 1 else None
    if reencode is not None:
        formats = [reencode.format]
    index.update(view_params=view_params, crop_size=sizes[0] if len(sizes) == 1 else None,
                 image_format=formats[0] if len(formats) == 1 else "mixed",
                 preset=presets[0] if len(presets) == 1 else None, crop_landmarks=points)


def _meta_json(cfg: ShardConfig, stored: tuple[str, ...], stage_fp: str, version: str) -> str:
    meta = {"schema_version": SCHEMA_VERSION, "facepipe_version": __version__, "params": cfg.model_dump(),
            "views": list(stored), "stage_fingerprint": stage_fp, "version": version}
    return json.dumps(meta, indent=1, sort_keys=True)


def _publish_remote(url: str, version: str, stage_fp: str, samples: Samples, stored: tuple[str, ...],
                    view_params: dict | None, cfg: ShardConfig, summary: ShardSummary, progress: bool, wds) -> None:
    """Write the set under an object-storage prefix: each tar uploaded (and deleted locally) as soon as it closes,
    then ``_meta.json``, ``stats.json``, ``counts.csv``, and ``index.json`` last (see :mod:`facepipe.data.storage`).
    Older ``set-*`` prefixes are removed after the new index is in place.

    Raises:
        OSError: an upload failed; the published index (if any) still names a complete older set.
    """
    import tempfile

    remote = storage.RemoteSet(url)
    with tempfile.TemporaryDirectory(prefix="facepipe-shard-") as tmp:
        stage = Path(tmp)

        def upload(fname: str) -> None:
            remote.put(Path(fname), f"{version}/{Path(fname).name}")

        index = _write_set(stage, version, samples, stored, cfg, summary, progress, wds, post=upload)
        _write_videos(stage, version, samples, index)
        remote.put(stage / VIDEOS_NAME, f"{version}/{VIDEOS_NAME}")
        _describe(index, samples.rows, view_params, cfg)
        (stage / META_NAME).write_text(_meta_json(cfg, stored, stage_fp, version))
        remote.put(stage / META_NAME, f"{version}/{META_NAME}")
        _write_stats(stage, index, samples.rows)
        for name in (STATS_NAME, COUNTS_NAME):
            remote.put(stage / name, name)
        _write_card(stage, index, version, samples.rows, cfg)
        remote.put(stage / CARD_NAME, CARD_NAME)
        (stage / INDEX_NAME).write_text(json.dumps(index, indent=1, sort_keys=True))
        remote.put(stage / INDEX_NAME, INDEX_NAME)  # the publishing step
        summary.published = True
    retire_sets(remote.sets(), version, cfg.grace_hours, remote)


class _LocalSets:
    """The set folders under a local output folder, for :func:`retire_sets` (same methods as
    :class:`~facepipe.data.storage.RemoteSet`)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def read(self, name: str) -> bytes | None:
        try:
            return (self.out / name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        with atomic_path(self.out / name) as tmp:
            tmp.write_bytes(data)

    def delete(self, name: str) -> None:
        (self.out / name).unlink(missing_ok=True)

    def remove_set(self, name: str) -> None:
        shutil.rmtree(self.out / name, ignore_errors=True)


def retire_sets(sets: list[str], current: str, grace_hours: float, store, now: float | None = None) -> list[str]:
    """The grace rule for replaced sets, applied after ``current``'s index is published: each other set gets a
    ``<set>/_replaced.json`` marker (``{"replaced_at": unix seconds, "by": current}``) the first time a run finds it
    replaced, and is removed by the first run at least ``grace_hours`` after that; ``current`` loses a marker left from
    an earlier replacement (a set published again is current again).

    Args:
        sets: the ``set-*`` names under the folder or prefix.
        current: the set the index now names.
        store: :class:`_LocalSets` or :class:`~facepipe.data.storage.RemoteSet` (``read``/``write``/``delete`` of a
            name relative to the folder, ``remove_set``).
        now: the time (unix seconds; default: now).

    Returns:
        The sets removed.
    """
    now = time.time() if now is None else now
    store.delete(f"{current}/{REPLACED_NAME}")
    removed = []
    for name in sets:
        if name == current:
            continue
        raw = store.read(f"{name}/{REPLACED_NAME}")
        try:
            since = float(json.loads(raw)["replaced_at"]) if raw is not None else None
        except (ValueError, KeyError, TypeError):
            since = None  # an unreadable marker: the grace starts again
        if since is None:
            since = now
            store.write(f"{name}/{REPLACED_NAME}", json.dumps({"replaced_at": now, "by": current}).encode())
        if now - since >= grace_hours * 3600:
            store.remove_set(name)
            removed.append(name)
    if removed:
        log.info("removed replaced shard set(s) %s (older than %g h)", ", ".join(removed), grace_hours)
    return removed


def _write_set(stage: Path, version: str, samples: Samples, stored: tuple[str, ...], cfg: ShardConfig,
               summary: ShardSummary, progress: bool, wds, post=None) -> dict:
    """Write the split tars under ``stage`` and return the index. ``post(fname)``, when given, is called with each
    tar as soon as it is closed (the remote writer uploads it); the tar is deleted locally afterwards."""
    index = {"schema_version": SCHEMA_VERSION, "version": version, "total": 0, "views": list(stored),
             "masks": cfg.masks, "splits": {}, "sample_kind": "frame"}
    rows = samples.rows
    if "clip_length" in rows.columns:
        index.update(sample_kind="clip", clip_length=int(rows["clip_length"][0]), frame_step=int(rows["frame_step"][0]))
    # Open npz files are cached for this run only: a later freq run may rewrite them under the same names.
    npz = lru_cache(maxsize=64)(lambda path: np.load(path, allow_pickle=False))
    bar = tqdm(total=samples.height, unit="sample", desc="shard", disable=not progress)
    try:
        _write_splits(stage, version, samples, stored, cfg, summary, index, npz, bar, post, wds)
    finally:
        bar.close()
        npz.cache_clear()
    return index


def _write_splits(stage: Path, version: str, samples: Samples, stored: tuple[str, ...], cfg: ShardConfig,
                  summary: ShardSummary, index: dict, npz, bar, post, wds) -> None:
    """Each split's groups (:func:`_groups`), each in key order shuffled by the seed, the split and the group."""
    for s_i, split in enumerate(SPLITS):
        shards: list[dict] = []
        n = 0
        for g_i, (pattern, positions) in enumerate(_groups(samples, s_i, cfg.layout)):
            order = np.random.default_rng([cfg.seed, s_i] + ([] if cfg.layout == "mixed" else [g_i]))
            positions = positions[order.permutation(len(positions))]
            n += len(positions)
            shards += _write_group(stage / pattern, version, samples, positions, stored, cfg, index, npz, bar, post,
                                   wds, summary)
        for sh in shards:
            for k, c in sh["label_sources"].items():
                summary.label_sources[k] = summary.label_sources.get(k, 0) + c
        index["splits"][split] = {"samples": n, "shards": shards}
        index["total"] += n
        summary.samples[split] = n
        summary.shards[split] = len(shards)
        summary.bytes += sum(s["bytes"] for s in shards)


def _groups(samples: Samples, s_i: int, layout: str) -> list[tuple[str, np.ndarray]]:
    """(tar name pattern, row positions in key order) per group of split ``SPLITS[s_i]``: one group (``mixed``), or
    one per (dataset, label) cell sorted by dataset and label (``cells``)."""
    split = SPLITS[s_i]
    positions = samples.split_positions(s_i)
    if not len(positions):
        return []
    if layout == "mixed":
        return [(f"{split}-%06d.tar", positions)]
    cells = samples.cell_of[positions]
    return [(f"{split}-{samples.datasets[c // 256]}-{FACE_LABEL_NAMES[c % 256 - 128]}-%06d.tar",
             positions[cells == c]) for c in np.unique(cells).tolist()]


def _write_group(pattern: Path, version: str, samples: Samples, positions: np.ndarray, stored: tuple[str, ...],
                 cfg: ShardConfig, index: dict, npz, bar, post, wds, summary: ShardSummary) -> list[dict]:
    """Write the rows at ``positions`` in order (read :data:`_CHUNK` at a time) to tars named by ``pattern``
    (closed at ``max_samples`` / ``max_bytes``); returns their index entries (url, samples, bytes and counts)."""
    stats: dict[str, dict] = {}
    sizes: dict[str, int] = {}

    def closed(fname: str) -> None:
        sizes[fname] = Path(fname).stat().st_size
        _faults.at_shard(Path(fname).name)
        if post is not None:
            post(fname)
            Path(fname).unlink()

    sink = wds.ShardWriter(str(pattern), maxcount=cfg.max_samples, maxsize=cfg.max_bytes, verbose=0, mtime=0,
                           user="facepipe", group="facepipe", mode=0o444, post=closed)
    try:
        make = _clip_sample if index["sample_kind"] == "clip" else _sample
        for r in (r for i in range(0, len(positions), _CHUNK)
                  for r in samples.rows_at(positions[i:i + _CHUNK]).iter_rows(named=True)):
            sample = make(r, stored, npz, cfg.masks, cfg.reencode)
            if stored and "view_shapes" not in index:
                index["view_shapes"] = {v: list(npz_shape(sample[f"{v}.npy"])) for v in stored}
            sink.write(sample)
            st = stats.setdefault(sink.fname, {"samples": 0, "datasets": Counter(), "labels": Counter(),
                                               "methods": Counter(), "cells": Counter(),
                                               "label_sources": Counter()})
            name = FACE_LABEL_NAMES[r["label"]]
            st["samples"] += 1
            st["datasets"][r["dataset"]] += 1
            st["labels"][name] += 1
            st["methods"][r["method"] or "unknown"] += 1
            st["cells"][f"{r['dataset']}:{name}"] += 1
            st["label_sources"][f"{r['label_source']}:{name}"] += 1
            bar.update(1)
            summary.written += 1
    except BaseException:
        sink.post = None  # a failed run hands on no partial tar (nor retries a failed upload)
        raise
    finally:
        sink.close()
    return [{"url": f"{version}/{Path(fname).name}", "samples": st["samples"], "bytes": sizes[fname],
             **{k: dict(sorted(st[k].items())) for k in ("datasets", "labels", "methods", "cells", "label_sources")}}
            for fname, st in stats.items()]


def npz_shape(npy: bytes) -> tuple[int, ...]:
    """Shape of a stored ``.npy`` member."""
    from facepipe.data.schema import npy_load

    return tuple(npy_load(npy).shape)


def _write_stats(folder: Path, index: dict, rows: pl.DataFrame) -> None:
    """``stats.json`` (DVC metrics: samples, videos, fake share, bytes per sample, per split) and
    ``counts.csv`` (DVC plot data: samples per split, dataset and label), each written atomically."""
    stats: dict = {"samples": index["total"], "splits": {}}
    rows = rows.select("split", "dataset", "video_id", "label")  # text or Categorical (see Samples)
    for split, info in index["splits"].items():
        r = rows.filter(pl.col("split") == split)
        n = info["samples"]
        stats["splits"][split] = {
            "samples": n,
            "videos": r.select("dataset", "video_id").unique().height,
            "fake_share": round(float((r["label"] == 1).mean()), 4) if n else 0.0,
            "bytes_per_sample": round(sum(s["bytes"] for s in info["shards"]) / n) if n else 0,
        }
    with atomic_path(folder / STATS_NAME) as tmp:
        tmp.write_text(json.dumps(stats, indent=1, sort_keys=True))
    counts = (rows.group_by("split", "dataset", "label").len().rename({"len": "samples"})
              .with_columns(pl.col("split", "dataset").cast(pl.String),
                            pl.col("label").replace_strict(FACE_LABEL_NAMES, return_dtype=pl.String))
              .with_columns(pl.concat_str("split", "dataset", "label", separator="/").alias("group"))
              .sort("split", "dataset", "label"))
    with atomic_path(folder / COUNTS_NAME) as tmp:
        counts.select("group", "split", "dataset", "label", "samples").write_csv(tmp)


def _source(r: dict) -> dict:
    """The source video's properties a sample records (the shortcut probe's nuisance features): width, height (after
    rotation), bitrate in kbit/s (file size over duration) and codec; ``None`` where extract did not record them."""
    def first(k):  # clip rows hold one value per frame
        v = r.get(k)
        return v[0] if isinstance(v, list) else v

    kbps = first("source_kbps")
    return {"width": first("source_width"), "height": first("source_height"),
            "kbps": None if kbps is None or not np.isfinite(kbps) else float(kbps), "codec": first("source_codec")}


def reencoded(image: bytes, ext: str, reencode: ReencodeConfig | None, where: str) -> tuple[bytes, str]:
    """``image`` re-encoded as ``reencode`` says (JPEG at its quality, by OpenCV: byte-identical run to run), else as
    it is.

    Raises:
        InputError: the crop does not decode (naming ``where``).
    """
    if reencode is None:
        return image, ext
    import cv2

    bgr = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"{where}: crop does not decode; cannot re-encode it")
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, reencode.quality])
    return buf.tobytes(), "jpg"


def _sample(r: dict, views: tuple[str, ...], npz, masks: bool, reencode: ReencodeConfig | None = None) -> dict:
    root = Path(r["_root"])
    crop = root / r["crop_path"]
    try:
        image = crop.read_bytes()
        mask = (root / r["mask_path"]).read_bytes() if masks and r.get("mask_path") else None
    except OSError as e:
        raise InputError(f"{e.filename}: cannot read: {e.strerror}") from None
    arrays = {}
    if views:
        z = npz(str(Path(r["_freq"]) / r["npz"]))
        for v in views:
            arrays[v] = z[f"{r['member']}/{v}"]
    meta = {
        "label": int(r["label"]), "video_label": int(r["video_label"]), "label_source": r["label_source"],
        "manipulation_score": None if r["manipulation_score"] is None else round(float(r["manipulation_score"]), 6),
        "dataset": r["dataset"], "method": r["method"], "split": r["split"], "video_id": r["video_id"],
        "source_ids": list(r["source_ids"] or []), "frame_index": int(r["frame_index"]),
        "timestamp_s": None if r["timestamp_s"] is None else float(r["timestamp_s"]),
        "track_id": int(r["track_id"]), "box": list(r["box"]),
        "landmarks": None if r["landmarks"] is None else [list(p) for p in r["landmarks"]],
        "affine": [list(p) for p in r["affine"]], "crop_size": int(r["crop_size"]), "crop_mode": r["crop_mode"],
        "detector": r["detector"], "detector_version": r["detector_version"], "preset": r.get("preset"),
        "crop_landmarks": None if r.get("crop_landmarks") is None else [list(p) for p in r["crop_landmarks"]],
        "source": _source(r),
    }
    ext = crop.suffix.lstrip(".").lower()
    image, ext = reencoded(image, "jpg" if ext == "jpeg" else ext, reencode, str(crop))
    return encode_sample(r["key"], image, ext, meta, arrays, mask, masks=masks)


def _clip_sample(r: dict, views: tuple[str, ...], npz, masks: bool, reencode: ReencodeConfig | None = None) -> dict:
    """A clip row of :func:`clip_rows` as a clip sample (:func:`facepipe.data.schema.encode_clip_sample`)."""
    root = Path(r["_root"])
    try:
        images = [(root / c).read_bytes() for c in r["crop_path"]]
        frame_masks = ([(root / m).read_bytes() if m else None for m in r["mask_path"]] if masks else None)
    except OSError as e:
        raise InputError(f"{e.filename}: cannot read: {e.strerror}") from None
    meta = {
        "video_label": int(r["video_label"]), "dataset": r["dataset"], "method": r["method"], "split": r["split"],
        "video_id": r["video_id"], "source_ids": list(r["source_ids"] or []), "clip_id": int(r["clip_id"]),
        "clip_start": int(r["clip_start"]), "clip_length": int(r["clip_length"]), "frame_step": int(r["frame_step"]),
        "track_id": int(r["track_id"]), "frame_indices": [int(i) for i in r["frame_index"]],
        "timestamps_s": [None if t is None else float(t) for t in r["timestamp_s"]],
        "boxes": [list(b) for b in r["box"]], "landmarks": [[list(p) for p in lm] for lm in r["landmarks"]],
        "affines": [[list(p) for p in a] for a in r["affine"]], "frame_labels": [int(x) for x in r["frame_labels"]],
        "frame_label_sources": list(r["frame_label_sources"]),
        "manipulation_scores": [None if x is None else round(float(x), 6) for x in r["manipulation_score"]],
        "gaps": [bool(g) for g in r["gap"]], "crop_size": int(r["crop_size"]), "crop_mode": r["crop_mode"],
        "detector": r["detector"], "detector_version": r["detector_version"], "preset": r.get("preset"),
        "crop_landmarks": [None if c is None else [list(p) for p in c] for c in r["crop_landmarks"]],
        "source": _source(r),
    }
    ext = Path(r["crop_path"][0]).suffix.lstrip(".").lower()
    ext = "jpg" if ext == "jpeg" else ext
    if reencode is not None:
        images = [reencoded(b, ext, reencode, str(root / c))[0] for b, c in zip(images, r["crop_path"])]
        ext = "jpg"
    return encode_clip_sample(r["key"], images, ext, meta, frame_masks)
