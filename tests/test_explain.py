"""facepipe explain: sanity of the maps (toy models whose answer is known), every zoo member with its default method,
the outputs on the example's shards, the gallery in headless Chromium, and the error for a model without global
attention."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import polars as pl
import pytest
import timm
import torch
from test_models import TINY
from torch import nn

from facepipe.errors import ConfigError, InputError
from facepipe.explain import (
    SUMMARY_SCHEMA,
    ImageModel,
    area_share,
    attention_rollout,
    attention_sites,
    explain_batch,
    face_mass,
    face_region,
    pointing_hit,
    relevance_to_grid,
    resolve_layers,
    summary_means,
    topk_iou,
    write_gallery,
)
from facepipe.models import ModelSpec, create_model, list_models
from tests.conftest import chromium_dom

HALF = (0.5, 0.5, 0.5)


class QuadrantCNN(nn.Module):
    """Output = positive sum of ReLU features of the top-right quadrant only (rows < H/2, columns >= W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = ModelSpec("toy_quadrant", input_size=32, target_layer="masked")
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        keep = torch.zeros(1, 1, 16, 16)
        keep[..., :8, 8:] = 1
        self.register_buffer("keep", keep)
        self.masked = nn.Identity()
        self.head = nn.Linear(8, 1)
        nn.init.constant_(self.head.weight, 1.0)
        nn.init.zeros_(self.head.bias)

    def forward(self, inputs):
        f = self.masked(self.features(inputs["image"]) * self.keep)
        return self.head(f.mean((2, 3))).squeeze(1)


def test_gradcam_of_a_quadrant_model_lies_in_its_quadrant():
    torch.manual_seed(0)
    w = ImageModel(QuadrantCNN())
    real, fake, logits = explain_batch(w, torch.rand(4, 3, 32, 32), "gradcam")
    assert fake.shape == (4, 32, 32) and logits.shape == (4,)
    share = fake[:, :16, 16:].sum((1, 2)) / fake.sum((1, 2))
    assert (share > 0.9).all(), share  # measured: 0.97-0.98 (bilinear upsampling spills over the border)
    # the map is not transposed or flipped: the top-left and bottom quadrants hold almost nothing
    assert (fake[:, 16:, :].sum((1, 2)) / fake.sum((1, 2)) < 0.05).all()
    # the real map (-logit) has only negative weights here: Grad-CAM's ReLU leaves nothing; the maps differ
    assert real.max() == 0 and not np.allclose(real, fake)
    _, fake_pp, _ = explain_batch(w, torch.rand(2, 3, 32, 32), "gradcam++")
    assert (fake_pp[:, :16, 16:].sum((1, 2)) / fake_pp.sum((1, 2)) > 0.9).all()


class OnePatchViT(nn.Module):
    """A one-block ViT (class token, no position embedding, no qkv bias) that zeroes every patch token but ``p``:
    its output depends on patch ``p`` only."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.spec = ModelSpec("toy_vit", input_size=32, mean=HALF, std=HALF, target_layer="vit.blocks.-1.norm1",
                              explain="attn_grad")
        self.vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32,
                                     patch_size=8, embed_dim=32, depth=1, num_heads=2, qkv_bias=False)
        with torch.no_grad():
            self.vit.pos_embed.zero_()
        keep = torch.zeros(1, 16, 1)
        keep[0, p] = 1
        self.register_buffer("keep", keep)
        self.head = nn.Linear(32, 1)

    def forward(self, inputs):
        x = self.vit.patch_embed(inputs["image"]) * self.keep
        x = self.vit.norm_pre(self.vit._pos_embed(x))
        x = self.vit.norm(self.vit.blocks(x))
        return self.head(x[:, 0]).squeeze(1)


@pytest.mark.parametrize("p", [5, 14])
def test_gradient_weighted_attention_peaks_at_the_patch_that_decides(p):
    torch.manual_seed(p)
    w = ImageModel(OnePatchViT(p))
    real, fake, _ = explain_batch(w, torch.randn(3, 3, 32, 32), "attn_grad", layers="all")
    row, col = divmod(p, 4)
    for both in real + fake:  # one of the two signs pushes through the patch; the other map is blank
        iy, ix = np.unravel_index(np.argmax(both), both.shape)
        assert (iy // 8, ix // 8) == (row, col)


def test_rollout_rows_sum_to_one_and_form_the_token_grid():
    torch.manual_seed(0)
    model = OnePatchViT(3)
    from facepipe.explain import AttentionTap

    sites = attention_sites(model)
    assert [s.name for s in sites] == ["vit.blocks.0.attn"]
    with AttentionTap(sites) as tap:
        model({"image": torch.randn(2, 3, 32, 32)})
        attn = list(tap.maps)
    assert attn[0].shape == (2, 2, 17, 17) and attn[0].requires_grad  # kept in the graph
    for fusion in ("mean", "max", "min"):
        r = attention_rollout(attn * 3, fusion)
        assert r.shape == (2, 17, 17)
        torch.testing.assert_close(r.sum(-1), torch.ones(2, 17))
        assert relevance_to_grid(r, 1, True).shape == (2, 4, 4)
    real, fake, _ = explain_batch(ImageModel(model), torch.randn(2, 3, 32, 32), "rollout")
    assert fake.shape == (2, 32, 32) and np.array_equal(real, fake)  # gradient-free: class-agnostic


def test_frozen_clip_backbone_maps_are_not_blank():
    kw, size = TINY["clip_linear"]
    torch.manual_seed(0)
    model = create_model("clip_linear", **kw)
    assert not any(p.requires_grad for p in model.clip.parameters())  # frozen: only the head trains
    w = ImageModel(model)
    x = torch.randn(2, 3, size, size)
    for method in ("gradcam", "attn_grad"):
        real, fake, _ = explain_batch(w, x, method)
        both = np.stack([real, fake])
        assert both.max() > 0.5 and both.std() > 0.01, method


def test_the_real_and_fake_maps_of_a_one_logit_model_differ():
    torch.manual_seed(0)
    w = ImageModel(create_model("resnet18"))
    real, fake, _ = explain_batch(w, torch.randn(2, 3, 64, 64))
    assert real.shape == fake.shape == (2, 64, 64) and np.abs(real - fake).mean() > 0.05


@pytest.mark.parametrize("name", list_models())
@pytest.mark.slow
def test_every_member_explains_with_its_default_method(name):
    kw, size = TINY.get(name, ({}, 64))
    torch.manual_seed(0)
    model = create_model(name, **kw)
    w = ImageModel(model)
    if model.spec.sample_kind == "clip":  # Grad-CAM over the frames of a clip: (B, T, H, W) maps
        t = getattr(model, "clip_length", None) or 4
        real, fake, logits = explain_batch(w, torch.randn(2, t, 3, size, size), "gradcam")
        assert real.shape == fake.shape == (2, t, size, size) and logits.shape == (2,)
        assert np.isfinite(fake).all() and 0 <= fake.min() and fake.max() <= 1 and fake.max() > 0
        return
    x = torch.randn(2, 3, size, size)
    real, fake, logits = explain_batch(w, x)
    assert real.shape == fake.shape == (2, size, size) and logits.shape == (2,)
    both = np.stack([real, fake])
    assert np.isfinite(both).all() and both.min() >= 0 and both.max() <= 1 and both.max() > 0
    if model.spec.explain == "attn_grad":
        assert attention_sites(model)
        r2, f2, _ = explain_batch(w, x, "rollout", layers="last4", fusion="max")
        assert f2.shape == (2, size, size)


def test_attention_methods_default_to_all_blocks_as_published():
    """Chefer et al. (ICCV 2021) and Abnar & Zuidema (2020) aggregate every block; Grad-CAM keeps its last layer."""
    import yaml

    from facepipe.stages.explain import ExplainConfig

    assert resolve_layers("attn_grad") == resolve_layers("rollout", "auto") == "all"
    assert resolve_layers("gradcam") == resolve_layers("gradcam++", "auto") == "last"
    assert resolve_layers("rollout", "last") == "last" and resolve_layers("attn_grad", ["a", "b"]) == ["a", "b"]
    assert ExplainConfig().layers == "auto"
    with open(os.path.join(os.path.dirname(__file__), "..", "params.yaml")) as f:
        assert yaml.safe_load(f)["explain"]["layers"] == "auto"
    kw, size = TINY["vit_b16"]
    torch.manual_seed(0)
    w = ImageModel(create_model("vit_b16", **kw))
    assert len(attention_sites(w.model)) == 2
    x = torch.randn(2, 3, size, size)
    for method in ("attn_grad", "rollout"):
        default = explain_batch(w, x, method)
        every = explain_batch(w, x, method, layers="all")
        last = explain_batch(w, x, method, layers="last")
        for d, a in zip(default, every):
            np.testing.assert_array_equal(d, a)
        assert not np.allclose(default[1], last[1]), method  # the last block alone gives another map
    np.testing.assert_array_equal(explain_batch(w, x, "gradcam")[1], explain_batch(w, x, "gradcam", layers="last")[1])


def test_chance_levels_are_the_region_and_mask_area_shares():
    region = np.zeros((8, 8), bool)
    region[:4] = True  # half the crop
    mask = np.zeros((8, 8), bool)
    mask[1:4, 2:5] = True  # 9 of 64 pixels
    assert area_share(region) == 0.5 and area_share(mask) == 9 / 64 and np.isnan(area_share(None))
    assert face_mass(np.ones((8, 8), np.float32), region) == pytest.approx(area_share(region))  # a uniform map
    hits = []  # the map's maximum at each pixel in turn: the hit rate of a uniformly random maximum
    for p in range(64):
        cam = np.zeros((8, 8), np.float32)
        cam.flat[p] = 1.0
        hits.append(pointing_hit(cam, mask))
    assert np.mean(hits) == pytest.approx(area_share(mask))
    # the means: each chance level over the same faces as its statistic (a blank map's NaN face mass drops its face)
    nan = float("nan")
    rows = {"key": ["a", "b", "c", "d"], "label": [1, 1, 0, 0], "face_mass": [0.9, nan, 0.4, 0.6],
            "face_mass_chance": [0.5, 0.1, 0.25, 0.35], "has_mask": [True, True, False, False],
            "pointing_hit": [1.0, 0.0, nan, nan], "pointing_chance": [0.2, 0.1, nan, nan],
            "iou_top": [0.3, 0.1, nan, nan]}
    frame = pl.DataFrame({k: rows.get(k, [None] * 4) for k in SUMMARY_SCHEMA}, schema=SUMMARY_SCHEMA)
    m = summary_means(frame, 20)
    assert m["face_mass"] == pytest.approx(1.9 / 3) and m["face_mass_chance"] == pytest.approx(1.1 / 3)
    assert m["face_mass_fake_faces"] == pytest.approx(0.9) and m["face_mass_fake_faces_chance"] == pytest.approx(0.5)
    assert m["face_mass_real_faces_chance"] == pytest.approx(0.3)
    assert m["pointing_game"] == pytest.approx(0.5) and m["pointing_game_chance"] == pytest.approx(0.15)
    assert m["iou_top20"] == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["swin_t", "local", "multipole", "vit_hybrid"])
def test_attention_methods_name_what_works_for_windowed_attention(name):
    kw, size = TINY[name]
    w = ImageModel(create_model(name, **kw))
    with pytest.raises(ConfigError, match=r"needs global self-attention.*use --method gradcam or gradcam\+\+"):
        explain_batch(w, torch.randn(1, 3, size, size), "attn_grad")


def test_statistics_against_face_and_mask():
    cam = np.zeros((8, 8), np.float32)
    cam[2, 3] = 1.0
    cam[6, 6] = 0.5
    mask = np.zeros((8, 8), bool)
    mask[1:4, 2:5] = True
    assert pointing_hit(cam, mask) == 1.0 and pointing_hit(cam, ~mask) == 0.0
    assert topk_iou(cam, mask, 100 / 64) == pytest.approx(1 / 9)  # top pixel inside a 9-pixel mask
    region = np.zeros((8, 8), bool)
    region[:4] = True
    assert face_mass(cam, region) == pytest.approx(1 / 1.5)
    # landmarks through the affine and the resize: identity affine, crop 16 -> 8
    lm = [[6, 6], [10, 6], [8, 8], [7, 10], [9, 10]]  # -> eyes (3, 3), (5, 3), mouth (3.5, 5), (4.5, 5); x2
    reg = face_region(lm, [[1, 0, 0], [0, 1, 0]], 16, 8)
    assert reg[4, 4] and reg[2, 3] and not reg[0, 0] and not reg[1, 4] and not reg[7, 4]
    shifted = face_region(lm, [[1, 0, -4], [0, 1, 0]], 16, 8)  # the affine moves the face 2 px left in the crop
    assert shifted[4, 2] and not shifted[4, 5]


def test_the_gallery_escapes_what_it_shows(tmp_path):
    from html.parser import HTMLParser

    nan = float("nan")
    key = 'ds_<b>"x\'&y'
    rows = {"key": [key, "plain"], "dataset": ["d<1>", "d"], "video_id": ["v", "w"], "method": ["<m>", "FaceSwap"],
            "label": [1, 0], "video_label": [1, 0], "label_source": ["video", "video"], "score": [0.25, 0.75],
            "face_mass": [nan, 0.5], "face_mass_real": [nan, 0.5], "face_mass_chance": [0.3, 0.3],
            "has_mask": [True, False], "pointing_hit": [1.0, nan], "pointing_chance": [0.2, nan],
            "iou_top": [0.1, nan], "real_png": ["a&_real.png", "p_real.png"], "fake_png": ["a_fake.png", "p_fake.png"],
            "comparison_png": ["a_comparison.png", "p_comparison.png"]}
    frame = pl.DataFrame(rows, schema=SUMMARY_SCHEMA)
    means = {"model": "<model>", "explain_method": "gradcam", "n": 2, "n_masked": 1, **summary_means(frame)}
    page = write_gallery(tmp_path, frame, means).read_text()
    assert "<b>\"x" not in page and "<model>" not in page and "<m>" not in page  # autoescaped

    class Cards(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.cards, self.imgs = [], []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "div" and a.get("class") == "card":
                self.cards.append(a)
            elif tag == "img":
                self.imgs.append(a["src"])
            elif tag == "body":
                assert a == {"data-loaded": "0", "data-failed": "0"}

    p = Cards()
    p.feed(page)
    assert [c["data-key"] for c in p.cards] == [key, "plain"]
    assert [(c["data-score"], c["data-label"], c["data-facemass"]) for c in p.cards] == [
        ("0.250000", "1", "-1"), ("0.750000", "0", "0.500")]
    assert p.imgs == ["a_comparison.png", "a&_real.png", "a_fake.png", "p_comparison.png", "p_real.png", "p_fake.png"]
    assert "face mass n/a · pointing 1 (chance 0.200) · IoU 0.100</p>" in page
    assert "face mass 0.500 (chance 0.300)</p>" in page


def test_the_gallery_template_is_shipped_and_part_of_the_explain_stage_code():
    from importlib.resources import files

    from facepipe.stages.contract import closure_relpaths

    assert (files("facepipe.explain") / "templates" / "gallery.html.j2").is_file()
    closure = closure_relpaths("facepipe.stages.explain")
    assert "facepipe/explain/templates/gallery.html.j2" in closure  # a template change is a code change
    assert {f"facepipe/explain/{m}.py" for m in ("__init__", "cam", "attention", "scores", "gallery")} <= set(closure)


def test_editing_the_gallery_template_changes_the_explain_stage_fingerprint_only(tmp_path):
    import sys

    from conftest import ROOT

    copy = tmp_path / "src"
    shutil.copytree(ROOT / "facepipe", copy / "facepipe", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import json, sys; from facepipe.stages import contract; "
              "print(json.dumps({m: contract.code_hash(m) for m in sys.argv[1:]}))")
    mods = ["facepipe.stages.explain", "facepipe.stages.evaluate"]

    def hashes() -> dict:
        r = subprocess.run([sys.executable, "-c", script, *mods], capture_output=True, text=True, check=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(copy)})
        return json.loads(r.stdout)

    before = hashes()
    with open(copy / "facepipe" / "explain" / "templates" / "gallery.html.j2", "a") as f:
        f.write("<!-- a template change is a code change -->\n")
    after = hashes()
    assert after["facepipe.stages.explain"] != before["facepipe.stages.explain"]
    assert after["facepipe.stages.evaluate"] == before["facepipe.stages.evaluate"]


@pytest.fixture(scope="module")
def checkpoint(example_shards, tmp_path_factory):
    from facepipe.stages.train import TrainConfig
    from facepipe.stages.train import run as run_train

    out = tmp_path_factory.mktemp("explain_train")
    run_train(example_shards, out, TrainConfig(model="resnet18", image_size=64, steps=2, eval_every=2,
                                               checkpoint_every=2, batch_size=8, num_workers=0), progress=False)
    return out / "best.pt"


@pytest.mark.integration
def test_explain_writes_images_maps_summary_and_a_gallery_that_loads(checkpoint, example_shards, tmp_path):
    from typer.testing import CliRunner

    from facepipe.cli import app

    out = tmp_path / "explain" / "gallery"
    r = CliRunner().invoke(app, ["explain", "--checkpoint", str(checkpoint), "--shards", str(example_shards),
                                 "--out", str(out), "--n", "4", "--metrics", str(tmp_path / "m.json"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    summary = pl.read_parquet(out / "summary.parquet")
    assert summary.height == 4
    maps = np.load(out / "maps.npz")
    assert maps["fake"].shape == maps["real"].shape == (4, 64, 64) and maps["fake"].dtype == np.float16
    assert maps["keys"].tolist() == summary["key"].to_list()
    for i, row in enumerate(summary.iter_rows(named=True)):
        for col in ("real_png", "fake_png", "comparison_png"):
            assert (out / row[col]).stat().st_size > 1000
        if maps["fake"][i].max() > 0:  # the face region comes from the stored landmarks
            assert 0 <= row["face_mass"] <= 1
        else:  # a blank fake map (Grad-CAM's ReLU left nothing) has no mass to share out
            assert np.isnan(row["face_mass"])
        if maps["real"][i].max() > 0:
            assert 0 <= row["face_mass_real"] <= 1
        assert maps["fake"][i].max() > 0 or maps["real"][i].max() > 0
        assert row["has_mask"] == (not np.isnan(row["pointing_hit"])) == (not np.isnan(row["pointing_chance"]))
        assert 0 < row["face_mass_chance"] < 1  # the face region's share of the crop: a uniform map's face mass
        if row["has_mask"]:
            assert 0 < row["pointing_chance"] < 1
    means = json.loads((tmp_path / "m.json").read_text())
    recorded = json.loads((out / "summary.json").read_text())
    assert recorded.pop("stage_fingerprint")  # the stage's summary.json records it; the DVC metrics stay numeric
    from facepipe.stages.explain import HEADLINE

    assert means == {k: recorded[k] for k in HEADLINE if k in recorded} and means["n"] == 4  # the headline numbers
    assert recorded["explain_method"] == "gradcam" and recorded["model"] == "resnet18" and recorded["layers"] == "last"
    defined = summary.filter(~summary["face_mass"].is_nan())
    assert means["face_mass_chance"] == (pytest.approx(defined["face_mass_chance"].mean()) if defined.height else None)
    assert "pointing_game_chance" in means and (means["pointing_game_chance"] is None) == (means["n_masked"] == 0)
    assert "(chance: the face's area" in (out / "gallery.html").read_text()
    # the same seed picks the same faces; another n replaces the folder whole (no earlier images left)
    r = CliRunner().invoke(app, ["explain", "--checkpoint", str(checkpoint), "--shards", str(example_shards),
                                 "--out", str(out), "--n", "2", "--layers", "auto", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*_comparison.png"))) == 2
    assert not list(out.parent.glob(".staging-*"))

    dom = chromium_dom((out / "gallery.html").as_uri())
    assert 'data-loaded="6"' in dom and 'data-failed="0"' in dom, dom[:500]
    # a gallery whose images are gone says so
    for p in out.glob("*_fake.png"):
        p.unlink()
    dom = chromium_dom((out / "gallery.html").as_uri())
    assert 'data-loaded="4"' in dom and 'data-failed="2"' in dom


def test_explain_names_keys_that_are_not_in_the_split(checkpoint, example_shards, tmp_path):
    from facepipe.stages.explain import ExplainConfig, run

    with pytest.raises(InputError, match="no_such_key"):
        run(checkpoint, example_shards, tmp_path / "g", ExplainConfig(), keys=["no_such_key"], progress=False)
    assert not (tmp_path / "g").exists()


def test_explain_stage_records_its_fingerprint(checkpoint, example_shards, tmp_path):
    from facepipe.stages.explain import ExplainConfig, fingerprint, run

    cfg = ExplainConfig(n=2, batch_size=2)
    run(checkpoint, example_shards, tmp_path / "g", cfg, metrics=tmp_path / "m.json", progress=False)
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["stage_fingerprint"] == fingerprint(ExplainConfig(n=2, batch_size=7))  # batch size: a run setting
    assert summary["stage_fingerprint"] != fingerprint(ExplainConfig(n=3))
    assert "stage_fingerprint" not in json.loads((tmp_path / "m.json").read_text())  # DVC metrics stay numeric
