"""THE shard sample schema: key format, fields and their extensions, encode/decode, SCHEMA_VERSION.

A sample is a group of tar members sharing a key::

    <dataset>__<video_id>__<frame:06d>__<track>.png        the crop (or .jpg), as extract wrote it
    <dataset>__<video_id>__<frame:06d>__<track>.json       metadata (META_FIELDS), sorted keys
    <dataset>__<video_id>__<frame:06d>__<track>.cls        the face's label as ASCII: 0 real, 1 fake
    <dataset>__<video_id>__<frame:06d>__<track>.mask.png   (shards with masks: every sample) the difference
                                                           mask warped like the crop, 255 = manipulated; all
                                                           zero where there is none (``has_mask`` false)
    <dataset>__<video_id>__<frame:06d>__<track>.<view>.npy each stored frequency view, float16 (C, H, W)

Keys contain no dots (webdataset splits the member name at the first dot) and the parts never contain
``__``. Writer, loader, inspect and tests all go through this module.

A *clip* sample (a set extracted with ``sampling.mode: clips``; the index says ``"sample_kind": "clip"``) is one
(video, clip, track) of T consecutive crops::

    <dataset>__<video_id>__c<clip>__<track>.<t:02d>.png       crop t of the clip (t = 0 .. T-1), as extract wrote it
    <dataset>__<video_id>__c<clip>__<track>.<t:02d>.mask.png  (shards with masks) its difference mask
    <dataset>__<video_id>__c<clip>__<track>.json              metadata (CLIP_META_FIELDS): per-frame lists
    <dataset>__<video_id>__c<clip>__<track>.cls               the clip's label (:func:`clip_label`)

The frames are stored as the crops extract wrote (PNG, or JPEG with ``output.format: jpg``), not re-encoded: a
16-frame clip of 256 px PNG crops is T times a frame sample's bytes (README: clip benchmark), against 3 MB for one
uncompressed uint8 ``.npy``; each frame decodes like a frame sample's crop. Stored views are not written for clip
sets (the loader computes views per frame).

Every sample of a set carries the same members (Hugging Face ``datasets``' webdataset builder requires it).

Version history: 1 — video labels only; 2 — per-face ``label`` with ``video_label``, ``label_source``,
``manipulation_score`` and the ``mask.png`` member; 3 — ``mask.png`` on every sample (zeros where none) with
``has_mask``, ``preset`` and ``crop_landmarks``; 4 — ``label`` -1 (``label_name`` ``uncertain``) for faces of fakes
that match their original (``label_source`` ``original_diff_uncertain``; losses and frame metrics leave them out);
5 — clip samples.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from facepipe.errors import SchemaError
from facepipe.ids import (
    FACE_LABEL_NAMES,
    KEY_SEP,
    LABEL_NAMES,
    LABEL_SOURCES,
    SPLITS,
    UNCERTAIN_LABEL,
    IdError,
    check_name,
    parse_key,
    sample_key,
)

SCHEMA_VERSION = 5
IMAGE_EXTS = ("png", "jpg")
MASK_EXT = "mask.png"
META_FIELDS = (
    "key", "label", "label_name", "video_label", "label_source", "manipulation_score", "dataset", "method", "split",
    "video_id", "source_ids", "frame_index", "timestamp_s", "track_id", "box", "landmarks", "affine", "crop_size",
    "crop_mode", "detector", "detector_version", "schema_version", "preset", "crop_landmarks", "has_mask",
)
"""Fields of the ``json`` member. ``label`` is the face's own label (what training and evaluation use),
``video_label`` its video's, ``label_source`` how the face label was decided (``original_diff`` | ``policy``
| ``video``), ``manipulation_score`` the share of the face box differing from the original beyond the
background (``null`` without an original). ``box``/``landmarks``/``affine`` are in source-frame pixels as in
``faces.parquet`` (samples imported from DeepfakeBench crops, whose frames are not known, use the crop as source
frame: identity ``affine``, ``landmarks`` from its landmark file or ``null``); ``source_ids`` lists the original
video ids a fake was made from (empty for reals). ``preset``: the alignment preset (``deepfakebench`` or
``null``); ``crop_landmarks``: dlib's 68 (or DeepfakeBench's 81) landmarks in crop pixels, or ``null``;
``has_mask``: the ``mask.png`` member is a real difference mask (else all zeros: a real face, or a fake without
an original to compare with). Optional (sets written since shard stage version 5): ``source``, the source video's
``width`` and ``height`` (pixels, after rotation), ``kbps`` (file size over duration) and ``codec``, the shortcut
probe's nuisance features (:mod:`facepipe.data.bias`)."""


