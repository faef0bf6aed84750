"""The video detectors of the zoo (issue 23 item 4): shapes as their papers build them, tiny configurations that
train two steps on the example's clip shards and evaluate at clip and video level, and the refusals between frame
and clip sets."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from facepipe.errors import InputError
from facepipe.models import create_model, get_spec
from facepipe.stages.train import TrainConfig
from facepipe.stages.train import run as run_train

TINY = {
    "tall": {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "img_size": 224,
             "window_size": 7},
    "r3d_18": {},
    "ftcn": {"clip_length": 4, "width": 8, "blocks": (1, 1, 1), "heads": 2, "dim_head": 8, "mlp_dim": 32},
    "clip_pool": {"backbone": "resnet18"},
}


def test_every_clip_model_is_listed_here():
    from facepipe.models import list_models

    assert {n for n in list_models() if get_spec(n).sample_kind == "clip"} == set(TINY)


def test_ftcn_is_fully_temporal_and_gives_16_steps_of_1024_at_32x224():
    """FTCN's backbone: every conv has spatial kernel 1 (temporal kernels 5 / 3 / 1 kept), and a 32 x 224 x 224
    clip reaches the temporal Transformer as 16 time steps of 1024 channels on a 14 x 14 grid."""
    m = create_model("ftcn").eval()
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv3d)]
    assert all(c.kernel_size[1:] == (1, 1) and c.stride == (1, 1, 1) for c in convs)
    assert {c.kernel_size[0] for c in convs} == {5, 3, 1} and convs[0].kernel_size == (5, 1, 1)
    grid = {}
    m.res4.register_forward_hook(lambda mod, i, o: grid.__setitem__("res4", o.shape))
    with torch.no_grad():
        out = m({"image": torch.randn(1, 32, 3, 224, 224)})
    assert out.shape == (1,) and grid["res4"] == (1, 1024, 16, 14, 14)
    assert len(m.transformer.layers) == 1 and m.transformer.heads == 16 and m.transformer.pos_embedding.shape == (
        1, 17, 1024)
    with pytest.raises(Exception, match="built for 16 time steps"):
        m({"image": torch.randn(1, 16, 3, 64, 64)})


def test_tall_lays_frames_out_row_by_row_and_cuts_the_same_square_in_every_frame():
    m = create_model("tall", **TINY["tall"])
    x = torch.stack([torch.full((3, 224, 224), float(i)) for i in range(4)])[None]  # frame i is constant i
    th = m.thumbnail(x)[0, 0]
    assert th.shape == (224, 224)
    assert [th[50, 50].item(), th[50, 170].item(), th[170, 50].item(), th[170, 170].item()] == [0, 1, 2, 3]
    torch.manual_seed(0)
    cut = m._cutout(torch.ones(2, 4, 3, 64, 64))
    holes = cut == 0
    assert all(torch.equal(holes[b, 0], holes[b, t]) for b in range(2) for t in range(4))
    assert 0 < holes[0, 0, 0].sum() <= 16 * 16
    with pytest.raises(Exception, match="takes clips of 4 frames"):
        m({"image": torch.randn(1, 8, 3, 64, 64)})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_clip_models_train_two_steps_and_evaluate(name, example_clip_shards, tmp_path):
    from facepipe.stages.evaluate import EvaluateConfig
    from facepipe.stages.evaluate import run as run_evaluate

    cfg = TrainConfig(model=name, model_options=TINY[name], image_size=64 if name != "tall" else 64, batch_size=4,
                      steps=2, eval_every=2, checkpoint_every=2, num_workers=0, lr=1e-3)
    s = run_train(example_clip_shards, tmp_path / "run", cfg, progress=False)
    assert s["steps"] == 2 and (tmp_path / "run" / "best.pt").is_file()
    m = run_evaluate(tmp_path / "run" / "best.pt", [example_clip_shards], tmp_path / "eval",
                     EvaluateConfig(split="test", num_workers=0), progress=False)
    assert m["video"]["n"] >= 2 and m["frame"]["n"] >= m["video"]["n"]  # clip level, then the mean over clips

    preds = pl.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert preds["clip_id"].null_count() == 0 and preds["key"].str.contains("__c").all()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["video"]["n"] == m["video"]["n"]
    # Grad-CAM over the frames of each clip: maps per frame laid side by side, statistics over the clip
    import numpy as np

    from facepipe.explain import explain

    e = explain(tmp_path / "run" / "best.pt", example_clip_shards, tmp_path / "explain", n=2, progress=False)
    maps = np.load(tmp_path / "explain" / "maps.npz")
    assert e["n"] == 2 and e["explain_method"] == "gradcam"
    assert maps["fake"].shape == (2, 64, 4 * 64) and np.isfinite(maps["fake"].astype(np.float32)).all()
    # not blank: a map of one sign may be (Grad-CAM's ReLU keeps the positive part, after 2 steps the fake logit's
    # weighted activations can be negative everywhere), but without gradients both would be
    assert max(float(maps["fake"].max()), float(maps["real"].max())) > 0
    summary = pl.read_parquet(tmp_path / "explain" / "summary.parquet")
    assert summary["face_mass_chance"].is_between(0.05, 0.95).all()
    assert all((tmp_path / "explain" / f).is_file() for f in summary["comparison_png"])


@pytest.mark.slow
def test_frame_and_clip_sets_are_refused_to_the_other_kind_of_model(example_shards, example_clip_shards, tmp_path):
    with pytest.raises(InputError, match="reads clips of consecutive frames, this shard set holds single frames"):
        run_train(example_shards, tmp_path / "a", TrainConfig(model="r3d_18", steps=1, num_workers=0),
                  progress=False)
    with pytest.raises(InputError, match="reads single face crops, this shard set holds clips of 4"):
        run_train(example_clip_shards, tmp_path / "b", TrainConfig(model="resnet18", steps=1, num_workers=0),
                  progress=False)
    with pytest.raises(InputError, match="built for clips of 32 frames, the set holds clips of 4"):
        run_train(example_clip_shards, tmp_path / "c", TrainConfig(model="ftcn", steps=1, num_workers=0),
                  progress=False)


@pytest.mark.slow
def test_clip_sets_balance_and_split_like_frame_sets(example_clip_shards):
    """class_balance, resampled streams and rank splitting work on clips as on frames."""
    from facepipe.data import make_loader

    index = json.loads((example_clip_shards / "index.json").read_text())
    val = index["splits"]["val"]
    assert len(val["shards"]) >= 2  # two ranks need two shards
    keys = []
    for rank in (0, 1):
        dl = make_loader(example_clip_shards, "val", batch_size=4, num_workers=0, shuffle=False, rank=rank,
                         world_size=2)
        keys.append([k for b in dl for k in b["key"]])
    assert not set(keys[0]) & set(keys[1]) and len(keys[0]) + len(keys[1]) == val["samples"]
    fake_share = sum(sh["labels"].get("fake", 0) for sh in val["shards"]) / val["samples"]
    dl = make_loader(example_clip_shards, "val", batch_size=8, num_workers=0, resampled=True, epoch_samples=240,
                     class_balance=True, seed=1)
    labels = torch.cat([b["label"] for b in dl])
    assert fake_share < 0.4 and len(labels) >= 40 and 0.35 < labels.float().mean().item() < 0.65
