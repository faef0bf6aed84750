"""Self-blended images on the fly (issue 24 item 1): the blend itself, labels and masks through the loader, seeded
reproducibility, independence across ranks, and the refusal without landmarks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from facepipe.data import make_loader
from facepipe.data.sbi import HULL_TYPES, SBIConfig, SelfBlender, hull_mask
from facepipe.errors import ConfigError


@pytest.fixture(scope="module")
def lm_shards(tmp_path_factory) -> Path:
    """The example (short clips) extracted with 68-point landmarks (128 px crops) and sharded."""
    from facepipe.datasets import ManifestConfig, build_manifest
    from facepipe.stages import extract, shard
    from facepipe.stages.example import build_example
    from facepipe.stages.extract import ExtractConfig

    root = tmp_path_factory.mktemp("sbi")
    videos = build_example(root / "videos", seconds=0.4)
    build_manifest("csv", videos, "example", ManifestConfig()).write_parquet(root / "manifest.parquet")
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 3}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 128}, "workers": 0, "landmarks68": True})
    extract.run(videos, root / "extract", cfg, progress=False, manifest=root / "manifest.parquet")
    shard.run(root / "shards", shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="example", extract=str(root / "extract"), manifest=str(root / "manifest.parquet")),), max_samples=8),
        progress=False)
    return root


def test_a_blend_differs_from_its_target_only_inside_the_dilated_face_hull(lm_shards):
    """Over many draws (every hull type, both transform targets): the fake equals the target wherever the blend mask
    is 0, the mask is 0 outside the landmarks' hull dilated by the largest shift the recipe allows (affine 3 % + 5 %
    scale, elastic deformation, two blurs: 20 % of the crop here), and inside the face it is not empty."""
    faces = pl.read_parquet(lm_shards / "extract" / "faces.parquet").filter(pl.col("label") == 0).head(4)
    blender = SelfBlender(0)
    for r in faces.iter_rows(named=True):
        img = cv2.imread(str(lm_shards / "extract" / r["crop_path"]))[..., ::-1]
        lm = np.asarray(r["crop_landmarks"])
        hull = hull_mask(lm, img.shape[:2], "facehull").astype(np.uint8)
        k = int(0.2 * img.shape[0]) * 2 + 1
        near = cv2.dilate(hull, np.ones((k, k), np.uint8)) > 0
        for _ in range(6):
            target, fake, mask = blender(img, lm)
            assert fake.shape == img.shape and fake.dtype == np.uint8 and 0 <= mask.min() and mask.max() <= 1
            assert np.array_equal(fake[mask == 0], target[mask == 0])
            assert not mask[~near].any()
            assert mask[hull > 0].mean() > 0.1
    for kind in HULL_TYPES:
        assert hull_mask(lm, img.shape[:2], kind).sum() > 0.05 * img.shape[0] * img.shape[1]


def test_pairs_labels_masks_and_reals_only(lm_shards):
    dl = make_loader(lm_shards / "shards", "train", batch_size=64, num_workers=0, shuffle=False, masks=True,
                     sbi=SBIConfig())
    b = next(iter(dl))
    src = b["label_source"]
    assert set(src) == {"video", "sbi"}  # reals_only: the set's own fakes (original_diff / policy) left out
    assert b["key"][0::2] == b["key"][1::2] and set(src[0::2]) == {"video"} and set(src[1::2]) == {"sbi"}
    assert b["label"][0::2].eq(0).all() and b["label"][1::2].eq(1).all()
    masks = b["mask"].flatten(1).amax(1)
    assert masks[0::2].eq(0).all() and masks[1::2].gt(0).all()
    assert len(dl) == 1 and b["label"].numel() == 2 * dl.dataset.shardset.cells[("example", 0)]
    mixed = make_loader(lm_shards / "shards", "train", batch_size=64, num_workers=0, shuffle=False,
                        sbi=SBIConfig(mode="replace", p=0.5, reals_only=False))
    m = next(iter(mixed))
    assert {"video", "sbi"} <= set(m["label_source"]) and m["label"].numel() == sum(
        mixed.dataset.shardset.cells.values())


def test_seeded_and_different_per_epoch_and_rank(lm_shards):
    def images(**kw):
        dl = make_loader(lm_shards / "shards", "train", batch_size=64, num_workers=0, shuffle=False,
                         sbi=SBIConfig(), **kw)
        return [next(iter(dl))["image"] for _ in range(2)]  # epochs 0 and 1

    a, b = images(seed=3), images(seed=3)
    assert all(x.equal(y) for x, y in zip(a, b))  # the same seed and epoch: the same fakes
    assert not a[0][1::2].equal(a[1][1::2])  # another epoch: other fakes of the same reals
    r0 = make_loader(lm_shards / "shards", "train", batch_size=8, num_workers=0, resampled=True, epoch_samples=16,
                     rank=0, world_size=2, seed=3, sbi=SBIConfig())
    r1 = make_loader(lm_shards / "shards", "train", batch_size=8, num_workers=0, resampled=True, epoch_samples=16,
                     rank=1, world_size=2, seed=3, sbi=SBIConfig())
    f0 = {k: x for b_ in r0 for k, x, s in zip(b_["key"], b_["image"], b_["label_source"]) if s == "sbi"}
    f1 = {k: x for b_ in r1 for k, x, s in zip(b_["key"], b_["image"], b_["label_source"]) if s == "sbi"}
    common = set(f0) & set(f1)
    assert common and all(not f0[k].equal(f1[k]) for k in common)  # ranks draw their own blends


def test_sbi_refuses_shards_without_landmarks(example_shards):
    with pytest.raises(ConfigError, match="extract.landmarks68"):
        make_loader(example_shards, "train", num_workers=0, sbi=SBIConfig())


@pytest.mark.slow
def test_training_with_sbi(lm_shards, tmp_path):
    """train.sbi: the train stream is pairs of reals and their self-blended fakes (labels balanced), validation the
    val split's own faces."""
    import json

    from facepipe.stages.train import TrainConfig
    from facepipe.stages.train import run as run_train

    cfg = TrainConfig(model="resnet18", image_size=64, batch_size=8, steps=2, eval_every=2, checkpoint_every=2,
                      num_workers=0, sbi=SBIConfig())
    s = run_train(lm_shards / "shards", tmp_path / "run", cfg, progress=False)
    assert s["steps"] == 2
    from facepipe.train.engine import load_checkpoint

    assert load_checkpoint(tmp_path / "run" / "last.pt")["params"]["sbi"] == {"mode": "pair", "p": 0.5,
                                                                              "reals_only": True}
    assert json.loads((tmp_path / "run" / "train.json").read_text())["steps"] == 2


def test_a_resumed_pass_continues_inside_a_real_and_fake_pair(lm_shards):
    """Batches of 3 split a (real, self-blended fake) pair: the state records the half delivered, and the resumed
    pass starts with the pair's fake, blended exactly as the uninterrupted pass blended it."""
    kw = dict(batch_size=3, num_workers=0, seed=2, sbi=SBIConfig())

    def items(batches):
        return [(k, s, round(float(x.double().sum()), 3))
                for b in batches for k, s, x in zip(b["key"], b["label_source"], b["image"])]

    full = items(make_loader(lm_shards / "shards", "train", **kw))
    killed = make_loader(lm_shards / "shards", "train", **kw)
    it = iter(killed)
    first = items([next(it)])
    state = killed.state_dict()
    assert list(state["positions"].values()) == [[1, 1]]  # one real consumed, the fake of the next delivered
    resumed = make_loader(lm_shards / "shards", "train", **kw)
    resumed.load_state_dict(state)
    assert first + items(resumed) == full