CLIP_META_FIELDS = (
    "key", "label", "label_name", "video_label", "label_source", "dataset", "method", "split", "video_id",
    "source_ids", "clip_id", "clip_start", "clip_length", "frame_step", "track_id", "frame_indices", "timestamps_s",
    "boxes", "landmarks", "affines", "frame_labels", "frame_label_sources", "manipulation_scores", "gaps",
    "has_masks", "crop_size", "crop_mode", "detector", "detector_version", "schema_version", "preset",
    "crop_landmarks",
)
"""Fields of a clip sample's ``json`` member. Per frame of the clip (lists of length ``clip_length``, in frame
order): ``frame_indices`` (source frames, ``clip_start + t * frame_step``), ``timestamps_s``, ``boxes`` (x1, y1, x2,
y2), ``landmarks`` (5, 2), ``affines`` (2, 3) source->crop (all equal with ``align.clip_transform: clip``),
``frame_labels`` and ``frame_label_sources`` (each face's own label, as a frame sample's ``label``),
``manipulation_scores``, ``gaps`` (the track had no detection there: box and landmarks interpolated),
``has_masks``, ``crop_landmarks`` (dlib's 68 landmarks in crop pixels with ``extract.landmarks68``, else nulls).
``label`` is the clip's (:func:`clip_label`), ``label_source`` that of its deciding frames."""


def clip_label(frame_labels: list[int], frame_sources: list[str]) -> tuple[int, str]:
    """A clip's label from its frames' face labels: fake (1) when any frame's face is fake (the track is manipulated
    in the clip), else real (0) when any is real, else undecided (-1, every frame ``original_diff_uncertain``: left
    out of losses and metrics like an undecided frame sample).

    Returns:
        (label, the ``label_source`` of the first frame with that label).
    """
    for want in (1, 0, UNCERTAIN_LABEL):
        for lab, src in zip(frame_labels, frame_sources):
            if int(lab) == want:
                return want, src
    raise SchemaError("a clip has no frame")


