"""The researcher's workbench: training diagnostics (collapse, dead branches, gradient norms, logits), recipes
(warmup, EMA, fp16 scaler, accumulation, freeze/unfreeze, backbone LR, determinism, min_steps) and
`facepipe features` (maps, attention, t-SNE)."""

from __future__ import annotations

import json
import logging
import sys
import textwrap

import numpy as np
import polars as pl
import pytest
import torch

from facepipe.data.loader import make_loader
from facepipe.errors import ConfigError
from facepipe.models import create_model
from facepipe.stages.train import TrainConfig, build_optimizer
from facepipe.stages.train import run as run_train
from facepipe.train.analysis import extract_features, layer_table
from facepipe.train.engine import load_checkpoint, model_from_checkpoint, predict, train_step

SMALL = dict(model="resnet18", image_size=64, batch_size=8, steps=4, eval_every=2, checkpoint_every=2,
             num_workers=0, lr=1e-3)

USER_MODELS = '''
import torch
from torch import nn
from facepipe.models import ModelSpec


class Constant(nn.Module):
    """The same logit for every face: a collapsed model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, inputs):
        x = inputs["image"]
        return self.bias.expand(x.shape[0]) + 0.0 * self.conv(x).mean(dim=(1, 2, 3))


def constant(pretrained=False, **kw):
    return Constant()


constant.spec = ModelSpec("constant", input_size=64)


class TwoBranch(nn.Module):
    """An RGB branch and a frequency branch that forward() forgets to use."""

    def __init__(self):
        super().__init__()
        self.rgb = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
        self.freq = nn.Linear(8, 1)

    def forward(self, inputs):
        return self.rgb(inputs["image"]).squeeze(1)

    def branches(self):
        return {"rgb": self.rgb, "freq": self.freq}


def two_branch(pretrained=False, **kw):
    return TwoBranch()


two_branch.spec = ModelSpec("two_branch", input_size=64)
'''


