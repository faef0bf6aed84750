"""The shard stage's table part at scale (issue 26): the stage holds every sample once, in the inputs' order, and
writes each split's cells from a key order computed on small arrays; the tars must hold exactly the order of the rule
the set's version stands for: every sample sorted by key, then per split ``s_i`` and (``layout: cells``) per
(dataset, label) cell ``g_i``, in dataset and label order, the cell's rows in key order permuted by
``np.random.default_rng([seed, s_i, g_i])`` (``mixed``: the split's rows by ``default_rng([seed, s_i])``).

The inputs are written here (no extract run): dataset and video names whose key order differs from their name order
(``a-b`` < ``a`` < ``ab`` by key, ``a`` < ``a-b`` < ``ab`` by name; ``v-1`` < ``v_1`` < ``v``), frame numbers past
six digits and track numbers whose text order differs from their numbers' (``10`` < ``2``)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from facepipe.errors import InputError
from facepipe.ids import FACE_LABEL_NAMES, SPLITS
from facepipe.manifest import MANIFEST_SCHEMA
from facepipe.stages import shard
from facepipe.stages.extract.tables import FACE_SCHEMA, VIDEO_SCHEMA

VIDEOS = (  # (video id, video label, split, source, status)
    ("v", 0, "train", None, "ok"), ("v-1", 1, "train", "v", "ok"), ("v_1", 1, "train", "v", "ok"),
    ("V", 0, "train", None, "ok"), ("q", 0, "train", None, "decode_error"), ("w", 0, "val", None, "ok"),
    ("w-x", 1, "val", "w", "ok"), ("z", 0, "test", None, "ok"), ("z9", 1, "test", "z", "ok"))
FRAMES = (0, 8, 16, 1_000_000)
TRACKS = (2, 10)
SEED = 5


def _png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((8, 8, 3), 90, np.uint8))[1].tobytes()


def _write_dataset(root: Path, name: str, rng: np.random.Generator) -> tuple[shard.ShardInput, list[dict]]:
    """One dataset's extract output (faces.parquet, videos.parquet, PNG crops) and manifest; its faces as dicts."""
    ex = root / name / "extract"
    faces, png = [], _png()
    for vid, vlabel, split, _, status in VIDEOS:
        for frame in FRAMES:
            for track in TRACKS:
                label = int(rng.choice([-1, 0, 1])) if vlabel else 0
                crop = f"faces/{vid}/{frame:06d}_{track}.png"
                (ex / crop).parent.mkdir(parents=True, exist_ok=True)
                (ex / crop).write_bytes(png)
                faces.append({"video_id": vid, "frame_index": frame, "timestamp_s": frame / 25, "track_id": track,
                              "box": [1.0, 2.0, 30.0, 40.0], "affine": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                              "crop_path": crop, "crop_mode": "align", "crop_size": 8, "detector": "scrfd",
                              "detector_version": "test",
                              "label": label, "video_label": vlabel, "dataset": name, "split": split,
                              "status": status, "manipulation_score": 0.5 if vlabel else None,
                              "label_source": "video" if not vlabel else ("original_diff" if label >= 0
                                                                          else "original_diff_uncertain")})
    df = pl.DataFrame(faces).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))  # any row order
    df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c)
               for c, t in FACE_SCHEMA.items()]).write_parquet(ex / "faces.parquet")
    videos = pl.DataFrame({"video_id": [v[0] for v in VIDEOS], "status": [v[4] for v in VIDEOS],
                           "video_label": [v[1] for v in VIDEOS], "width": 640, "height": 480,
                           "file_size": 123456, "duration_s": 2.5, "codec": "h264"})
    videos.select([(pl.col(c) if c in videos.columns else pl.lit(None)).cast(t).alias(c)
                   for c, t in VIDEO_SCHEMA.items()]).write_parquet(ex / "videos.parquet")
    man = pl.DataFrame({"dataset": name, "video_id": [v[0] for v in VIDEOS], "path": [f"{v[0]}.mp4" for v in VIDEOS],
                        "label": [v[1] for v in VIDEOS], "method": ["" if not v[1] else "swap" for v in VIDEOS],
                        "split": [v[2] for v in VIDEOS], "source_ids": [[v[3]] if v[3] else [] for v in VIDEOS],
                        "compression": "c23", "identity_ids": [[]] * len(VIDEOS), "mask_path": None,
                        "protocol_note": None})
    man.select([pl.col(c).cast(t) for c, t in MANIFEST_SCHEMA.items()]).write_parquet(root / name / "manifest.parquet")
    inp = shard.ShardInput(dataset=name, extract=str(ex), manifest=str(root / name / "manifest.parquet"))
    return inp, faces


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[tuple[shard.ShardInput, ...], list[dict]]:
    root = tmp_path_factory.mktemp("shard_scale")
    rng = np.random.default_rng(3)
    made = [_write_dataset(root, name, rng) for name in ("ab", "a", "a-b")]
    return tuple(i for i, _ in made), [f for _, faces in made for f in faces]


