"""The model zoo: every member forward and backward (tiny configs), the contract, name resolution, frozen members,
the reference attention modules against explicit loops, and the parts of the paper models."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from facepipe.errors import ConfigError
from facepipe.freq import compute_views_torch
from facepipe.models import create_model, get_spec, import_model_file, list_models, logits_of
from facepipe.models.attention import (
    AttentionBlock,
    GlobalTokenAttention,
    LocalAttention2D,
    MultipoleAttention2D,
    ShiftedWindowAttention,
    multipole_levels,
)

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 8}
TINY_SWIN = {"img_size": 64, "embed_dim": 24, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 2}
TINY_CLIP = {"clip_model": "vit_base_patch16_clip_quickgelu_224", "clip_kwargs": TINY_VIT}
TINY = {
    "vit_b16": (TINY_VIT, 32),
    "swin_t": (TINY_SWIN, 64),
    "clip_linear": ({**TINY_CLIP, "embed_dim": 16}, 32),
    "rine": ({**TINY_CLIP, "proj_dim": 16, "nproj": 1}, 32),
    "effort": ({**TINY_CLIP}, 32),
    "vit_freq_adapter": ({"fuse_blocks": [0, 1], "bottleneck": 8, **TINY_VIT}, 32),
    "vit_hybrid": ({"mixer": "multipole", "kernel_size": 2, **TINY_VIT, "patch_size": 4}, 32),
    "multipole": ({"input_size": 64, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "kernel_size": 3}, 64),
    "local": ({"input_size": 64, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16, "kernel_size": 3}, 64),
    "global": ({"input_size": 64, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16}, 64),
    "recce": ({}, 128),
    "recce_swin": ({"encoder_kwargs": TINY_SWIN}, 64),
    "f3net": ({"input_size": 128}, 128),
    "f3net_fad": ({"input_size": 128}, 128),
    "srm": ({"input_size": 128}, 128),
    "tall": ({**TINY_SWIN, "window_size": 2}, 64),
    "ftcn": ({"clip_length": 4, "width": 8, "blocks": (1, 1, 1), "heads": 2, "dim_head": 8, "mlp_dim": 32}, 64),
    "r3d_18": ({}, 32),
    "clip_pool": ({"backbone": "resnet18"}, 32),
}


SLOW_TRAIN = {"efficientnet_b4", "f3net", "f3net_fad", "recce", "resnet18", "srm", "xception"}
"""Members whose training step takes more than ~2 s on a 2-core CPU (5-37 s measured under a shared load); their
forward runs in the fast set (tests/test_registries.py)."""


def _batch(model, size: int, n: int = 4) -> dict:
    """A batch of ``n`` random inputs of ``size`` px for ``model``: images and its views, or clips (n, T, 3, size,
    size) of the length a clip model is built for (4 when any)."""
    torch.manual_seed(0)
    if model.spec.sample_kind == "clip":
        t = getattr(model, "clip_length", None) or 4
        return {"image": torch.randn(n, t, 3, size, size), "label": torch.tensor([0, 1] * (n // 2))}
    x = {"image": torch.randn(n, 3, size, size), "label": torch.tensor([0, 1] * (n // 2))}
    for v in model.spec.views:
        x.update(compute_views_torch([v], torch.rand(n, 3, size, size)))
    return x


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TRAIN else n
                                  for n in list_models()])
def test_every_member_trains_one_step(name):
    kw, size = TINY.get(name, ({}, 64))
    torch.manual_seed(0)
    model = create_model(name, **kw).train()
    batch = _batch(model, size)
    feed = {k: batch[k] for k in model.spec.inputs}
    if model.spec.uses_labels:
        feed["label"] = batch["label"]
    out = model(feed)
    logit = logits_of(out)
    assert logit.shape == (4,) and torch.isfinite(logit).all()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, batch["label"].float())
    if isinstance(out, dict):
        assert set(out["losses"]) == set(model.spec.loss_weights), "declared and returned auxiliary losses differ"
        for v in out["losses"].values():
            assert v.ndim == 0 and torch.isfinite(v)
            loss = loss + v
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a gradient: {missing[:5]}"
    assert model.spec.name == name and model.spec.paper and model.spec.faithful
    model.eval()
    with torch.no_grad():
        assert logits_of(model({k: batch[k] for k in model.spec.inputs})).shape == (4,)  # no labels needed


@pytest.mark.parametrize("name,kw", [pytest.param("clip_linear", {}, marks=pytest.mark.slow),
                                     pytest.param("rine", {}, marks=pytest.mark.slow),
                                     pytest.param("vit_freq_adapter", {}, marks=pytest.mark.slow),
                                     ("resnet18", {"freeze_backbone": True})])
def test_frozen_members_train_under_ten_percent_of_their_parameters(name, kw):
    model = create_model(name, **kw)  # real sizes: CLIP ViT-L/14, ViT-B/16, ResNet-18
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * total, (trainable, total)


def test_a_frozen_backbone_keeps_its_batchnorm_statistics():
    model = create_model("resnet18", freeze_backbone=True, pool="max").train()
    bn = model.backbone.bn1
    before = bn.running_mean.clone()
    model({"image": torch.randn(4, 3, 64, 64) * 5 + 3})
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert model.pool == "max"  # the seed's AdaptiveMaxPool head


def test_names_resolve_from_timm_and_from_a_users_module(tmp_path, monkeypatch):
    m = create_model("timm:resnet18", pool="avgmax", plugins=[{"type": "nonlocal", "after": "layer3"},
                                                              {"type": "se", "after": "layer4"},
                                                              {"type": "ppm", "after": "layer2"},
                                                              {"type": "cbam", "after": "layer1"}])
    assert type(m.backbone.layer3[1]).__name__ == "NonLocalAttn"
    assert type(m.backbone.layer2[1]).__name__ == "PyramidPooling"
    assert m({"image": torch.randn(2, 3, 64, 64)}).shape == (2,) and m.spec.name == "timm:resnet18"
    ms = create_model("timm:resnet18", features_only=True, out_indices=(2, 3))
    assert ms.backbone_num_features == 128 + 256 and ms({"image": torch.randn(2, 3, 64, 64)}).shape == (2,)
    with pytest.raises(ConfigError, match="timm has no model 'resnet1800'"):
        create_model("timm:resnet1800")
    with pytest.raises(ConfigError, match=r"plug-in after 'layer9'.*no such module"):
        create_model("timm:resnet18", plugins=[{"type": "se", "after": "layer9"}])
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import torch
        def tiny(pretrained=False, width=4):
            class Tiny(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(3, width, 3)
                    self.fc = torch.nn.Linear(width, 1)
                def forward(self, x):
                    return self.fc(self.conv(x["image"]).mean((2, 3))).squeeze(1)
            return Tiny()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    u = create_model("my_models:tiny", width=3)
    assert u.spec.name == "my_models:tiny" and u({"image": torch.randn(2, 3, 16, 16)}).shape == (2,)
    with pytest.raises(ConfigError, match="cannot import nope from my_models"):
        create_model("my_models:nope")


USER_MODEL = '''
import torch
from facepipe.models import ModelSpec, register_model


class Mine(torch.nn.Module):
    """A user's model with an auxiliary loss."""

    def __init__(self, width=8):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, 2, 1)
        self.fc = torch.nn.Linear(width, 1)

    def forward(self, x):
        f = self.conv(x["image"]).mean((2, 3))
        return {"logit": self.fc(f).squeeze(1), "losses": {"energy": f.pow(2).mean()}}


