"""THE shard sample schema: key format, fields and their extensions, encode/decode, SCHEMA_VERSION.

A sample is a group of tar members sharing a key::

    <dataset>__<video_id>__<frame:06d>__<track>.png      the crop (or .jpg), as extract wrote it
    <dataset>__<video_id>__<frame:06d>__<track>.json     metadata (META_FIELDS), sorted keys
    <dataset>__<video_id>__<frame:06d>__<track>.cls      label as ASCII: 0 real, 1 fake
    <dataset>__<video_id>__<frame:06d>__<track>.<view>.npy   each stored frequency view, float16 (C, H, W)

Keys contain no dots (webdataset splits the member name at the first dot) and the parts never
contain ``__``. Writer, loader, inspect and tests all go through this module.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np

from facepipe.errors import FacepipeError

SCHEMA_VERSION = 1
KEY_SEP = "__"
IMAGE_EXTS = ("png", "jpg")
SPLITS = ("train", "val", "test")
LABEL_NAMES = {0: "real", 1: "fake"}
META_FIELDS = (
    "key", "label", "label_name", "dataset", "method", "split", "video_id", "source_ids", "frame_index",
    "timestamp_s", "track_id", "box", "landmarks", "affine", "crop_size", "crop_mode", "detector",
    "detector_version", "schema_version",
)
"""Fields of the ``json`` member. ``box``/``landmarks``/``affine`` are in source-frame pixels as in
``faces.parquet``; ``source_ids`` lists the original video ids a fake was made from (empty for reals)."""

_PART = re.compile(r"^[A-Za-z0-9_-]+$")


class SchemaError(FacepipeError):
    """A sample or shard set does not follow this schema (names the shard and key when known)."""


def check_name(kind: str, value: str) -> str:
    """Raise :class:`SchemaError` unless ``value`` is usable as a key part (``[A-Za-z0-9_-]``, no ``__``)."""
    if not _PART.match(value) or KEY_SEP in value:
        raise SchemaError(f"{kind} '{value}' cannot be part of a sample key: use letters, digits, '-' and "
                          f"single '_' only")
    return value


def sample_key(dataset: str, video_id: str, frame_index: int, track_id: int) -> str:
    """``<dataset>__<video_id>__<frame:06d>__<track>``."""
    return KEY_SEP.join([check_name("dataset", dataset), check_name("video_id", video_id),
                         f"{int(frame_index):06d}", str(int(track_id))])


def parse_key(key: str) -> tuple[str, str, int, int]:
    """Inverse of :func:`sample_key`.

    Raises:
        SchemaError: the key does not have four ``__``-separated parts.
    """
    parts = key.split(KEY_SEP)
    if len(parts) != 4:
        raise SchemaError(f"sample key '{key}' is not <dataset>__<video_id>__<frame>__<track>")
    return parts[0], parts[1], int(parts[2]), int(parts[3])


def npy_bytes(a: np.ndarray) -> bytes:
    """``np.save`` bytes of ``a`` (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def npy_load(b: bytes) -> np.ndarray:
    """Inverse of :func:`npy_bytes`."""
    return np.load(io.BytesIO(b), allow_pickle=False)


def encode_sample(key: str, image: bytes, image_ext: str, meta: dict[str, Any],
                  views: dict[str, np.ndarray]) -> dict[str, Any]:
    """Build the member dict for ``webdataset.TarWriter`` (all values bytes).

    Args:
        key: from :func:`sample_key`.
        image: encoded crop bytes (PNG or JPEG), stored as is.
        image_ext: ``png`` or ``jpg``.
        meta: the :data:`META_FIELDS` (``key`` and ``schema_version`` are filled in).
        views: view name -> (C, H, W) array, stored as float16 ``.npy``.

    Raises:
        SchemaError: unknown image extension, missing metadata fields or a bad label.
    """
    if image_ext not in IMAGE_EXTS:
        raise SchemaError(f"{key}: image extension must be one of {IMAGE_EXTS}, got {image_ext}")
    meta = {**meta, "key": key, "schema_version": SCHEMA_VERSION}
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise SchemaError(f"{key}: metadata lacks {missing}")
    if meta["label"] not in LABEL_NAMES:
        raise SchemaError(f"{key}: label must be 0 (real) or 1 (fake), got {meta['label']!r}")
    out: dict[str, Any] = {"__key__": key, image_ext: image,
                           "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                           "cls": str(int(meta["label"])).encode()}
    for name, arr in views.items():
        out[f"{name}.npy"] = npy_bytes(np.asarray(arr, dtype=np.float16))
    return out


def decode_sample(sample: dict[str, Any], views: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check and decode one raw webdataset sample (member name suffix -> bytes).

    Returns:
        ``{"key", "image": (H, W, 3) uint8 RGB, "meta": dict, "label": int, <view>: float32 (C, H, W)}``
        for each name in ``views``.

    Raises:
        SchemaError: naming the shard (``__url__``) and key: a missing field, a schema-version
            mismatch, a label disagreeing between ``cls`` and ``json``, an image that does not decode.
    """
    import cv2

    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}: sample {key}"
    if "json" not in sample:
        raise SchemaError(f"{where}: missing field 'json'")
    try:
        meta = json.loads(sample["json"])
    except ValueError as e:
        raise SchemaError(f"{where}: json does not parse: {e}") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema version {meta.get('schema_version')} but this facepipe reads "
                          f"{SCHEMA_VERSION}; rebuild the shards with 'facepipe shard'")
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        raise SchemaError(f"{where}: missing image field (one of {IMAGE_EXTS})")
    if "cls" not in sample:
        raise SchemaError(f"{where}: missing field 'cls'")
    label = int(sample["cls"])
    if label != meta.get("label"):
        raise SchemaError(f"{where}: cls {label} disagrees with json label {meta.get('label')}")
    img = cv2.imdecode(np.frombuffer(sample[ext], np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise SchemaError(f"{where}: {ext} image does not decode")
    out = {"key": key, "image": cv2.cvtColor(img, cv2.COLOR_BGR2RGB), "meta": meta, "label": label}
    for v in views:
        name = f"{v}.npy"
        if name not in sample:
            raise SchemaError(f"{where}: view '{v}' is not stored in this shard (stored: "
                              f"{sorted(k[:-4] for k in sample if k.endswith('.npy'))})")
        out[v] = npy_load(sample[name]).astype(np.float32)
    return out
