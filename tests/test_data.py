"""freq -> shard -> make_loader on small real clips made from package photos, and on the shared real media."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from facepipe.data.loader import make_loader
from facepipe.data.schema import SCHEMA_VERSION, SchemaError, parse_key, sample_key
from facepipe.errors import ConfigError, InputError
from facepipe.freq.config import FreqConfig
from facepipe.stages.example import camera_frames, package_photo, write_video
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.extract import run as run_extract
from facepipe.stages.freq import run as run_freq
from facepipe.stages.shard import ShardConfig, ShardInput
from facepipe.stages.shard import run as run_shard
from tests.conftest import shard_files

VIEWS = ("dct", "srm")


def _manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "method", "source_ids"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def two_datasets(tmp_path_factory, t1):
    """Dataset 'groupset' (train: a real pan over t1 and a 'fake' zoom made from it) and 'solo'
    (test: a real clip of one face and a 'fake' one made from it), extracted and freq'd."""
    import cv2

    root = tmp_path_factory.mktemp("data")
    a, b = root / "groupset" / "videos", root / "solo" / "videos"
    write_video(a / "pan.mp4", camera_frames(t1, (480, 270), 12, (420, 330, 0.5), (860, 330, 0.5)), fps=10)
    write_video(a / "zoom.mp4", camera_frames(t1, (480, 270), 12, (640, 300, 0.45), (760, 330, 0.7)), fps=10)
    tom = package_photo("Tom_Hanks_54745.png")
    canvas = np.full((270, 480, 3), 100, np.uint8)
    canvas[40:208, 156:324] = cv2.resize(tom, (168, 168), interpolation=cv2.INTER_CUBIC)
    write_video(b / "tom.mp4", camera_frames(canvas, (480, 270), 12, (240, 130, 1.0), (250, 135, 1.1)), fps=10)
    write_video(b / "tom_swap.mp4", camera_frames(canvas[:, ::-1], (480, 270), 12, (240, 130, 1.0),
                                                  (230, 140, 1.1)), fps=10)
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 6}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "track": {"select": "all"}, "workers": 0})
    inputs = []
    for name, vids, rows in [
        ("groupset", a, [dict(path="pan.mp4", label="real", split="train", method="", source_ids=""),
                         dict(path="zoom.mp4", label="fake", split="train", method="Zoom", source_ids="pan")]),
        ("solo", b, [dict(path="tom.mp4", label="real", split="test", method="", source_ids=""),
                     dict(path="tom_swap.mp4", label="fake", split="test", method="Mirror", source_ids="tom")]),
    ]:
        ex, fq = root / name / "extract", root / name / "freq"
        man = _manifest(root / name / "manifest.csv", rows)
        run_extract(vids, ex, cfg, progress=False, manifest=man)
        run_freq(ex, fq, FreqConfig(views=VIEWS), workers=0, progress=False)
        inputs.append(ShardInput(dataset=name, extract=str(ex), freq=str(fq), manifest=str(man)))
    shard_cfg = ShardConfig(inputs=tuple(inputs), max_samples=6, seed=7, layout="mixed")  # the recorded orders
    out = root / "shards"
    run_shard(out, shard_cfg, progress=False)
    return root, shard_cfg, out


