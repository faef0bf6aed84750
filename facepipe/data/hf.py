"""Hugging Face ``datasets`` reading facepipe shards: the features of a shard set (``hf_features``).

Above both the schema and the index in the import graph (it reads the index, types the schema's fields).
"""

from __future__ import annotations

from facepipe.data.index import read_index
from facepipe.data.schema import HF_CLIP_JSON_TYPES, HF_JSON_TYPES, IMAGE_EXTS, MASK_EXT, SchemaError


def hf_features(index: str | dict):
    """``datasets.Features`` of a shard set, for ``datasets.load_dataset("webdataset", data_files=...,
    features=hf_features(index))``.

    Hugging Face's webdataset builder otherwise infers types from the first five samples, and fails on a later
    sample whose nullable field (``manipulation_score``, ``crop_landmarks``, ``timestamp_s``) has a value when those
    five had none ("Couldn't cast array of type double to null").

    Args:
        index: the set's ``index.json`` (path, folder holding it, or the loaded dict).

    Returns:
        Features: the crop (``png`` or ``jpg``) and ``mask.png`` as ``Image``, ``json`` as a struct of
        :data:`META_FIELDS`, ``cls`` int64, each stored view as ``Array3D`` float16 (C, H, W). A clip set: its
        frames ``00.png`` … and masks ``00.mask.png`` … as ``Image``, ``json`` as a struct of
        :data:`CLIP_META_FIELDS`.

    Raises:
        SchemaError: the index is unreadable or of another schema version (a
            :class:`~facepipe.errors.ShardIndexError`, from :func:`facepipe.data.index.read_index`), or mixes
            image formats.
    """
    import datasets

    index = read_index(index)
    fmt = index.get("image_format") or "png"
    if fmt not in IMAGE_EXTS:
        raise SchemaError(f"shard set has image format {fmt!r}: Hugging Face needs one image field")

    def typ(t):
        if isinstance(t, dict):
            return {k: typ(v) for k, v in t.items()}
        return [typ(t[0])] if isinstance(t, list) else datasets.Value(t)

    if index.get("sample_kind") == "clip":  # T image members (and masks) per sample
        n = int(index["clip_length"])
        feats = {f"{t:02d}.{fmt}": datasets.Image() for t in range(n)}
        feats.update({"json": {k: typ(t) for k, t in HF_CLIP_JSON_TYPES.items()}, "cls": datasets.Value("int64")})
        if index.get("masks"):
            feats.update({f"{t:02d}.{MASK_EXT}": datasets.Image() for t in range(n)})
        return datasets.Features(feats)
    feats = {fmt: datasets.Image(), "json": {k: typ(t) for k, t in HF_JSON_TYPES.items()},
             "cls": datasets.Value("int64")}
    if index.get("masks"):
        feats[MASK_EXT] = datasets.Image()
    for v in index.get("views", []):
        shape = tuple((index.get("view_shapes") or {}).get(v, ()))
        if len(shape) != 3:
            raise SchemaError(f"shard index records no (C, H, W) shape for view '{v}'; rebuild with 'facepipe shard'")
        feats[f"{v}.npy"] = datasets.Array3D(shape=shape, dtype="float16")
    return datasets.Features(feats)


__all__ = ["hf_features"]
