"""The extract stage's inputs: videos found under ``--video-dir`` or listed in a manifest (:class:`VideoJob`), their
file fingerprints, and the tasks they are grouped into (:class:`Task`: an original decoded once with its fakes)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import polars as pl

from facepipe.errors import InputError
from facepipe.ids import IdError, qualify, unique_video_ids


@dataclass(frozen=True)
class VideoJob:
    """One input. ``path`` absolute; ``rel`` relative to the video folder (``/`` separated).

    ``label``/``method``/``sources`` come from the manifest (``None``/empty without one); ``original`` is
    the video id of the original this run compares the fake with (``None``: none available);
    ``original_note`` says why not, when the manifest names one.
    """

    path: str
    rel: str
    video_id: str
    size: int
    mtime_ns: int
    label: int | None = None
    method: str | None = None
    sources: tuple[str, ...] = ()
    original: str | None = None
    original_note: str | None = None


def discover_videos(video_dir: str | Path, extensions: tuple[str, ...]) -> list[VideoJob]:
    """List the video files below ``video_dir`` (recursive, hidden entries skipped), sorted by path.

    Ids colliding after :func:`~facepipe.ids.video_id_for` (e.g. ``a.mp4`` and ``a.avi``) get the path hash
    appended (:func:`~facepipe.ids.unique_video_ids`). An entry that cannot be stat'ed (a dangling symlink, a
    symlink loop) is still listed, with ``size`` -1, so the stage records it as ``decode_error`` ("cannot read")
    instead of the run failing.

    Raises:
        InputError: ``video_dir`` is missing, not a folder, or holds no file with a video extension (or two files
            whose ids cannot be told apart).
    """
    root = Path(video_dir)
    if not root.exists():
        raise InputError(f"{root}: video folder does not exist")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    exts = {e.lower() for e in extensions}
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in exts:
                continue
            rels.append(Path(dirpath, name).relative_to(root).as_posix())
    if not rels:
        raise InputError(f"{root}: no video files (looked for {', '.join(sorted(exts))})")
    rels.sort()
    try:
        ids = unique_video_ids(rels)
    except IdError as e:
        raise InputError(f"{root}: {e}") from None
    jobs = []
    for r in rels:
        vid = ids[r]
        try:
            st = (root / r).stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        jobs.append(VideoJob(_absolute(root / r), r, vid, size, mtime))
    return jobs


def _absolute(p: Path) -> str:
    """``p`` with its symlinks resolved, or only made absolute when they cannot be: a dangling symlink keeps its
    own name (the worker's message then names the link the user sees, not its missing target), and so does a
    symlink loop (on which ``Path.resolve`` raises ``RuntimeError`` before Python 3.13, ``OSError`` after)."""
    try:
        return str(p.resolve(strict=True))
    except (OSError, RuntimeError):
        return os.path.abspath(p)


def _tree_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def jobs_from_manifest(video_dir: str | Path, manifest: pl.DataFrame) -> list[VideoJob]:
    """Inputs listed in a manifest (``path`` relative to ``video_dir`` or absolute; ids, labels and links as
    the manifest says).

    Paths may be video files or image-sequence folders. Listed paths that do not exist are still returned
    (``size`` -1) so the stage records them as ``decode_error`` instead of silently skipping. A fake's
    original is its first ``source_ids`` entry when that video is listed too.

    Raises:
        InputError: ``video_dir`` is missing or the manifest lists nothing.
    """
    root = Path(video_dir)
    if not root.is_dir():
        raise InputError(f"{root}: video folder does not exist")
    if manifest.height == 0:
        raise InputError("the manifest lists no videos")
    listed = set(manifest["video_id"].to_list())
    jobs = []
    cols = manifest.select("dataset", "path", "video_id", "label", "method", "source_ids").sort("path")
    for ds, rel, vid, label, method, sources in cols.iter_rows():
        p = root / rel
        try:
            st = p.stat()
            size = _tree_size(p) if p.is_dir() else st.st_size
            mtime = st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        original = note = None
        if label == 1 and sources:
            d, v = qualify(ds, sources[0])
            if d == ds and v in listed:
                original = v
            else:
                note = f"original {sources[0]} is not among this run's inputs"
        jobs.append(VideoJob(_absolute(p), rel, vid, size, mtime, None if label is None else int(label), method,
                             tuple(sources or ()), original, note))
    return jobs


def file_sha256(path: str) -> str:
    """sha256 hex digest of a file (or of an image folder's files in name order), read in 1 MiB blocks."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.is_file()) if p.is_dir() else [p]
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def input_sha256(path: str) -> str | None:
    """:func:`file_sha256` of an input, or ``None`` when it is neither a regular file nor a folder (a FIFO, whose
    reading would block the run forever; a device; a dangling symlink or a symlink loop) or cannot be read: the
    worker then records why, as a ``decode_error`` or ``unsupported`` row."""
    import stat

    try:
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            return None
        return file_sha256(path)
    except OSError:
        return None


@dataclass
class Task:
    """One unit of worker work: an original (decoded once) and the fakes compared with it.

    ``reference`` is decoded as the fakes' original; it is also processed (crops, rows) when
    ``process_reference``. Without a reference, ``videos`` are processed alone (labels by policy).
    ``keys`` holds each processed video's cache key and ``shas`` the sha256 when computed.
    """

    reference: Optional[VideoJob]
    process_reference: bool
    videos: list[VideoJob]
    keys: dict[str, str]
    shas: dict[str, str]

    def processed(self) -> list[VideoJob]:
        return ([self.reference] if self.reference is not None and self.process_reference else []) + self.videos

    def size(self) -> int:
        return len(self.videos) + (1 if self.reference is not None else 0)


def plan_tasks(jobs: list[VideoJob], pending: set[str], by_id: dict[str, VideoJob], keys: dict[str, str],
               shas: dict[str, str]) -> list[Task]:
    """Group pending videos into tasks: each original with its pending fakes (decoded once), the rest alone."""
    fakes_of: dict[str, list[VideoJob]] = {}
    for j in jobs:
        if j.video_id in pending and j.original is not None:
            fakes_of.setdefault(j.original, []).append(j)
    tasks = []
    grouped = {f.video_id for fs in fakes_of.values() for f in fs}
    for j in jobs:
        if j.video_id in grouped:
            continue
        fakes = fakes_of.pop(j.video_id, [])
        if j.video_id in pending or fakes:
            tasks.append(Task(j, j.video_id in pending, fakes, keys, shas))
    for orig, fakes in fakes_of.items():  # originals that are fakes themselves (chains) or not planned above
        tasks.append(Task(by_id[orig], False, fakes, keys, shas))
    return tasks


def split_task(task: Task) -> list[Task]:
    """One task per processed video (each fake keeps its original): isolates the video that failed."""
    out = []
    if task.reference is not None and task.process_reference:
        out.append(Task(task.reference, True, [], task.keys, task.shas))
    out += [Task(task.reference, False, [v], task.keys, task.shas) for v in task.videos]
    return out