def _tar_keys(folder: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for t in sorted(shard_files(folder).glob("*.tar")):
        with tarfile.open(t) as tf:
            names = tf.getnames()
        keys[t.name] = sorted({n.split(".", 1)[0] for n in names})
    return keys


def test_every_face_is_exactly_one_sample(two_datasets):
    root, _, out = two_datasets
    faces = pl.concat([pl.read_parquet(root / d / "extract" / "faces.parquet").with_columns(pl.lit(d).alias("ds"))
                       for d in ("groupset", "solo")])
    expected = sorted(sample_key(r["ds"], r["video_id"], r["frame_index"], r["track_id"])
                      for r in faces.iter_rows(named=True))
    got = sorted(k for ks in _tar_keys(out).values() for k in ks)
    assert got == expected and len(got) > 40
    with tarfile.open(sorted(shard_files(out).glob("train-*.tar"))[0]) as tf:
        names = tf.getnames()
        member = tf.extractfile(next(n for n in names if n.endswith(".json"))).read()
    meta = json.loads(member)
    assert meta["schema_version"] == SCHEMA_VERSION and meta["dataset"] == "groupset"
    exts = Counter(n.split(".", 1)[1] for n in names)
    # every sample carries every member: the mask too (all zero here, has_mask false), so readers see one schema
    assert set(exts) == {"png", "json", "cls", "mask.png", "dct.npy", "srm.npy"} and len(set(exts.values())) == 1


def test_splits_are_disjoint_and_cell_shards_hold_one_cell(two_datasets, tmp_path):
    _, cfg, _ = two_datasets
    out = tmp_path / "cells"
    run_shard(out, cfg.model_copy(update={"layout": "cells"}), progress=False)
    split_of_video = {}
    for name, keys in _tar_keys(out).items():
        split = name.split("-")[0]
        for k in keys:
            ds, vid, _, _ = parse_key(k)
            assert split_of_video.setdefault((ds, vid), split) == split
    assert {s for s in split_of_video.values()} == {"train", "test"}
    # layout cells (the default): one series per (dataset, label), named by it; every shard holds its cell only
    index = json.loads((out / "index.json").read_text())
    for split, info in index["splits"].items():
        for sh in info["shards"]:
            (cell,) = sh["cells"]
            ds, lab = cell.split(":")
            assert Path(sh["url"]).name.startswith(f"{split}-{ds}-{lab}-")
    assert {Path(sh["url"]).name for sh in index["splits"]["train"]["shards"]} >= {
        "train-groupset-real-000000.tar", "train-groupset-fake-000000.tar"}


def test_mixed_layout_shuffles_videos_and_labels_into_each_shard(two_datasets):
    _, _, out = two_datasets
    first = _tar_keys(out)["train-000000.tar"]
    assert len({parse_key(k)[1] for k in first}) == 2  # shuffled across videos (and labels)


def test_index_counts_match_the_tars(two_datasets):
    _, _, out = two_datasets
    index = json.loads((out / "index.json").read_text())
    keys = _tar_keys(out)
    assert index["splits"]["val"] == {"samples": 0, "shards": []}
    for info in index["splits"].values():
        for sh in info["shards"]:
            assert sh["samples"] == len(keys[sh["url"].split("/")[-1]]) <= 6
            assert sh["bytes"] == (out / sh["url"]).stat().st_size
            assert sum(sh["cells"].values()) == sh["samples"]
    assert index["total"] == sum(len(k) for k in keys.values())
    meta = json.loads((shard_files(out) / "_meta.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["params"]["seed"] == 7


def test_rerun_is_byte_identical(two_datasets, tmp_path):
    _, cfg, out = two_datasets
    run_shard(tmp_path / "again", cfg, progress=False)
    digest = lambda d: {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
                        for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}
    assert digest(out) == digest(tmp_path / "again")


def test_two_ranks_two_workers_read_disjoint_samples_covering_the_split(two_datasets):
    _, _, out = two_datasets
    seen = []
    for rank in (0, 1):
        loader = make_loader(out, "train", batch_size=4, num_workers=2, rank=rank, world_size=2, seed=3)
        seen.append([k for b in loader for k in b["key"]])
    a, b = set(seen[0]), set(seen[1])
    index = json.loads((out / "index.json").read_text())
    assert not a & b
    assert len(seen[0]) + len(seen[1]) == index["splits"]["train"]["samples"] == len(a | b)


def test_batches_have_the_documented_shapes_and_stored_views_match_computed(two_datasets):
    _, _, out = two_datasets
    stored = make_loader(out, "test", batch_size=5, num_workers=0, shuffle=False, views=VIEWS)
    computed = make_loader(out, "test", batch_size=5, num_workers=0, shuffle=False, views=VIEWS,
                           view_source="compute")
    assert not stored.compute_views and computed.compute_views
    n = 0
    for bs, bc in zip(stored, computed):
        assert bs["key"] == bc["key"]
        assert bs["image"].shape == (len(bs["key"]), 3, 64, 64) and bs["image"].dtype == torch.float32
        assert bs["label"].dtype == torch.int64 and set(bs["label"].tolist()) <= {0, 1}
        assert bs["dct"].shape == bs["image"].shape and bs["srm"].shape == bs["image"].shape
        for v in VIEWS:  # float16 storage vs float32 computation
            np.testing.assert_allclose(bs[v].numpy(), bc[v].numpy(), rtol=2e-3, atol=2e-3)
        assert set(bs["dataset"]) == {"solo"} and len(bs["video_id"]) == len(bs["key"])
        n += len(bs["key"])
    assert n == json.loads((out / "index.json").read_text())["splits"]["test"]["samples"]


def test_augmentation_is_seeded(two_datasets):
    _, _, out = two_datasets
    run = lambda seed: next(iter(make_loader(out, "train", batch_size=8, num_workers=0, augment=True,  # noqa: E731
                                             image_size=48, seed=seed, views=("dct",))))
    b1, b2, b3 = run(1), run(1), run(2)
    assert b1["key"] == b2["key"] and torch.equal(b1["image"], b2["image"]) and torch.equal(b1["dct"], b2["dct"])
    assert b1["image"].shape == (8, 3, 48, 48) and b1["dct"].shape == (8, 3, 48, 48)
    assert b1["key"] != b3["key"] or not torch.equal(b1["image"], b3["image"])


def _both_datasets_in_one_split(out: Path, tmp_path: Path) -> Path:
    """An index whose 'train' split holds the train shards (groupset) and the test shards (solo): the fixture has no
    split with both datasets, and weights over one dataset change nothing."""
    index = json.loads((out / "index.json").read_text())
    (tmp_path / index["version"]).symlink_to(out / index["version"], target_is_directory=True)
    train, test = index["splits"]["train"], index["splits"]["test"]
    index["splits"] = {"train": {"samples": train["samples"] + test["samples"],
                                 "shards": train["shards"] + test["shards"]}}
    (tmp_path / "index.json").write_text(json.dumps(index))
    return tmp_path


def test_dataset_weights_and_class_balance(two_datasets, tmp_path):
    _, _, out = two_datasets
    mixed = _both_datasets_in_one_split(out, tmp_path)
    seen = lambda loader: Counter(d for b in loader for d in b["dataset"])  # noqa: E731
    assert set(seen(make_loader(mixed, "train", batch_size=4, num_workers=0))) == {"groupset", "solo"}
    only = make_loader(mixed, "train", batch_size=4, num_workers=0, dataset_weights={"groupset": 1.0})
    assert set(seen(only)) == {"groupset"}
    only = make_loader(mixed, "train", batch_size=4, num_workers=0, dataset_weights={"solo": 1.0})
    assert set(seen(only)) == {"solo"}
    # 3:1 over several seeds: groupset about three quarters of the stream
    counts = sum((seen(make_loader(mixed, "train", batch_size=8, num_workers=0, seed=seed,
                                   dataset_weights={"groupset": 3.0, "solo": 1.0})) for seed in range(8)), Counter())
    assert 0.65 < counts["groupset"] / sum(counts.values()) < 0.85, counts
    with pytest.raises(ConfigError, match="shards hold"):
        make_loader(out, "train", batch_size=4, num_workers=0, dataset_weights={"nope": 1.0})
    counts = np.zeros(2)
    for seed in range(6):
        for b in make_loader(out, "train", batch_size=8, num_workers=0, class_balance=True, seed=seed):
            counts += np.bincount(b["label"].numpy(), minlength=2)
    assert abs(counts[0] - counts[1]) / counts.sum() < 0.15  # about half real, half fake


def test_resampled_mode_has_a_defined_epoch(two_datasets):
    _, _, out = two_datasets
    loader = make_loader(out, "train", batch_size=4, num_workers=0, resampled=True, epoch_samples=20)
    assert len(loader) == 5 and sum(1 for _ in loader) == 5


def test_bad_shards_are_named_and_counted(two_datasets, tmp_path):
    _, _, out = two_datasets
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    # truncate one train shard and drop a field from a sample of another
    shards = sorted(shard_files(bad).glob("train-*.tar"))
    data = shards[0].read_bytes()
    with tarfile.open(shards[0]) as tf:  # cut inside the data of the middle image (a truncated download)
        pngs = [m for m in tf.getmembers() if m.name.endswith(".png") and not m.name.endswith(".mask.png")]
    cut = pngs[len(pngs) // 2]
    shards[0].write_bytes(data[: cut.offset_data + cut.size // 2])
    with tarfile.open(shards[1]) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    victim = next(m.name for m, _ in members if m.name.endswith(".cls"))
    with tarfile.open(shards[1], "w") as tf:
        for m, payload in members:
            if m.name != victim:
                import io

                tf.addfile(m, io.BytesIO(payload))
    # what survives: every sample of the intact shards, of shards[1] all but the victim, of shards[0] the samples
    # whose members all lie before the cut (the tar's first incomplete sample and the rest are lost)
    members, truncated = [], shards[0]
    with pytest.raises(tarfile.ReadError), tarfile.open(truncated) as tf:
        for m in tf:
            members.append(m.name)
    per_sample = Counter(n.split(".", 1)[0] for n in members)
    n_members = max(per_sample.values())
    lost = set(_tar_keys(out)[truncated.name]) - {k for k, c in per_sample.items() if c == n_members}
    expected = {k for name, ks in _tar_keys(out).items() if name.startswith("train-") for k in ks}
    expected -= lost | {victim.split(".")[0]}
    loader = make_loader(bad, "train", batch_size=4, num_workers=0, handler="warn")
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(expected) and victim.split(".")[0] not in keys
    # counted: the victim, the incomplete sample before the cut, and the truncated tar twice (cut inside a member's
    # data, webdataset reports it from the member read, then again from the tar iterator)
    assert any(c < n_members for c in per_sample.values())
    assert loader.errors == 4
    with pytest.raises(tarfile.ReadError) as e:  # in shard order the truncated tar is the first broken thing
        for _ in make_loader(bad, "train", batch_size=4, num_workers=0, handler="raise", shuffle=False):
            pass
    assert truncated.name in str(e.value)


def test_schema_mismatch_and_empty_sets_fail_clearly(two_datasets, tmp_path):
    _, _, out = two_datasets
    old = tmp_path / "old"
    shutil.copytree(out, old)
    index = json.loads((old / "index.json").read_text())
    index["schema_version"] = 0
    (old / "index.json").write_text(json.dumps(index))
    with pytest.raises(SchemaError, match="schema version 0"):
        make_loader(old, "train")
    with pytest.raises(InputError, match="split 'val' has no shards"):
        make_loader(out, "val")
    with pytest.raises(InputError, match="no such shard"):
        make_loader(tmp_path / "nothing", "train")
    n_test = len(json.loads((out / "index.json").read_text())["splits"]["test"]["shards"])
    with pytest.raises(ConfigError, match="some ranks would read nothing"):
        make_loader(out, "test", num_workers=1, world_size=n_test + 1, rank=0)


def test_shard_refuses_unlabelled_videos_and_leaks(two_datasets, tmp_path):
    root, cfg, _ = two_datasets
    partial = _manifest(tmp_path / "m.csv", [dict(path="pan.mp4", label="real", split="train", method="",
                                                  source_ids="")])
    inp = cfg.inputs[0].model_copy(update={"manifest": str(partial)})
    with pytest.raises(InputError, match="no manifest row for 1 extracted video"):
        run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": (inp,)}), progress=False)
    leak = _manifest(tmp_path / "leak.csv", [
        dict(path="pan.mp4", label="real", split="test", method="", source_ids=""),
        dict(path="zoom.mp4", label="fake", split="train", method="Zoom", source_ids="pan")])
    inp = cfg.inputs[0].model_copy(update={"manifest": str(leak)})
    with pytest.raises(InputError, match=r"leakage.*groupset:zoom \(train\) from groupset:pan \(test\)"):
        run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": (inp,)}), progress=False)
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").rglob("*.tar"))


def test_freq_stage_is_incremental_and_float16(two_datasets):
    root, _, _ = two_datasets
    ex, fq = root / "solo" / "extract", root / "solo" / "freq"
    again = run_freq(ex, fq, FreqConfig(views=VIEWS), workers=0, progress=False)
    assert again.processed == 0 and again.skipped == 2
    z = np.load(fq / "views" / "tom.npz")
    first = sorted(z.files)[0]
    assert z[first].dtype == np.float16 and z[first].shape == (3, 64, 64)
    changed = run_freq(ex, fq, FreqConfig(views=("block_dct",)), workers=0, progress=False)
    assert changed.processed == 2
    assert np.load(fq / "views" / "tom.npz")[sorted(np.load(fq / "views" / "tom.npz").files)[0]].shape == (64, 8, 8)
    run_freq(ex, fq, FreqConfig(views=VIEWS), workers=0, progress=False)  # restore for other tests


def test_real_media_extract_freq_shard_loader(real_run, tmp_path):
    """The shared FF++/DFDC clips end to end; FF++ official splits: 634_660 test, 004_982 val."""
    from tests.conftest import REAL_MANIFEST

    out, _, videos, faces = real_run
    fq = tmp_path / "freq"
    run_freq(out, fq, FreqConfig(views=("dct",)), workers=2, progress=False)
    cfg = ShardConfig(inputs=(ShardInput(dataset="shared", extract=str(out), freq=str(fq),
                                         manifest=str(REAL_MANIFEST)),), max_samples=50)
    run_shard(tmp_path / "shards", cfg, progress=False)
    keys = _tar_keys(tmp_path / "shards")
    assert sum(len(k) for k in keys.values()) == faces.height
    val = make_loader(tmp_path / "shards", "val", batch_size=16, num_workers=0, views=("dct",), shuffle=False,
                      masks=True)
    n = 0
    for b in val:
        assert set(b["method"]) <= {"original", "NeuralTextures"} and set(b["split"]) == {"val"}
        assert b["dct"].shape[1:] == (3, 256, 256) and b["mask"].shape[1:] == (1, 256, 256)
        for method, label, src, m in zip(b["method"], b["label"].tolist(), b["label_source"], b["mask"]):
            if method == "NeuralTextures":  # compared with original_004: fake, with a mask on the mouth
                assert (label, src) == (1, "original_diff") and 0 < m.mean() < 0.2
            else:
                assert (label, src) == (0, "video") and m.max() == 0
        n += len(b["key"])
    assert n == sum(len(k) for name, k in keys.items() if name.startswith("val"))


TORCHRUN_SCRIPT = """
import json, os, sys
from facepipe.data.loader import make_loader
shards, out = sys.argv[1], sys.argv[2]
loader = make_loader(shards, "train", batch_size=3, num_workers=2, seed=5)  # rank from torchrun's env
keys = [k for b in loader for k in b["key"]]
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"keys": keys, "world": os.environ["WORLD_SIZE"]}, f)
"""


@pytest.mark.integration
def test_torchrun_ranks_split_the_shards_by_themselves(two_datasets, tmp_path):
    import subprocess
    import sys

    _, _, out = two_datasets
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(out), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    assert all(g["world"] == "2" for g in got)
    a, b = set(got[0]["keys"]), set(got[1]["keys"])
    total = json.loads((out / "index.json").read_text())["splits"]["train"]["samples"]
    assert a and b and not a & b and len(a | b) == total


@pytest.mark.slow
def test_freq_shard_inspect_commands(two_datasets, tmp_path):
    import subprocess
    import sys

    root, cfg, _ = two_datasets
    run = lambda *a: subprocess.run([sys.executable, "-m", "facepipe", *a], capture_output=True, text=True)  # noqa: E731
    fq = tmp_path / "freq"
    r = run("freq", "--extract", str(root / "solo" / "extract"), "--out", str(fq), "--views", "fft,phase",
            "--workers", "0", "--no-progress")
    assert r.returncode == 0 and "2 videos processed" in r.stdout, r.stderr
    inp = cfg.inputs[1]
    spec = f"dataset=solo,extract={inp.extract},manifest={inp.manifest},freq={fq}"
    r = run("shard", "--out", str(tmp_path / "shards"), "--input", spec, "--max-samples", "5", "--no-progress")
    assert r.returncode == 0 and "test" in r.stdout, r.stderr
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["views"] == ["fft", "phase"] and index["splits"]["test"]["samples"] > 5
    r = run("inspect", str(tmp_path / "shards"), "--n", "4")
    assert r.returncode == 0, r.stderr
    # the mirrored face differs from the original on a flat background that does not: a fake face by comparison
    assert "| test  | solo    | fake  | original_diff | Mirror   | 6" in r.stdout, r.stdout
    assert (tmp_path / "shards" / "contact_sheet.png").is_file()
    import cv2

    sheet = cv2.imread(str(tmp_path / "shards" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] == 4 * 2 * 112
    # a truncated shard is reported, exit 1
    t = sorted(shard_files(tmp_path / "shards").glob("test-*.tar"))[0]
    t.write_bytes(t.read_bytes()[:3000])
    r = run("inspect", str(tmp_path / "shards"))
    assert r.returncode == 1 and "index says" in r.stderr and t.name in r.stderr
    r = run("shard", "--out", str(tmp_path / "s2"), "--input", "dataset=solo,extract=/nope")
    assert r.returncode == 1 and r.stderr.startswith("facepipe: error:")


@pytest.mark.slow
def test_example_manifest_is_labelled_and_leak_free(tmp_path):
    from facepipe.datasets import ManifestConfig, build_manifest
    from facepipe.stages.example import build_example

    d = build_example(tmp_path / "ex", seconds=0.4)
    m = build_manifest("csv", d, "example", ManifestConfig())  # fails on any leak
    files = {p.relative_to(d).as_posix() for p in d.rglob("*.mp4")}
    assert set(m["path"]) == files
    fakes = m.filter(pl.col("label") == 1)
    assert fakes.height == 3 and set(fakes["method"]) == {"SBI"}
    split = dict(zip(m["video_id"], m["split"]))
    for vid, srcs in zip(fakes["video_id"], fakes["source_ids"]):
        assert len(srcs) == 1 and [split[s] for s in srcs] == [split[vid]]
    owner: dict[str, str] = {}
    for ids, s in zip(m["identity_ids"], m["split"]):
        for i in ids:
            assert owner.setdefault(i, s) == s, f"identity {i} in two splits"
    assert set(m["split"]) == {"train", "val", "test"}


def test_shard_reads_views_freshly_after_freq_rewrites_them(two_datasets, tmp_path):
    """run_freq -> run_shard -> run_freq (other views, same npz paths) -> run_shard in one process."""
    root, cfg, _ = two_datasets
    inp = cfg.inputs[1]
    fq = tmp_path / "freq"
    run_freq(inp.extract, fq, FreqConfig(views=("dct",), dct_log=True), workers=0, progress=False)
    one = cfg.model_copy(update={"inputs": (inp.model_copy(update={"freq": str(fq)}),)})
    run_shard(tmp_path / "a", one, progress=False)
    run_freq(inp.extract, fq, FreqConfig(views=("dct",), dct_log=False), workers=0, progress=False)
    run_shard(tmp_path / "b", one, progress=False)
    a = next(iter(make_loader(tmp_path / "a", "test", batch_size=4, num_workers=0, shuffle=False, views=("dct",),
                              view_source="stored")))
    with pytest.raises(ConfigError, match="stored views were computed with freq parameters"):
        make_loader(tmp_path / "b", "test", views=("dct",), view_source="stored")  # dct_log differs from the default
    b = next(iter(make_loader(tmp_path / "b", "test", batch_size=4, num_workers=0, shuffle=False, views=("dct",),
                              view_source="stored", freq=FreqConfig(views=("dct",), dct_log=False))))
    assert a["key"] == b["key"]
    # DC coefficient of a 64 px crop: signed ~ 64 x mean (> 10), its log ~ 3.5
    assert (a["dct"][:, :, 0, 0] < 6).all() and (b["dct"][:, :, 0, 0] > 10).all()


def test_shard_checks_links_and_identities_across_datasets(two_datasets, tmp_path):
    """solo's fake made from groupset's pan (train) while solo is test: a leak no single manifest can see."""
    _, cfg, _ = two_datasets
    linked = _manifest(tmp_path / "solo.csv", [
        dict(path="tom.mp4", label="real", split="test", method="", source_ids=""),
        dict(path="tom_swap.mp4", label="fake", split="test", method="Mirror", source_ids="tom;groupset:pan")])
    inputs = (cfg.inputs[0], cfg.inputs[1].model_copy(update={"manifest": str(linked)}))
    with pytest.raises(InputError, match=r"across datasets.*solo:tom_swap \(test\) from groupset:pan \(train\)"):
        run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": inputs}), progress=False)
    run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": inputs, "cross_dataset_leakage": "warn"}),
              progress=False)
    # the same person in both datasets, in different splits
    with open(tmp_path / "g.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "method", "source_ids", "identity_ids"])
        w.writeheader()
        w.writerows([dict(path="pan.mp4", label="real", split="train", method="", source_ids="", identity_ids="tom"),
                     dict(path="zoom.mp4", label="fake", split="train", method="Zoom", source_ids="pan",
                          identity_ids="")])
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "split", "method", "source_ids", "identity_ids"])
        w.writeheader()
        w.writerows([dict(path="tom.mp4", label="real", split="test", method="", source_ids="", identity_ids="tom"),
                     dict(path="tom_swap.mp4", label="fake", split="test", method="Mirror", source_ids="tom",
                          identity_ids="tom")])
    inputs = (cfg.inputs[0].model_copy(update={"manifest": str(tmp_path / "g.csv")}),
              cfg.inputs[1].model_copy(update={"manifest": str(tmp_path / "t.csv")}))
    with pytest.raises(InputError, match=r"identity tom in groupset:train, solo:test"):
        run_shard(tmp_path / "s2", cfg.model_copy(update={"inputs": inputs}), progress=False)


def test_shard_refuses_stale_or_unlabelled_extracts(two_datasets, tmp_path):
    root, cfg, _ = two_datasets
    flipped = _manifest(tmp_path / "m.csv", [dict(path="pan.mp4", label="fake", split="train", method="X",
                                                  source_ids=""),
                                             dict(path="zoom.mp4", label="fake", split="train", method="Zoom",
                                                  source_ids="")])
    inp = cfg.inputs[0].model_copy(update={"manifest": str(flipped)})
    with pytest.raises(InputError, match=r"video labels of 1 video\(s\) differ .* the extract output is stale"):
        run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": (inp,)}), progress=False)
    ex = tmp_path / "nolabels"
    cfg_x = ExtractConfig.model_validate({"sampling": {"num_frames": 2}, "face_detector": {"name": "mtcnn"},
                                          "align": {"size": 64}, "workers": 0})
    run_extract(root / "groupset" / "videos", ex, cfg_x, progress=False)  # no manifest: faces have no labels
    inp = cfg.inputs[0].model_copy(update={"extract": str(ex), "freq": None})
    with pytest.raises(InputError, match=r"extracted without the manifest.*rerun 'facepipe extract --manifest"):
        run_shard(tmp_path / "s", cfg.model_copy(update={"inputs": (inp,), "views": None}), progress=False)


def test_resampling_reaches_every_shard_over_passes(two_datasets):
    _, _, out = two_datasets
    shards = json.loads((out / "index.json").read_text())["splits"]["train"]["shards"]
    loader = make_loader(out, "train", batch_size=1, num_workers=0, resampled=True, epoch_samples=2, shuffle=False)
    seen, first = set(), None
    for _ in range(12):
        keys = {k for b in loader for k in b["key"]}
        first = first or keys
        seen |= keys
    total = json.loads((out / "index.json").read_text())["splits"]["train"]["samples"]
    # each pass draws its own shards: over 12 passes of 2 samples the stream leaves the first pass's shards
    assert len(seen) > len(first) and len(shards) > 1 and len(seen) <= total


@pytest.mark.slow
def test_shuffling_workers_start_under_spawn_and_errors_are_exact(two_datasets, tmp_path):
    import pickle

    _, _, out = two_datasets
    loader = make_loader(out, "train", batch_size=4, num_workers=2, seed=1, multiprocessing_context="spawn")
    pickle.loads(pickle.dumps(loader._pipe))  # what spawned workers receive
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == len(set(keys)) == json.loads((out / "index.json").read_text())["splits"]["train"]["samples"]
    # exactly 3 broken samples, one of them the last sample a worker reads: all counted
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    n_broken = 0
    for t in sorted(shard_files(bad).glob("train-*.tar"))[:3]:
        with tarfile.open(t) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
        victim = [m.name for m, _ in members if m.name.endswith(".cls")][-1]
        import io

        with tarfile.open(t, "w") as tf:
            for m, payload in members:
                if m.name != victim:
                    tf.addfile(m, io.BytesIO(payload))
        n_broken += 1
    loader = make_loader(bad, "train", batch_size=4, num_workers=2, shuffle=False, multiprocessing_context="spawn")
    got = [k for b in loader for k in b["key"]]
    assert loader.errors == n_broken and len(got) == len(keys) - n_broken


def test_stored_views_are_used_only_when_they_equal_the_computed_ones(two_datasets):
    _, _, out = two_datasets
    small = make_loader(out, "test", batch_size=4, num_workers=0, shuffle=False, views=("dct",), image_size=32)
    assert small.compute_views  # the stored 64 px views would not match the 32 px images
    assert next(iter(small))["dct"].shape[1:] == (3, 32, 32)
    with pytest.raises(ConfigError, match="stored views are 64 px, the images will be 32 px"):
        make_loader(out, "test", views=("dct",), image_size=32, view_source="stored")
    assert make_loader(out, "test", views=("dct",)).compute_views is False
    assert make_loader(out, "test", views=("dct",), freq=FreqConfig(dct_log=False)).compute_views
    with pytest.raises(ConfigError, match="computed with freq parameters"):
        make_loader(out, "test", views=("srm",), freq=FreqConfig(srm_truncate=2.0), view_source="stored")


def test_tta_recomputes_spectral_views_of_the_flipped_image(two_datasets):
    from torch import nn

    from facepipe.models._registry import ModelSpec
    from facepipe.train.engine import predict

    _, _, out = two_datasets

    class DctProbe(nn.Module):
        """Its logit is the mean of the dct view's first column: changes if the spectrum itself is flipped."""

        spec = ModelSpec("probe", inputs=("image", "dct"))

        def forward(self, x):
            return x["dct"][:, :, :, 0].mean(dim=(1, 2)) + 0 * x["image"].mean()

    loader = make_loader(out, "test", batch_size=6, num_workers=0, shuffle=False, views=("dct",),
                         view_source="compute")
    plain = predict(DctProbe(), loader)["score"].to_numpy()
    tta = predict(DctProbe(), loader, tta_hflip=True)["score"].to_numpy()
    b = next(iter(loader))
    flipped = loader.views_of(b["image"].flip(-1))["dct"]
    expect = (torch.sigmoid(b["dct"][:, :, :, 0].mean(dim=(1, 2))) +
              torch.sigmoid(flipped[:, :, :, 0].mean(dim=(1, 2)))) / 2
    np.testing.assert_allclose(tta[:6], expect.numpy(), rtol=1e-5)
    # the DCT of a flipped image is not the flipped DCT (|DCT| is even flip-invariant), so the old
    # flip-the-view TTA gave other numbers
    assert not torch.allclose(flipped, b["dct"].flip(-1), atol=1e-3)
    old = (torch.sigmoid(b["dct"][:, :, :, 0].mean(dim=(1, 2))) +
           torch.sigmoid(b["dct"].flip(-1)[:, :, :, 0].mean(dim=(1, 2)))) / 2
    assert not np.allclose(old.numpy(), tta[:6], atol=1e-3) and np.allclose(plain, tta, atol=1e-5)


def test_tta_scales_average_probabilities_over_rescaled_images_with_their_own_views(two_datasets):
    """evaluate.tta.scales (issue 24 item 3): each scale resizes the image about its centre (cropped or padded
    back), its views are recomputed from it, and the score is the mean of the versions' probabilities."""
    from torch import nn

    from facepipe.models._registry import ModelSpec
    from facepipe.train.engine import _rescale, predict

    _, _, out = two_datasets

    class Probe(nn.Module):
        spec = ModelSpec("probe", inputs=("image", "srm"))

        def forward(self, x):
            return x["srm"].mean(dim=(1, 2, 3)) + x["image"][:, :, :8, :8].mean(dim=(1, 2, 3))

    loader = make_loader(out, "test", batch_size=6, num_workers=0, shuffle=False, views=("srm",),
                         view_source="compute")
    got = predict(Probe(), loader, tta_hflip=True, tta_scales=(0.8, 1.0, 1.25))["score"].to_numpy()[:6]
    b = next(iter(loader))
    ps = []
    for s in (0.8, 1.0, 1.25):
        for flip in (False, True):
            img = _rescale(b["image"].flip(-1) if flip else b["image"], s)
            ps.append(torch.sigmoid(Probe()({"image": img, "srm": loader.views_of(img)["srm"]})))
    np.testing.assert_allclose(got, torch.stack(ps).mean(0).numpy(), rtol=1e-5)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert _rescale(x, 0.5)[0, 0, 0].tolist() == [0, 0, 0, 0] and _rescale(x, 2.0).shape == x.shape
    assert not np.allclose(got, predict(Probe(), loader)["score"].to_numpy()[:6])


def test_tta_hflip_is_the_old_name_of_tta_flip():
    from facepipe.stages.evaluate import EvaluateConfig

    with pytest.warns(FutureWarning, match="tta.flip"):
        cfg = EvaluateConfig.model_validate({"tta_hflip": True})
    assert cfg.tta.flip and cfg.tta.describe() == "flip (mean of probabilities)"
    assert EvaluateConfig(tta={"scales": [0.9, 1.0, 1.1]}).tta.describe() == "scales 0.9/1/1.1 (mean of probabilities)"
    with pytest.raises(Exception, match="positive"):
        EvaluateConfig(tta={"scales": [0.0]})


def test_jpeg_shards_decode_in_workers_and_on_the_device_alike(two_datasets, tmp_path):
    """JPEG crops (extract.output.format: jpg): the index records the format; decoding the batch on the loader's
    device (torchvision; nvJPEG on CUDA, here libjpeg-turbo on the CPU) gives the workers' images."""
    root, _, _ = two_datasets
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 6}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 64}, "workers": 0, "output": {"format": "jpg"}})
    run_extract(root / "groupset" / "videos", tmp_path / "ex", cfg, progress=False,
                manifest=root / "groupset" / "manifest.csv")
    run_shard(tmp_path / "sh", ShardConfig(inputs=(ShardInput(dataset="groupset", extract=str(tmp_path / "ex"),
                                                              manifest=str(root / "groupset" / "manifest.csv")),),
                                           max_samples=6), progress=False)
    index = json.loads((tmp_path / "sh" / "index.json").read_text())
    assert index["image_format"] == "jpg" and index["crop_size"] == 64
    kw = dict(batch_size=5, num_workers=0, shuffle=False, masks=True)
    cpu = make_loader(tmp_path / "sh", "train", decode="workers", **kw)
    dev = make_loader(tmp_path / "sh", "train", decode="device", **kw)
    assert dev._pipe.device_decode and not cpu._pipe.device_decode
    n = 0
    for a, b in zip(cpu, dev):
        assert a["key"] == b["key"] and b["image"].shape == a["image"].shape == (len(a["key"]), 3, 64, 64)
        # the same libjpeg-turbo IDCT: equal up to float rounding of the normalisation
        torch.testing.assert_close(b["image"], a["image"], atol=1e-5, rtol=0)
        torch.testing.assert_close(b["mask"], a["mask"])
        n += len(a["key"])
    assert n == index["splits"]["train"]["samples"]
    small = next(iter(make_loader(tmp_path / "sh", "train", decode="device", image_size=48, **kw)))
    ref = next(iter(make_loader(tmp_path / "sh", "train", decode="workers", image_size=48, **kw)))
    assert small["image"].shape[1:] == (3, 48, 48) and small["mask"].shape[1:] == (1, 48, 48)
    assert (small["image"] - ref["image"]).abs().mean() < 0.05  # antialiased bilinear vs OpenCV's resize
    with pytest.raises(ConfigError, match="augment"):
        make_loader(tmp_path / "sh", "train", decode="device", augment=True)
    with pytest.raises(ConfigError, match="JPEG"):  # the PNG shards of the fixture
        make_loader(two_datasets[2], "train", decode="device")


def test_crops_decode_with_the_fast_decoders_exactly_as_opencv(tmp_path):
    """libspng / libjpeg-turbo give OpenCV's pixels; what they do not cover falls back to OpenCV."""
    import cv2

    from facepipe.data.schema import decode_image

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8), (5, 5), 0)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    png = cv2.imencode(".png", bgr)[1].tobytes()
    assert np.array_equal(decode_image(png, "png"), img)
    jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert np.array_equal(decode_image(jpg, "jpg"), cv2.cvtColor(cv2.imdecode(np.frombuffer(jpg, np.uint8), 1),
                                                                 cv2.COLOR_BGR2RGB))
    for odd in (img[..., 0], np.dstack([bgr, np.full(img.shape[:2], 255, np.uint8)]), bgr.astype(np.uint16) * 257):
        out = decode_image(cv2.imencode(".png", odd)[1].tobytes(), "png")
        assert out.shape == img.shape and out.dtype == np.uint8
    assert decode_image(png[:60], "png") is None and decode_image(b"not an image", "jpg") is None


