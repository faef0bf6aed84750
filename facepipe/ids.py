"""Names at the bottom of the import graph: video ids, sample keys, qualified ids, splits, labels, extensions.

Every other module (manifest, adapters, extract, shard, loader) derives ids and keys here, so they agree
and no stage has to import another stage to name a video.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from typing import Iterable

from facepipe.errors import FacepipeError

KEY_SEP = "__"
"""Separator of the parts of a sample key (never inside a part)."""

SPLITS = ("train", "val", "test")
LABEL_NAMES = {0: "real", 1: "fake"}
UNCERTAIN_LABEL = -1
"""A face of a fake video its original does not show to be manipulated (``label_source``
``original_diff_uncertain``): kept, but left out of losses and frame-level metrics."""
FACE_LABEL_NAMES = {**LABEL_NAMES, UNCERTAIN_LABEL: "uncertain"}
"""Face labels (a video's label is 0 or 1)."""
LABEL_SOURCES = ("original_diff", "original_diff_uncertain", "policy", "video", "sbi")
"""How a face's label was decided: ``original_diff`` (compared with the original at the same frame),
``original_diff_uncertain`` (compared, below the pair's noise: label -1, ``labels.unmanipulated: ignore``),
``policy`` (a fake without a usable original: the track policy decided), ``video`` (a real video: every
face is real), ``sbi`` (a self-blended fake the loader made from a real face: :mod:`facepipe.data.sbi`; never
stored in shards)."""

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

_PART = re.compile(r"[A-Za-z0-9_-]+")  # fullmatch: "$" would let a trailing newline through
_ID_BAD = re.compile(r"[^A-Za-z0-9_-]+")
_INT = re.compile(r"-?[0-9]+")  # ASCII only: int() also reads "+1", "1_0" and other scripts' digits


class IdError(FacepipeError):
    """A dataset name, video id or key cannot be used (names the value)."""


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it can be a key part: ``[A-Za-z0-9_-]``, never ``__``, and no ``_`` at either end.

    The ends matter because parts are joined with ``__``: ``("ds_", "x")`` and ``("ds", "_x")`` would both
    give ``ds___x``. With no part starting or ending in ``_``, every key splits back into one set of parts.

    Raises:
        IdError: naming ``kind`` and ``value``.
    """
    if (not isinstance(value, str) or not _PART.fullmatch(value) or KEY_SEP in value
            or value.startswith("_") or value.endswith("_")):
        raise IdError(f"{kind} '{value}' cannot be part of a sample key: use letters, digits, '-' and "
                         f"single '_' only, never '_' first or last")
    return value


def video_id_for(rel_path: str) -> str:
    """Stable, WebDataset-safe id for a video from its path relative to the video folder.

    Folder separators become ``-``, the extension is dropped, any other character outside
    ``[A-Za-z0-9_-]`` (dots included) becomes ``_`` and runs of ``_`` are collapsed so the id never
    contains ``__`` (the sample-key separator). When that changed anything beyond separators and
    extension, 8 hex characters of the path's sha1 are appended so distinct paths stay distinct.
    Absolute paths (inputs outside the dataset root, e.g. DeeperForensics' FF++ targets) keep only their
    last four components. Paths that needed no change beyond that can share an id (``x.mp4`` and ``x.avi``,
    ``a/b.mp4`` and ``a-b.mp4``): :func:`unique_video_ids` names the videos of a set apart.

    >>> video_id_for("ffpp/original_634.mp4")
    'ffpp-original_634'
    """
    rel = rel_path.replace(os.sep, "/")
    if rel.startswith("/"):
        rel = "/".join(rel.strip("/").split("/")[-4:])
    stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
    plain = stem.replace("/", "-")
    clean = re.sub(r"_{2,}", "_", _ID_BAD.sub("_", plain)).strip("_-") or "video"
    if clean != plain:
        clean = f"{clean}-{_path_hash(rel_path)}"
    return clean


def _path_hash(rel_path: str) -> str:
    # surrogatepass: a file name that is not UTF-8 comes from os.walk with lone surrogates (surrogateescape);
    # every other path hashes as its UTF-8 bytes, as before
    return hashlib.sha1(rel_path.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def unique_video_ids(rel_paths: Iterable[str]) -> dict[str, str]:
    """The ids of a set of videos: :func:`video_id_for` of each path, with 8 hex characters of the path's sha1
    appended where distinct paths share an id.

    :func:`video_id_for` maps some distinct paths to one id (``x.mp4`` and ``x.avi``: the extension is dropped;
    ``a/b.mp4`` and ``a-b.mp4``: folder separators become ``-``; absolute paths with the same last four
    components). Ids of paths that share theirs with no other path of the set are :func:`video_id_for`'s, so
    no existing id changes; the extract stage names the videos of a folder the same way. A path listed twice
    is one video (its one id).

    Returns:
        ``{path: video id}`` for every distinct path, ids pairwise distinct.

    Raises:
        IdError: two paths still share an id after the hash was appended (both named; e.g. a file whose own
            name is another's id with the hash).
    """
    base = {p: video_id_for(p) for p in dict.fromkeys(rel_paths)}
    counts = Counter(base.values())
    out = {p: f"{v}-{_path_hash(p)}" if counts[v] > 1 else v for p, v in base.items()}
    owner: dict[str, str] = {}
    for p, v in out.items():
        if owner.setdefault(v, p) != p:
            raise IdError(f"'{owner[v]}' and '{p}' both map to video id '{v}': give one of them a video_id")
    return out


def sample_key(dataset: str, video_id: str, frame_index: int, track_id: int) -> str:
    """``<dataset>__<video_id>__<frame:06d>__<track>`` (no dots: webdataset splits member names at the first dot)."""
    return KEY_SEP.join([check_name("dataset", dataset), check_name("video_id", video_id),
                         f"{int(frame_index):06d}", str(int(track_id))])


def clip_key(dataset: str, video_id: str, clip_id: int, track_id: int) -> str:
    """``<dataset>__<video_id>__c<clip>__<track>``: the key of a clip sample (``sampling.mode: clips``), one per
    (video, clip, track of the clip)."""
    return KEY_SEP.join([check_name("dataset", dataset), check_name("video_id", video_id), f"c{int(clip_id)}",
                         str(int(track_id))])


def parse_key(key: str) -> tuple[str, str, int, int]:
    """Inverse of :func:`sample_key`: every key it accepts is the one :func:`sample_key` makes of its parts.

    Raises:
        IdError: the key does not have four ``__``-separated parts, a name part that :func:`check_name` refuses,
            or a frame / track that is not written as :func:`sample_key` writes it (ASCII digits, the frame
            zero-padded to 6).
    """
    parts = key.split(KEY_SEP) if isinstance(key, str) else []
    if len(parts) != 4:
        raise IdError(f"sample key '{key}' is not <dataset>__<video_id>__<frame>__<track>")
    dataset, video_id, frame, track = parts
    check_name("dataset", dataset)
    check_name("video_id", video_id)
    if not (_INT.fullmatch(frame) and f"{int(frame):06d}" == frame and _INT.fullmatch(track)
            and str(int(track)) == track):
        raise IdError(f"sample key '{key}': frame '{frame}' and track '{track}' are not written as sample_key "
                      "writes them (integers, the frame zero-padded to 6 digits)")
    return dataset, video_id, int(frame), int(track)


def qualify(dataset: str, ref: str) -> tuple[str, str]:
    """Split a video reference into ``(dataset, video_id)``.

    ``"ffpp:original_sequences-youtube-c23-videos-000"`` names a video of another dataset; a bare id
    belongs to ``dataset``.
    """
    if ":" in ref:
        d, v = ref.split(":", 1)
        return d, v
    return dataset, ref


__all__ = ["FACE_LABEL_NAMES", "IMAGE_EXTS", "KEY_SEP", "LABEL_NAMES", "LABEL_SOURCES", "UNCERTAIN_LABEL",
           "IdError", "SPLITS", "VIDEO_EXTS",
           "check_name", "clip_key", "parse_key", "qualify", "sample_key", "unique_video_ids", "video_id_for"]