@pytest.fixture()
def user_models(tmp_path, monkeypatch):
    (tmp_path / "wb_models.py").write_text(textwrap.dedent(USER_MODELS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "wb_models"


def _table(out, name: str) -> pl.DataFrame:
    return pl.read_csv(out / "dvclive" / "plots" / "metrics" / f"{name}.tsv", separator="\t")


def _curve(out, name: str) -> list[float]:
    t = _table(out, name)
    return t[t.columns[-1]].to_list()


# ---------------------------------------------------------------------------------------------------------------
# diagnostics


@pytest.mark.slow
def test_a_constant_model_is_caught_within_patience(example_shards, tmp_path, user_models):
    cfg = TrainConfig(**{**SMALL, "model": f"{user_models}:constant", "steps": 6, "eval_every": 1,
                         "collapse": {"min_std": 1e-3, "patience": 2, "action": "stop"}})
    s = run_train(example_shards, tmp_path / "stop", cfg, progress=False)
    assert s["stop"].startswith("collapse") and s["steps"] == 2 and s["collapsed"]
    evidence = json.loads((tmp_path / "stop" / "collapse.json").read_text())
    assert [v["step"] for v in evidence["validations"]] == [1, 2]
    assert all(v["score_std"] == 0 and v["constant_predictions"] for v in evidence["validations"])
    # warn: the run goes on, the evidence is still written
    cfg = cfg.model_copy(update={"collapse": cfg.collapse.model_copy(update={"action": "warn"})})
    s = run_train(example_shards, tmp_path / "warn", cfg, progress=False)
    assert s["steps"] == 6 and not s["stop"].startswith("collapse") and s["collapsed"]
    assert len(json.loads((tmp_path / "warn" / "collapse.json").read_text())["validations"]) == 6


def test_a_branch_without_gradient_is_named(example_shards, tmp_path, user_models, caplog):
    cfg = TrainConfig(**{**SMALL, "model": f"{user_models}:two_branch", "dead_branch_steps": 3})
    with caplog.at_level(logging.WARNING, logger="facepipe.stages.train"):
        s = run_train(example_shards, tmp_path / "run", cfg, progress=False)
    warned = [r.getMessage() for r in caplog.records if "received no gradient" in r.getMessage()]
    assert len(warned) == 1 and "'freq'" in warned[0]
    assert s["dead_branches"] == ["freq"]
    assert _curve(tmp_path / "run", "train/grad_norm_freq") == [0.0] * 4
    assert all(v > 0 for v in _curve(tmp_path / "run", "train/grad_norm_rgb"))


@pytest.mark.slow
def test_logged_gradient_norm_is_clip_grad_norms_return(example_shards, tmp_path, monkeypatch):
    returned = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(*args, **kwargs):
        norm = original(*args, **kwargs)
        returned.append(float(norm))
        return norm

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    out = tmp_path / "run"
    run_train(example_shards, out, TrainConfig(**{**SMALL, "clip_norm": 1e-3}), progress=False)
    logged = _curve(out, "train/grad_norm")
    assert len(returned) == 4 and logged == pytest.approx(returned, rel=1e-6)
    assert min(logged) > 1e-3  # the norm before clipping, not the clipped one
    # per-class logit statistics, accuracies, loss terms and the per-validation diagnostics are logged too
    for name in ("train/logit_mean_real", "train/logit_std_fake", "train/acc_real", "train/acc_fake",
                 "train/loss_bce", "val/frame_real_acc", "val/video_fake_acc", "val/score_mean_fake",
                 "val/score_std_real", "val/auc_example", "val/predicted_fake"):
        assert (out / "dvclive" / "plots" / "metrics" / f"{name}.tsv").is_file(), name


@pytest.mark.slow
def test_branch_norms_are_measured_before_clipping():
    model = create_model("resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(0)
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    r = train_step(model, batch, opt, clip_norm=1e-6, branch_norms=True)
    total = sum(v ** 2 for v in r.branch_norms.values()) ** 0.5
    assert total == pytest.approx(r.grad_norm, rel=1e-4) and r.grad_norm > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.slow
def test_warmup_is_linear_then_cosine(example_shards, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(**{**SMALL, "steps": 8, "eval_every": 8, "lr": 0.01, "warmup_steps": 4, "warmup_start": 0.1})
    run_train(example_shards, out, cfg, progress=False)
    lrs = _curve(out, "train/lr")
    assert lrs[:5] == pytest.approx([0.001, 0.00325, 0.0055, 0.00775, 0.01])
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # cosine after the warmup


def test_backbone_learning_rate_multiplier():
    cfg = TrainConfig(**{**SMALL, "lr": 0.01, "backbone_lr_mult": 0.1})
    model = create_model("resnet18")
    opt, _ = build_optimizer(cfg, model)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"head": 0.01, "backbone": 0.001})
    n_backbone = sum(p.numel() for g in opt.param_groups if g["name"] == "backbone" for p in g["params"])
    assert n_backbone == sum(p.numel() for p in model.backbone.parameters())


@pytest.mark.slow
def test_ema_weights_are_validated_and_kept(example_shards, tmp_path):
    out = tmp_path / "run"
    run_train(example_shards, out, TrainConfig(**{**SMALL, "ema": True, "ema_decay": 0.9}), progress=False)
    last = load_checkpoint(out / "last.pt")
    differ = [k for k, v in last["model"].items() if v.is_floating_point() and not torch.equal(v, last["ema"][k])]
    assert len(differ) > 10
    ema_best = load_checkpoint(out / "best_ema.pt")
    assert any(not torch.equal(ema_best["model"][k], last["model"][k]) for k in differ)
    assert len(_curve(out, "val_ema/video_auc")) == 2


@pytest.mark.slow
def test_fp16_scaler_is_logged_checkpointed_and_resumed(example_shards, tmp_path):
    out = tmp_path / "run"
    run_train(example_shards, out, TrainConfig(**{**SMALL, "amp": "fp16"}), progress=False)
    ckpt = load_checkpoint(out / "last.pt")
    scale = ckpt["scaler"]["scale"]
    assert scale > 0 and _curve(out, "train/amp_scale")[-1] == scale
    run_train(example_shards, out, TrainConfig(**{**SMALL, "amp": "fp16", "steps": 6}), resume=True, progress=False)
    assert load_checkpoint(out / "last.pt")["step"] == 6 and len(_curve(out, "train/amp_scale")) == 6


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    batch = {"image": torch.randn(8, 3, 32, 32), "label": torch.tensor([0, 1] * 4)}
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    results, params = [], []
    for b in (batch, halves):
        torch.manual_seed(1)
        model = create_model("resnet18", freeze_backbone=True)  # BN statistics frozen: no batch-size effect
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        results.append(train_step(model, b, opt, clip_norm=None))
        params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert results[0].loss == pytest.approx(results[1].loss, rel=1e-5)
    assert results[0].grad_norm == pytest.approx(results[1].grad_norm, rel=1e-4)
    assert torch.allclose(params[0], params[1], atol=1e-6)
    assert len(results[1].logits) == 8


@pytest.mark.slow
def test_freeze_then_unfreeze_the_backbone(example_shards, tmp_path):
    out = tmp_path / "run"
    run_train(example_shards, out, TrainConfig(**{**SMALL, "freeze_backbone_steps": 2}), progress=False)
    backbone, head = _table(out, "train/grad_norm_backbone"), _table(out, "train/grad_norm_head")
    assert backbone["step"].to_list() == [3, 4] and (backbone["grad_norm_backbone"] > 0).all()  # trained from step 3
    assert head["step"].to_list() == [1, 2, 3, 4] and (head["grad_norm_head"] > 0).all()
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["optimizer"]["state"]  # the backbone's parameters were in the optimizer all along


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly(example_shards, tmp_path):
    losses = []
    for i in range(2):
        out = tmp_path / f"run{i}"
        run_train(example_shards, out, TrainConfig(**{**SMALL, "deterministic": True, "num_workers": 2}),
                  progress=False)
        losses.append(_curve(out, "train/loss"))
    assert losses[0] == losses[1] and len(set(losses[0])) == 4
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide switch is put back


@pytest.mark.slow
def test_min_steps_holds_early_stopping_back(example_shards, tmp_path):
    base = {**SMALL, "steps": 30, "eval_every": 1, "patience": 1, "lr": 1e-9}
    s = run_train(example_shards, tmp_path / "a", TrainConfig(**base), progress=False)
    assert s["stop"].startswith("early stop") and s["steps"] < 8
    s = run_train(example_shards, tmp_path / "b", TrainConfig(**{**base, "min_steps": 8}), progress=False)
    assert s["stop"].startswith("early stop") and s["steps"] == 8


@pytest.mark.slow
def test_training_logs_in_a_git_repo_without_commits(example_shards, tmp_path, monkeypatch):
    import subprocess

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)  # dvclive 3.x raises "Empty git repo" here unless facepipe guards it
    run_train(example_shards, tmp_path / "run", TrainConfig(**{**SMALL, "steps": 2}), progress=False)
    assert _curve(tmp_path / "run", "train/loss") and (tmp_path / "run" / "dvclive" / "metrics.json").is_file()


def test_old_key_names_are_accepted_with_a_warning_and_both_are_refused():
    cfg = TrainConfig.model_validate({"model": "local", "model_options": {"dim": 32}})
    assert (cfg.model, cfg.model_options) == ("local", {"dim": 32})
    with pytest.warns(FutureWarning, match="renamed to train.model"):
        old = TrainConfig.model_validate({"detector": "local", "detector_options": {"dim": 32}})
    assert old == cfg and "detector" not in old.model_dump()  # fingerprints and checkpoints say 'model'
    with pytest.raises(ValueError), pytest.warns(FutureWarning):
        TrainConfig.model_validate({"model": "local", "detector": "resnet18"})


# ---------------------------------------------------------------------------------------------------------------
# features


@pytest.fixture(scope="module")
def trained(example_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    run_train(example_shards, out / "resnet18", TrainConfig(**{**SMALL, "image_size": 224, "steps": 1, "eval_every": 1,
                                                               "batch_size": 4}), progress=False)
    run_train(example_shards, out / "local", TrainConfig(**{**SMALL, "model": "local", "steps": 1, "eval_every": 1,
                                                            "model_options": {"dim": 32, "depth": 1}}),
              progress=False)
    return out


@pytest.mark.slow
def test_features_rows_follow_the_keys_with_the_expected_shapes(example_shards, trained, tmp_path):
    out = tmp_path / "feat"
    r = extract_features(trained / "resnet18" / "best.pt", example_shards, "test", ["layer4", "backbone.layer2"],
                         out, progress=False)
    index = pl.read_parquet(out / "index.parquet")
    n = json.loads((example_shards / "index.json").read_text())["splits"]["test"]["samples"]
    assert r["samples"] == index.height == n
    layer4 = np.load(out / "layer4.npy")
    assert layer4.dtype == np.float16 and layer4.shape == (n, 512, 7, 7)
    assert np.load(out / "backbone.layer2.npy").shape == (n, 128, 28, 28)
    assert r["layouts"]["layer4"] == "NCHW"
    # row i is sample i: the same keys in the same order as the loader, and the score is the model's for that key
    lm = model_from_checkpoint(trained / "resnet18" / "best.pt")
    loader = make_loader(example_shards, "test", 16, 0, shuffle=False, rank=0, world_size=1, image_size=lm.size,
                         mean=lm.spec.mean, std=lm.spec.std)
    preds = predict(lm.model, loader)
    assert index["key"].to_list() == preds["key"].to_list()
    assert index["score"].to_numpy() == pytest.approx(preds["score"].to_numpy(), abs=1e-5)
    assert index["label"].to_list() == preds["label"].to_list()
    # layer4 row i is what the model computes for sample i
    batch = next(iter(loader))
    with torch.no_grad():
        own = lm.model.backbone.forward_features(batch["image"][:1]).numpy()
    assert np.allclose(layer4[0].astype(np.float32), own[0], atol=2e-2 * max(1.0, np.abs(own).max()))
    tsne = pl.read_parquet(out / "tsne.parquet")
    assert tsne.height == n and (out / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_features_pool_and_attention_weights(example_shards, trained, tmp_path):
    names = {n: (kind, shape) for n, kind, shape in layer_table(trained / "local" / "best.pt", example_shards)}
    assert "[attention]" in names["blocks.0.mixer"][0]
    r = extract_features(trained / "local" / "best.pt", example_shards, "val", ["blocks.0.mixer", "stem"],
                         tmp_path / "f", pool=True, limit=10, tsne=False, progress=False)
    assert r["samples"] == 10 and r["layers"]["blocks.0.mixer"] == [10, 32] and r["layers"]["stem"][0] == 10
    attn = np.load(tmp_path / "f" / "blocks.0.mixer.attn.npy").astype(np.float32)
    assert attn.shape[0] == 10 and r["layouts"]["blocks.0.mixer.attn"] == "NWHQK"
    assert np.allclose(attn.sum(-1), 1.0, atol=1e-2)  # softmax rows
    with pytest.raises(ConfigError, match="no layer 'nope'"):
        extract_features(trained / "local" / "best.pt", example_shards, "val", ["nope"], tmp_path / "g",
                         progress=False)


def test_features_of_a_one_dimensional_layer_are_histograms(example_shards, trained, tmp_path):
    """The last layer --list-layers prints (the logit, 1 feature per sample) cannot be t-SNE'd (scikit-learn's raw
    'n_components=2 must be between 0 and min(n_samples, n_features)=1'): per-class histograms and a note instead."""
    from typer.testing import CliRunner

    from facepipe.cli import app

    ckpt = trained / "resnet18" / "best.pt"
    last = layer_table(ckpt, example_shards)[-1]
    assert int(np.prod(last[2][1:])) == 1
    r = CliRunner().invoke(app, ["features", "--checkpoint", str(ckpt), "--shards", str(example_shards),
                                 "--layers", last[0], "--out", str(tmp_path / "f"), "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "note: " in r.output and "per-class histograms" in r.output and "t-SNE:" not in r.output
    assert (tmp_path / "f" / "histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "f" / "tsne.png").exists()