def encode_clip_sample(key: str, images: list[bytes], image_ext: str, meta: dict[str, Any],
                       masks: list[bytes | None] | None = None) -> dict[str, Any]:
    """Build the member dict of a clip sample (all values bytes; see the module docstring).

    Args:
        key: from :func:`~facepipe.ids.clip_key`.
        images: the T encoded crops (PNG or JPEG), in frame order, stored as they are.
        image_ext: ``png`` or ``jpg``.
        meta: the :data:`CLIP_META_FIELDS` (``key``, ``label``, ``label_name``, ``label_source``, ``has_masks`` and
            ``schema_version`` are filled in; ``label`` from :func:`clip_label`).
        masks: the set carries masks: per frame PNG bytes of its (H, W) uint8 difference mask or ``None`` (an
            all-zero mask of ``crop_size`` is stored then); ``None`` for a set without masks.

    Raises:
        SchemaError: an unknown image extension, missing fields, per-frame lists whose length is not the clip's,
            or bad labels / label sources.
    """
    if image_ext not in IMAGE_EXTS:
        raise SchemaError(f"{key}: image extension must be one of {IMAGE_EXTS}, got {image_ext}")
    n = len(images)
    label, source = clip_label(meta["frame_labels"], meta["frame_label_sources"])
    meta = {"preset": None, "crop_landmarks": [None] * n, **meta, "key": key, "schema_version": SCHEMA_VERSION,
            "label": label,
            "label_source": source, "label_name": FACE_LABEL_NAMES[label],
            "has_masks": [m is not None for m in masks] if masks is not None else [False] * n}
    missing = [f for f in CLIP_META_FIELDS if f not in meta]
    if missing:
        raise SchemaError(f"{key}: metadata lacks {missing}")
    per_frame = ("frame_indices", "timestamps_s", "boxes", "landmarks", "affines", "frame_labels",
                 "frame_label_sources", "manipulation_scores", "gaps", "crop_landmarks")
    bad = [f for f in per_frame if len(meta[f]) != n]
    if n != meta["clip_length"] or bad:
        raise SchemaError(f"{key}: {n} frames for clip_length {meta['clip_length']}; per-frame lists of another "
                          f"length: {bad}")
    if meta["video_label"] not in LABEL_NAMES:
        raise SchemaError(f"{key}: video_label must be 0 (real) or 1 (fake), got {meta['video_label']!r}")
    for lab, src in zip(meta["frame_labels"], meta["frame_label_sources"]):
        if lab not in FACE_LABEL_NAMES or (lab == UNCERTAIN_LABEL) != (src == "original_diff_uncertain") \
                or src not in LABEL_SOURCES:
            raise SchemaError(f"{key}: frame label {lab!r} with label_source {src!r}")
    out: dict[str, Any] = {"__key__": key, "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                           "cls": str(label).encode()}
    for t, img in enumerate(images):
        out[f"{t:02d}.{image_ext}"] = img
        if masks is not None:
            out[f"{t:02d}.{MASK_EXT}"] = masks[t] if masks[t] is not None else empty_mask_png(meta["crop_size"])
    return out


def decode_clip_sample(sample: dict[str, Any], mask: bool = False) -> dict[str, Any]:
    """Check and decode one raw clip sample (see the module docstring).

    Returns:
        ``{"key", "frames": (T, H, W, 3) uint8 RGB, "meta": dict, "label": int, "masks": (T, H, W) uint8 (with
        ``mask``; zeros for frames without one)}``.

    Raises:
        SchemaError: naming the shard and key: a missing field or frame, a schema-version mismatch, a label
            disagreeing between ``cls`` and ``json``, a frame or mask that does not decode.
    """
    import cv2

    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}: sample {key}"
    meta = _meta(sample, where)
    if "clip_length" not in meta:
        raise SchemaError(f"{where}: a frame sample where a clip sample was expected (read it with decode_sample)")
    n = int(meta["clip_length"])
    ext = next((e for e in IMAGE_EXTS if f"00.{e}" in sample), None)
    if ext is None:
        raise SchemaError(f"{where}: missing clip frame '00.png' / '00.jpg'")
    label = _cls(sample, meta, where)
    frames = []
    for t in range(n):
        data = sample.get(f"{t:02d}.{ext}")
        img = None if data is None else decode_image(data, ext)
        if img is None:
            raise SchemaError(f"{where}: clip frame {t} ({t:02d}.{ext}) is missing or does not decode")
        frames.append(img)
    out: dict[str, Any] = {"key": key, "meta": meta, "label": label, "frames": np.stack(frames)}
    if mask:
        ms = []
        for t in range(n):
            data = sample.get(f"{t:02d}.{MASK_EXT}")
            m = (np.zeros(frames[t].shape[:2], np.uint8) if data is None else
                 cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE))
            if m is None or m.shape != frames[t].shape[:2]:
                raise SchemaError(f"{where}: mask of clip frame {t} does not decode or does not match its size")
            ms.append(m)
        out["masks"] = np.stack(ms)
    return out


def _meta(sample: dict[str, Any], where: str) -> dict:
    """The sample's parsed ``json`` member, its schema version checked."""
    if "json" not in sample:
        raise SchemaError(f"{where}: missing field 'json'")
    try:
        meta = json.loads(sample["json"])
    except ValueError as e:
        raise SchemaError(f"{where}: json does not parse: {e}") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema version {meta.get('schema_version')} but this facepipe reads "
                          f"{SCHEMA_VERSION}; rebuild the shards with 'facepipe shard'")
    return meta


def _cls(sample: dict[str, Any], meta: dict, where: str) -> int:
    """The ``cls`` member's label, checked against the json's."""
    if "cls" not in sample:
        raise SchemaError(f"{where}: missing field 'cls'")
    label = int(sample["cls"])
    if label != meta.get("label"):
        raise SchemaError(f"{where}: cls {label} disagrees with json label {meta.get('label')}")
    return label