# The sample order of two passes (epochs 0 and 1) over the fixture's train split (6 shards: shard order, worker
# split, shuffle buffer and resampling all matter), recorded with the loader of commit d1a5469 (before
# facepipe/data/loader.py was split into index / pipeline / device / loader and kept one pipeline for every pass).
# "<shard>:<position in its tar>" per sample; tests/test_loader_pipeline.py does the same on the example shards.
RECORDED_TRAIN_ORDERS = {
    "w2_seed3": (dict(batch_size=4, num_workers=2, seed=3), (
        "1:0 5:1 1:5 0:5 2:0 4:4 3:3 2:1 1:1 1:3 0:3 1:4 4:3 2:3 2:4 3:4 0:4 5:0 1:2 0:1 4:1 4:5 3:2 3:5 0:2 0:0 "
        "4:0 3:1 2:5 4:2 3:0 2:2",
        "0:2 4:2 0:5 0:0 1:1 1:2 2:4 3:2 4:3 4:1 0:4 4:5 2:5 1:4 3:1 1:5 5:1 0:3 5:0 4:0 2:1 3:0 3:4 2:3 0:1 4:4 "
        "3:3 2:0 3:5 2:2 1:0 1:3")),
    "w0_seed5_buffer7": (dict(batch_size=3, num_workers=0, seed=5, shuffle_buffer=7), (
        "4:5 4:2 0:2 4:4 4:3 4:0 4:1 0:4 3:1 0:3 3:3 3:0 3:5 0:5 3:2 3:4 0:0 1:4 1:5 5:1 1:0 0:1 1:2 2:3 5:0 1:1 "
        "1:3 2:2 2:5 2:1 2:0 2:4",
        "1:0 2:5 2:0 2:2 1:2 1:4 2:4 1:1 3:2 1:5 3:4 3:3 2:3 3:5 3:0 2:1 0:0 5:0 1:3 0:2 4:0 4:1 3:1 0:4 4:4 0:5 "
        "4:3 0:3 0:1 5:1 4:5 4:2")),
    "resampled_w2": (dict(batch_size=2, num_workers=2, seed=9, resampled=True, epoch_samples=12), (
        "4:3 4:5 3:2 0:0 1:3 4:4 2:2 3:5 5:1 1:0 4:4 3:0",
        "1:5 2:1 0:2 3:3 4:3 1:2 0:0 4:4 0:5 3:1 2:5 1:2")),
}


@pytest.mark.parametrize("name", list(RECORDED_TRAIN_ORDERS))
def test_epochs_give_the_sample_order_of_the_loader_before_one_persistent_pipeline(two_datasets, name):
    _, _, out = two_datasets
    index = json.loads((out / "index.json").read_text())
    assert [s["samples"] for s in index["splits"]["train"]["shards"]] == [6, 6, 6, 6, 6, 2], "fixture changed"
    pos = {}
    for i, sh in enumerate(index["splits"]["train"]["shards"]):
        with tarfile.open(out / sh["url"]) as tf:
            pos.update({k: f"{i}:{j}" for j, k in enumerate(dict.fromkeys(n.split(".", 1)[0] for n in tf.getnames()))})
    kw, orders = RECORDED_TRAIN_ORDERS[name]
    loader = make_loader(out, "train", **kw)
    for epoch in (0, 1):
        assert " ".join(pos[k] for b in loader for k in b["key"]) == orders[epoch], f"epoch {epoch}"