@register_model(ModelSpec("my_tiny_net", input_size=64, paper="mine", faithful="all mine",
                          loss_weights={"energy": 0.01}))
def my_tiny_net(pretrained=False, **kw):
    return Mine(**kw)
'''


@pytest.mark.slow
def test_a_model_in_the_users_own_file_trains_through_the_cli(example_shards, tmp_path):
    import json
    import subprocess

    f = tmp_path / "mine.py"
    f.write_text(USER_MODEL)
    r = subprocess.run([sys.executable, "-m", "facepipe", "train", "--shards", str(example_shards), "--out",
                        str(tmp_path / "run"), "--model", "my_tiny_net", "--import", str(f), "--steps", "3",
                        "--batch-size", "4", "--no-progress"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "train.json").read_text())["steps"] == 3
    metrics = (tmp_path / "run" / "dvclive" / "plots" / "metrics" / "train" / "loss_energy.tsv").read_text()
    assert len(metrics.strip().splitlines()) == 4  # header + 3 steps: the auxiliary loss is logged on its own
    import_model_file(f)
    assert get_spec("my_tiny_net").loss_weights == {"energy": 0.01}
    with pytest.raises(ConfigError, match="importing the model file failed: SyntaxError"):
        bad = tmp_path / "bad.py"
        bad.write_text("def (:\n")
        import_model_file(bad)


def test_registry_errors():
    with pytest.raises(ConfigError, match="did you mean xception"):
        create_model("xceptoin")
    with pytest.raises(ConfigError, match="bad options"):
        create_model("resnet18", no_such_option=1)
    assert get_spec("vit_freq_adapter").views == ("dct_bands",) and get_spec("xception").views == ()
    m = create_model("vit_freq_adapter", freq_branch=False, **TINY_VIT)
    assert m.spec.inputs == ("image",)  # the ablation reads no view
    m = create_model("vit_freq_adapter", view="srm", **TINY_VIT)
    assert m.spec.inputs == ("image", "srm")


def test_options_are_checked_against_the_signature_before_the_factory_runs(tmp_path, monkeypatch):
    (tmp_path / "sig_models.py").write_text(textwrap.dedent("""
        import torch
        CALLS = []
        def tiny(pretrained=False, width=4):
            CALLS.append(width)
            return torch.nn.Linear(width, 1)
        def no_pretrained(width=4):
            return torch.nn.Linear(width, 1)
        class Buggy(torch.nn.Module):
            def __init__(self, pretrained=False, width=4):
                super().__init__()
                self.fc = torch.nn.Linear(width, 1)
                torch.zeros(width).view("not a shape")  # a bug in the model's own code: TypeError
        def buggy(pretrained=False, **kw) -> Buggy:
            return Buggy(pretrained, **kw)
        def raises(pretrained=False, width=4):
            raise TypeError("inside the model")
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import sig_models

    with pytest.raises(ConfigError, match=r"model 'sig_models:tiny': bad options \{'depth': 3\}: got an unexpected "
                                          r"keyword argument 'depth' \(options: width\)"):
        create_model("sig_models:tiny", depth=3)
    assert sig_models.CALLS == []  # refused before the call
    assert create_model("sig_models:tiny", width=3).in_features == 3 and sig_models.CALLS == [3]
    with pytest.raises(ConfigError, match="bad options.*'pretrained'"):
        create_model("sig_models:no_pretrained")
    # **kw handed to the class the factory's return annotation names: checked against that class
    with pytest.raises(ConfigError, match=r"bad options \{'depth': 1\}.*'depth' \(options: width\)"):
        create_model("sig_models:buggy", depth=1)
    # a TypeError from inside the model's code is that error, not "bad options"
    with pytest.raises(TypeError, match="view"):
        create_model("sig_models:buggy", width=2)
    with pytest.raises(TypeError, match="inside the model"):
        create_model("sig_models:raises")
    # zoo members: their own options and, for timm backbones, timm's, each named
    with pytest.raises(ConfigError, match=r"model 'clip_linear': bad options.*'nope'.*options: clip_model, embed_dim"):
        create_model("clip_linear", nope=1)
    with pytest.raises(ConfigError, match="bad options: timm model 'resnet18' takes no option 'no_such_option'"):
        create_model("resnet18", no_such_option=1)


def test_pretrained_without_local_weights_falls_back_offline(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to load, nothing downloaded
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with caplog.at_level("WARNING"):
        m = create_model("resnet18", pretrained=True)
        create_model("clip_linear", pretrained=True, **{**TINY_CLIP, "embed_dim": 16})
    assert "no local pretrained weights for resnet18" in caplog.text
    assert "RANDOM WEIGHTS" in caplog.text and "vit_base_patch16_clip_quickgelu_224.openai" in caplog.text
    assert m({"image": torch.randn(2, 3, 64, 64)}).shape == (2,)
    with pytest.raises(ConfigError, match="weights file not found"):
        create_model("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_pretrained_from_a_given_file_loads_those_weights(tmp_path):
    import timm

    src = timm.create_model("resnet18", num_classes=0)
    torch.nn.init.constant_(src.conv1.weight, 0.123)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    m = create_model("resnet18", pretrained=str(tmp_path / "w.pth"))
    assert torch.allclose(m.backbone.conv1.weight, torch.full_like(m.backbone.conv1.weight, 0.123))


def test_clip_weights_load_from_a_given_checkpoint(tmp_path):
    """A tower checkpoint file loads into clip_linear's frozen tower (its projection is the head), offline."""
    import timm

    ref = timm.create_model("vit_base_patch16_clip_quickgelu_224", num_classes=16, **TINY_VIT)
    sd = {}
    for k, v in ref.state_dict().items():
        sd[k] = v
    torch.save(sd, tmp_path / "clip.pth")
    m = create_model("clip_linear", pretrained=str(tmp_path / "clip.pth"), **{**TINY_CLIP, "embed_dim": 16})
    assert torch.equal(m.clip.head.weight, ref.head.weight)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(m.clip(x), ref(x), atol=1e-5)


# --- reference attention modules ---------------------------------------------------------------------------------


def _window_loop(mod: LocalAttention2D, x: torch.Tensor) -> torch.Tensor:
    """Explicit reference: every window attends within itself; overlapping outputs averaged."""
    b, h, w, c = x.shape
    k, s = mod.kernel_size, mod.stride
    out = torch.zeros_like(x)
    cnt = torch.zeros(1, h, w, 1)
    for i in range(0, h - k + 1, s):
        for j in range(0, w - k + 1, s):
            win = x[:, i:i + k, j:j + k].reshape(b, k * k, c)
            y = mod.attention(mod.norm(win)).view(b, k, k, c)
            out[:, i:i + k, j:j + k] += y
            cnt[:, i:i + k, j:j + k] += 1
    return out / cnt


@pytest.mark.parametrize("size,kernel,stride", [(14, 7, 7), (14, 7, 1), (28, 7, 3), (21, 7, 7)])
def test_local_attention_equals_an_explicit_window_loop(size, kernel, stride):
    torch.manual_seed(0)
    mod = LocalAttention2D(kernel, stride, dim=16, heads=2, dim_head=8).eval()
    x = torch.randn(2, size, size, 16)
    torch.testing.assert_close(mod(x), _window_loop(mod, x), atol=1e-5, rtol=1e-4)
    mod.record_attention = True
    mod(x)
    n_win = ((size - kernel) // stride + 1) ** 2
    assert mod.attention.attn_map.shape == (2 * n_win, 2, kernel * kernel, kernel * kernel)


@pytest.mark.slow
def test_no_nan_for_any_size_kernel_and_stride_and_padding_never_reaches_real_tokens():
    torch.manual_seed(0)
    for size in (14, 28, 56):
        for kernel in (7, 14, 21):
            for stride in range(1, kernel + 1):
                mod = LocalAttention2D(kernel, stride, dim=8, heads=1, dim_head=8).eval()
                y = mod(torch.randn(1, size, size, 8))
                assert y.shape == (1, size, size, 8) and torch.isfinite(y).all(), (size, kernel, stride)
    # the reference's NaN case: (H - k) % stride != 0 leaves rows uncovered; here they are covered and the padded
    # positions are masked: the output at real positions does not depend on what padding holds
    mod = LocalAttention2D(7, 3, dim=8, heads=1, dim_head=8).eval()
    x = torch.randn(1, 16, 16, 8)
    assert torch.isfinite(mod(x)).all()


def test_multipole_levels_and_one_shared_attention():
    assert [multipole_levels(s, 7, 2) for s in (7, 14, 28, 56)] == [1, 2, 3, 4]  # full resolution + each valid level
    assert multipole_levels(56, 14, 2) == 3 and multipole_levels(56, 21, 2) == 2
    mp = MultipoleAttention2D(56, 16, 7, None, "avg_pool", "nearest", 2, heads=2, dim_head=8)
    lp = LocalAttention2D(7, None, 16, 2, 8)
    assert mp.levels == 4
    assert sum(p.numel() for p in mp.parameters()) == sum(p.numel() for p in lp.parameters())  # ONE local attention
    y = mp(torch.randn(1, 16, 56, 56))
    assert y.shape == (1, 16, 56, 56) and torch.isfinite(y).all()
    conv = MultipoleAttention2D(30, 16, 7, None, "conv", "conv_transpose", 2, heads=2, dim_head=8)
    assert conv(torch.randn(1, 16, 30, 30)).shape == (1, 16, 30, 30)  # odd sizes up-sampled back exactly


def test_multipole_reaches_further_than_local():
    torch.manual_seed(0)
    local = LocalAttention2D(5, None, 16, 2, 8).eval()
    multi = MultipoleAttention2D(20, 16, 5, None, heads=2, dim_head=8).eval()
    multi.attention.load_state_dict(local.state_dict())
    x = torch.randn(1, 20, 20, 16)
    x2 = x.clone()
    x2[0, 0, 0] += 10.0 * torch.randn(16)  # not a constant: LayerNorm would remove that
    far = (slice(None), slice(15, 20), slice(15, 20))
    assert torch.allclose(local(x)[far], local(x2)[far], atol=1e-6)
    xm, xm2 = x.permute(0, 3, 1, 2), x2.permute(0, 3, 1, 2)
    assert not torch.allclose(multi(xm).permute(0, 2, 3, 1)[far], multi(xm2).permute(0, 2, 3, 1)[far], atol=1e-6)


def test_shifted_window_attention_stays_inside_its_windows():
    torch.manual_seed(0)
    plain = ShiftedWindowAttention(16, heads=2, dim_head=8, window=7, shift=0).eval()
    x = torch.randn(1, 14, 14, 16)
    x2 = x.clone()
    x2[0, 0, 0] += 10.0 * torch.randn(16)  # not a constant: LayerNorm would remove that
    same = plain(x)[0, 7:, 7:], plain(x2)[0, 7:, 7:]  # another window: unaffected
    assert torch.allclose(*same, atol=1e-6)
    shifted = ShiftedWindowAttention(16, heads=2, dim_head=8, window=7, shift=3).eval()
    shifted.load_state_dict(plain.state_dict())
    a, b = shifted(x), shifted(x2)
    # with the shift, (0, 0) shares a window with (4, 4).. but the cyclic roll puts it next to (10..13) rows/cols:
    # the mask keeps those regions apart
    assert torch.allclose(a[0, 10:, 10:], b[0, 10:, 10:], atol=1e-6)
    assert not torch.allclose(a[0, :4, :4], b[0, :4, :4], atol=1e-6)
    assert torch.isfinite(shifted(torch.randn(2, 13, 17, 16))).all()  # padded to whole windows


def test_attention_block_and_global_tokens_record_maps():
    blk = AttentionBlock(16, heads=2, dim_head=8)
    blk.record_attention = True
    x = torch.randn(2, 5, 16)
    y = blk(x)
    assert blk.attn_map.shape == (2, 2, 5, 5) and torch.allclose(blk.attn_map.sum(-1), torch.ones(2, 2, 5))
    blk.record_attention = False
    torch.testing.assert_close(blk(x), y)  # fused and eager paths agree
    g = GlobalTokenAttention(16, heads=2, dim_head=8, n_tokens=4)
    g.record_attention = True
    assert g(torch.randn(2, 3, 3, 16)).shape == (2, 3, 3, 16) and g.attention.attn_map.shape == (2, 2, 13, 13)


def test_attention_classifiers_have_equal_attention_parameters():
    kw = {"input_size": 64, "dim": 32, "depth": 1, "heads": 2, "dim_head": 16}
    counts = {m: create_model(m, **kw).attention_params() for m in ("global", "local", "multipole")}
    assert len(set(counts.values())) == 1, counts
    assert create_model("multipole", **{**kw, "input_size": 448}).levels == 4  # a 56 px map, kernel 7: 56, 28, 14, 7


# --- paper models' parts ---------------------------------------------------------------------------------------------


def test_f3net_bands_and_lfs_follow_the_reference():
    from facepipe.models.frequency import FAD, LFS, MixBlock, band_mask

    m = band_mask(6, 2, 4)  # start <= i + j <= end, both ends included
    assert m[0, 2] == 1 and m[2, 2] == 1 and m[0, 1] == 0 and m[3, 2] == 0
    fad = FAD(299)
    ends = [(f.base.nonzero().sum(1).min().item(), f.base.nonzero().sum(1).max().item()) for f in fad.filters]
    assert ends == [(0, 106), (106, 149), (149, 596), (0, 596)]  # 299 // 2.82 = 106.0, floored, shared diagonals
    lfs = LFS()
    out = lfs(torch.rand(1, 3, 299, 299) * 2 - 1)
    assert out.shape == (1, 6, 149, 149) and torch.isfinite(out).all()
    mix = MixBlock(8)
    a, b = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    ya, yb = mix.eval()(a, b)
    # gamma = 0: 2 sigmoid(0) - 1 = 0, so the cross terms vanish and only BN(conv(0)) = BN's shift remains
    torch.testing.assert_close(ya - a, mix.fad_bn(mix.fad_conv(torch.zeros_like(a))))


@pytest.mark.slow
def test_recce_reconstruction_loss_uses_real_faces_only():
    from facepipe.models.recce import metric_loss

    torch.manual_seed(0)
    m = create_model("recce").train()
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    fakes = m({"image": x, "label": torch.ones(4, dtype=torch.long)})
    assert fakes["losses"]["recon"].item() == 0.0 and fakes["losses"]["metric"].item() == 0.0
    mixed = m({"image": x, "label": torch.tensor([0, 0, 1, 1])})
    real_err = (mixed["reconstruction"] - x).abs()[:2].mean()
    torch.testing.assert_close(mixed["losses"]["recon"], real_err)
    f = [torch.tensor([[1.0, 0], [1, 0], [0, 1]]).view(3, 2, 1, 1)]
    # reals identical (sim 1), fake orthogonal (corr 0.5): 1 - 1 + 0.5
    assert metric_loss(f, torch.tensor([0, 0, 1])).item() == pytest.approx(0.5)


def test_rine_reads_every_block_and_weighs_them_by_a_softmax():
    m = create_model("rine", **TINY_CLIP, proj_dim=16, nproj=1)
    tokens = m.block_tokens(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, TINY_VIT["depth"], TINY_VIT["embed_dim"]) and m.alpha.shape == (1, 2, 16)


def _reference_supcon(z: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """mever-team/rine's SupConLoss (src/utils.py, Khosla et al.'s, one view): per anchor the mean log-probability
    of its positives among all other samples, averaged over all anchors (none without a positive here)."""
    sim = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    return -((pos * log_prob).sum(1) / pos.sum(1)).mean()


def test_rine_default_loss_is_the_references_summed_bce_plus_0_1_supcon_over_its_batch():
    """mever-team/rine: BCEWithLogitsLoss(reduction="sum") + 0.1 * SupCon at batch 128; facepipe's mean-BCE total
    must be that divided by 128 (the SupCon weight 0.1 / 128), not mean BCE + 0.1 SupCon."""
    import torch.nn.functional as F

    from facepipe.models.clip import RINE_SUPCON_WEIGHT
    from facepipe.train.engine import train_step

    assert get_spec("rine").loss_weights == {"supcon": RINE_SUPCON_WEIGHT} and RINE_SUPCON_WEIGHT == 0.1 / 128
    torch.manual_seed(0)
    m = create_model("rine", **TINY_CLIP, proj_dim=16, nproj=1, dropout=0.0)  # no dropout: the same forward twice
    b = 128
    batch = {"image": torch.randn(b, 3, 32, 32), "label": torch.arange(b) % 2}
    m.train()
    out = m({"image": batch["image"], "label": batch["label"]})
    logit, z = out["logit"].detach(), F.normalize(out["features"].detach(), dim=1)
    supcon = _reference_supcon(z, batch["label"])
    torch.testing.assert_close(out["losses"]["supcon"].detach(), supcon)  # pytorch-metric-learning's = the reference's
    reference = F.binary_cross_entropy_with_logits(logit, batch["label"].float(), reduction="sum") + 0.1 * supcon
    step = train_step(m, batch, torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0))
    assert step.loss == pytest.approx(float(reference) / b, rel=1e-5)
    assert step.losses["supcon"] == pytest.approx(float(supcon), rel=1e-5)  # the term is logged unweighted


def test_srm_separate_filters_as_the_authors_code():
    from facepipe.freq.functional import SRM_KERNELS
    from facepipe.models.frequency import SRMSeparate

    s = SRMSeparate(4, 8)
    w = s.weight[:, 0].numpy()
    for k in range(12):  # output channel k: input channel k // 3, kernel k // 4
        assert (w[k] == SRM_KERNELS[k // 4]).all()