def _expected(faces: list[dict], layout: str) -> dict[str, list[str]]:
    """The old rule, written out: tar series name -> its keys in order."""
    rows = sorted((dict(f, key=f"{f['dataset']}__{f['video_id']}__{f['frame_index']:06d}__{f['track_id']}")
                   for f in faces if f["status"] == "ok"), key=lambda f: f["key"])
    out = {}
    for s_i, split in enumerate(SPLITS):
        here = [f for f in rows if f["split"] == split]
        if layout == "mixed":
            order = np.random.default_rng([SEED, s_i]).permutation(len(here))
            out[split] = [here[i]["key"] for i in order]
            continue
        for g_i, (d, lab) in enumerate(sorted({(f["dataset"], f["label"]) for f in here})):
            cell = [f for f in here if (f["dataset"], f["label"]) == (d, lab)]
            order = np.random.default_rng([SEED, s_i, g_i]).permutation(len(cell))
            out[f"{split}-{d}-{FACE_LABEL_NAMES[lab]}"] = [cell[i]["key"] for i in order]
    return out


def _written(out: Path, max_samples: int) -> dict[str, list[str]]:
    """Tar series name -> the keys its tars hold, in the index's tar order and each tar's member order."""
    index = json.loads((out / "index.json").read_text())
    got: dict[str, list[str]] = {}
    for info in index["splits"].values():
        for sh in info["shards"]:
            with tarfile.open(out / sh["url"]) as tf:
                keys = list(dict.fromkeys(n.split(".", 1)[0] for n in tf.getnames()))
            assert len(keys) == sh["samples"] <= max_samples
            got.setdefault(Path(sh["url"]).name.rsplit("-", 1)[0], []).extend(keys)
    return got


@pytest.mark.parametrize("layout", ["cells", "mixed"])
def test_tars_hold_the_samples_in_the_seeded_key_order(inputs, tmp_path, layout):
    inps, faces = inputs
    cfg = shard.ShardConfig(inputs=inps, max_samples=7, seed=SEED, layout=layout, bias_probe=0)
    summary = shard.run(tmp_path / "out", cfg, progress=False)
    expected = _expected(faces, layout)
    assert _written(tmp_path / "out", 7) == expected
    assert sum(summary.samples.values()) == sum(map(len, expected.values())) == sum(f["status"] == "ok" for f in faces)
    assert summary.left_out == {f"{d}:decode_error": len(FRAMES) * len(TRACKS) for d in ("ab", "a", "a-b")}