def npy_bytes(a: np.ndarray) -> bytes:
    """``np.save`` bytes of ``a`` (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def npy_load(b: bytes) -> np.ndarray:
    """Inverse of :func:`npy_bytes`."""
    return np.load(io.BytesIO(b), allow_pickle=False)


def empty_mask_png(size: int) -> bytes:
    """PNG bytes of an all-zero (size, size) uint8 mask (about 100 bytes), encoded once per size."""
    size = int(size)
    if size not in _EMPTY_MASKS:  # (setdefault would encode it on every call: 0.3 ms a sample at 224 px)
        _EMPTY_MASKS[size] = _png_zeros(size)
    return _EMPTY_MASKS[size]


_EMPTY_MASKS: dict[int, bytes] = {}


def _png_zeros(size: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((size, size), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return buf.tobytes()


def encode_sample(key: str, image: bytes, image_ext: str, meta: dict[str, Any],
                  views: dict[str, np.ndarray], mask: bytes | None = None, masks: bool = False) -> dict[str, Any]:
    """Build the member dict for ``webdataset.TarWriter`` (all values bytes).

    Args:
        key: from :func:`~facepipe.ids.sample_key`.
        image: encoded crop bytes (PNG or JPEG), stored as is.
        image_ext: ``png`` or ``jpg``.
        meta: the :data:`META_FIELDS` (``key``, ``label_name`` and ``schema_version`` are filled in).
        views: view name -> (C, H, W) array, stored as float16 ``.npy``.
        mask: PNG bytes of the (H, W) uint8 difference mask, or ``None``.
        masks: the set carries masks: a sample without one gets an all-zero mask of ``crop_size`` (``has_mask``
            false), so every sample has the same members.

    Raises:
        SchemaError: unknown image extension, missing metadata fields, a bad label or label source.
    """
    if image_ext not in IMAGE_EXTS:
        raise SchemaError(f"{key}: image extension must be one of {IMAGE_EXTS}, got {image_ext}")
    meta = {"preset": None, "crop_landmarks": None, **meta, "key": key, "schema_version": SCHEMA_VERSION,
            "has_mask": mask is not None}
    if meta.get("label") in FACE_LABEL_NAMES:
        meta["label_name"] = FACE_LABEL_NAMES[meta["label"]]
    missing = [f for f in META_FIELDS if f not in meta]
    if missing:
        raise SchemaError(f"{key}: metadata lacks {missing}")
    if meta["video_label"] not in LABEL_NAMES:
        raise SchemaError(f"{key}: video_label must be 0 (real) or 1 (fake), got {meta['video_label']!r}")
    if meta["label"] not in FACE_LABEL_NAMES or (meta["label"] == UNCERTAIN_LABEL) != (
            meta.get("label_source") == "original_diff_uncertain"):
        raise SchemaError(f"{key}: label must be 0 (real), 1 (fake), or -1 exactly when label_source is "
                          f"original_diff_uncertain; got {meta['label']!r} ({meta.get('label_source')!r})")
    if meta["label_source"] not in LABEL_SOURCES:
        raise SchemaError(f"{key}: label_source must be one of {LABEL_SOURCES}, got {meta['label_source']!r}")
    out: dict[str, Any] = {"__key__": key, image_ext: image,
                           "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode(),
                           "cls": str(int(meta["label"])).encode()}
    if mask is not None:
        out[MASK_EXT] = mask
    elif masks:
        out[MASK_EXT] = empty_mask_png(meta["crop_size"])
    for name, arr in views.items():
        out[f"{name}.npy"] = npy_bytes(np.asarray(arr, dtype=np.float16))
    return out


def decode_image(data: bytes, ext: str) -> np.ndarray | None:
    """Decode a stored crop with the fastest correct decoder: libspng (``pyspng``) for PNG, libjpeg-turbo
    (``simplejpeg``) for JPEG; OpenCV for what those do not cover (grey, alpha or 16-bit PNGs, CMYK JPEGs).

    Measured on 256 px crops of the shared real clips (one core): PNG 0.96 ms with libspng vs 1.53 ms with
    ``cv2.imdecode`` + BGR->RGB (bit-identical); JPEG q95 4:4:4 0.30 ms vs 0.35 ms.

    Args:
        data: the encoded bytes.
        ext: ``png`` or ``jpg``.

    Returns:
        (H, W, 3) uint8 RGB, or ``None`` when the bytes do not decode.
    """
    img = None
    try:
        if ext == "png":
            import pyspng

            img = pyspng.load(data)
        else:
            import simplejpeg

            img = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except (RuntimeError, ValueError):  # a broken or unusual stream: OpenCV decides below
        img = None
    if img is not None and img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return img
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def decode_sample(sample: dict[str, Any], views: tuple[str, ...] = (), mask: bool = False,
                  image: bool = True) -> dict[str, Any]:
    """Check and decode one raw webdataset sample (member name suffix -> bytes).

    Args:
        sample: the raw sample.
        views: stored views to decode.
        mask: decode the difference mask (an all-zero mask when the sample has none: a real face, or a
            fake without an original to compare with — check ``meta["label_source"]``).
        image: decode the crop; ``False`` returns its encoded bytes as ``image_bytes`` and its
            extension as ``image_ext`` instead (the loader's batched decoding on the device).

    Returns:
        ``{"key", "image": (H, W, 3) uint8 RGB, "meta": dict, "label": int, <view>: float32 (C, H, W),
        "mask": (H, W) uint8 (with ``mask``)}``.

    Raises:
        SchemaError: naming the shard (``__url__``) and key: a missing field, a schema-version
            mismatch, a label disagreeing between ``cls`` and ``json``, an image that does not decode.
    """
    import cv2

    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', '?')}: sample {key}"
    meta = _meta(sample, where)
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if ext is None:
        hint = " (a clip sample: read clip sets with make_loader(..., clips=True))" if "clip_length" in meta else ""
        raise SchemaError(f"{where}: missing image field (one of {IMAGE_EXTS}){hint}")
    label = _cls(sample, meta, where)
    out: dict[str, Any] = {"key": key, "meta": meta, "label": label}
    if image:
        img = decode_image(sample[ext], ext)
        if img is None:
            raise SchemaError(f"{where}: {ext} image does not decode")
        out["image"] = img
        hw = img.shape[:2]
    else:
        out["image_bytes"], out["image_ext"] = sample[ext], ext
        hw = (int(meta.get("crop_size") or 0),) * 2
    if mask:
        if MASK_EXT in sample:
            m = cv2.imdecode(np.frombuffer(sample[MASK_EXT], np.uint8), cv2.IMREAD_GRAYSCALE)
            if m is None or m.shape != hw:
                raise SchemaError(f"{where}: mask does not decode or does not match the crop's size")
        else:
            m = np.zeros(hw, np.uint8)
        out["mask"] = m
    for v in views:
        name = f"{v}.npy"
        if name not in sample:
            raise SchemaError(f"{where}: view '{v}' is not stored in this shard (stored: "
                              f"{sorted(k[:-4] for k in sample if k.endswith('.npy'))})")
        out[v] = npy_load(sample[name]).astype(np.float32)
    return out


HF_JSON_TYPES = {
    "key": "string", "label": "int64", "label_name": "string", "video_label": "int64", "label_source": "string",
    "manipulation_score": "float64", "dataset": "string", "method": "string", "split": "string", "video_id": "string",
    "source_ids": ["string"], "frame_index": "int64", "timestamp_s": "float64", "track_id": "int64",
    "box": ["float64"], "landmarks": [["float64"]], "affine": [["float64"]], "crop_size": "int64",
    "crop_mode": "string", "detector": "string", "detector_version": "string", "schema_version": "int64",
    "preset": "string", "crop_landmarks": [["float64"]], "has_mask": "bool",
    "source": {"width": "int64", "height": "int64", "kbps": "float64", "codec": "string"},
}

HF_CLIP_JSON_TYPES = {
    "key": "string", "label": "int64", "label_name": "string", "video_label": "int64", "label_source": "string",
    "dataset": "string", "method": "string", "split": "string", "video_id": "string", "source_ids": ["string"],
    "clip_id": "int64", "clip_start": "int64", "clip_length": "int64", "frame_step": "int64", "track_id": "int64",
    "frame_indices": ["int64"], "timestamps_s": ["float64"], "boxes": [["float64"]], "landmarks": [[["float64"]]],
    "affines": [[["float64"]]], "frame_labels": ["int64"], "frame_label_sources": ["string"],
    "manipulation_scores": ["float64"], "gaps": ["bool"], "has_masks": ["bool"], "crop_size": "int64",
    "crop_mode": "string", "detector": "string", "detector_version": "string", "schema_version": "int64",
    "preset": "string", "crop_landmarks": [[["float64"]]],
    "source": {"width": "int64", "height": "int64", "kbps": "float64", "codec": "string"},
}
"""Hugging Face ``datasets`` types of a clip sample's ``json`` fields (:data:`CLIP_META_FIELDS`, and the optional
``source``)."""


__all__ = ["CLIP_META_FIELDS", "HF_CLIP_JSON_TYPES", "IMAGE_EXTS", "IdError", "KEY_SEP", "LABEL_NAMES", "MASK_EXT",
           "META_FIELDS", "SCHEMA_VERSION", "SPLITS", "SchemaError", "check_name", "clip_label",
           "decode_clip_sample", "decode_image", "empty_mask_png", "decode_sample", "encode_clip_sample",
           "encode_sample", "npy_bytes", "npy_load", "parse_key", "sample_key"]