def test_gather_holds_one_table_and_orders_it_by_key(inputs):
    """No sorted copy and no per-row key or folder: the rows stay in the inputs' order, the repeated text as
    Categorical, optional columns without a value not at all; the order, splits and cells are small arrays;
    rows are read back with the inputs' types, their video's columns, key and root."""
    inps, faces = inputs
    samples, stored, _, _ = shard._gather(shard.ShardConfig(inputs=inps, seed=SEED))
    assert stored == () and not samples.clips and samples.height == sum(f["status"] == "ok" for f in faces)
    assert not {"key", "_root", "source_ids"} & set(samples.rows.columns)
    assert all(samples.rows[c].dtype == pl.Categorical for c in ("dataset", "video_id", "split", "label_source"))
    assert not {"mask_path", "clip_id", "crop_landmarks"} & set(samples.rows.columns)  # no value: not held
    assert {samples.rows[c].n_chunks() for c in ("affine", "crop_path")} == {len(inps)}  # one chunk per input
    assert samples.starts.tolist() == [0, 64, 128, 192]
    types = samples.rows_at(samples.order[:5]).schema
    assert all(types[c] == t for c, t in FACE_SCHEMA.items()) and types["split"] == types["source_codec"] == pl.String
    keys = samples.rows_at(samples.order)["key"].to_list()
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    first = samples.rows_at(samples.order[:1]).row(0, named=True)
    assert first["key"] == "a-b__V__000000__10" and first["_root"] == str(Path(inps[2].extract).resolve())
    assert first["source_width"] == 640 and first["source_kbps"] == round(123456 * 8 / 1000 / 2.5, 1)
    assert first["split"] == "train" and isinstance(first["label_source"], str)
    train = samples.rows_at(samples.split_positions(0))
    assert set(train["split"]) == {"train"} and train["key"].to_list() == sorted(train["key"].to_list())


def test_the_probe_draws_from_each_split_in_key_order(inputs, monkeypatch):
    """The shortcut probe's faces: ``DataFrame.sample(bias_probe, seed)`` of the split's faces sorted by key."""
    from facepipe.data import bias

    inps, faces = inputs
    seen: list[str] = []
    monkeypatch.setattr(bias, "face_features", lambda image, ext, info: seen.append(info["key"]) or {})
    monkeypatch.setattr(bias, "probe_table", lambda frame, seed: {})
    cfg = shard.ShardConfig(inputs=inps, seed=SEED, bias_probe=20)
    samples, _, _, _ = shard._gather(cfg)
    shard._probe(samples, cfg)
    keys = sorted(f"{f['dataset']}__{f['video_id']}__{f['frame_index']:06d}__{f['track_id']}"
                  for f in faces if f["status"] == "ok")
    split_of = {v[0]: v[2] for v in VIDEOS}
    want = []
    for split in SPLITS:
        here = pl.DataFrame({"key": [k for k in keys if split_of[k.split("__")[1]] == split]})
        want += (here.sample(20, seed=SEED) if here.height > 20 else here)["key"].to_list()
    assert len(want) == 3 * 20 and seen == want


def test_missing_views_name_the_first_crop_of_the_faces_table(inputs, tmp_path):
    """A crop without stored views stops the run naming the count and the first such crop in faces.parquet."""
    inp = inputs[0][0]
    faces = pl.read_parquet(Path(inp.extract) / "faces.parquet")
    views = faces.select("video_id", "frame_index", "track_id", pl.lit("v.npz").alias("npz"),
                         pl.lit("m").alias("member"), pl.lit(["dct"]).alias("views"))
    gone = (pl.col("video_id") == "w") & (pl.col("frame_index") == 8)
    views.filter(~gone).write_parquet(tmp_path / "views.parquet")
    first = faces.filter(gone)["crop_path"][0]  # in the faces table's order (written shuffled)
    with pytest.raises(InputError, match=rf"no views for 2 crop\(s\), e.g. {first}; rerun"):
        shard.collect_samples(inp.model_copy(update={"freq": str(tmp_path)}), None)
    with pytest.raises(InputError, match=r"views \['srm'\] asked for but the freq stage stored \['dct'\]"):
        shard.collect_samples(inp.model_copy(update={"freq": str(tmp_path)}), ("srm",))


def test_unusable_extract_tables_are_refused(inputs, tmp_path):
    inp = inputs[0][0]
    ex = tmp_path / "ex"
    ex.mkdir()
    pl.read_parquet(Path(inp.extract) / "faces.parquet").drop("label_source").write_parquet(ex / "faces.parquet")
    with pytest.raises(InputError, match="older facepipe without per-face labels"):
        shard.collect_samples(inp.model_copy(update={"extract": str(ex)}), None)
    pl.read_parquet(Path(inp.extract) / "faces.parquet").write_parquet(ex / "faces.parquet")
    with pytest.raises(InputError, match="videos.parquet: not found"):
        shard.collect_samples(inp.model_copy(update={"extract": str(ex)}), None)
