"""train_step, train/resume/early stop, evaluate, bad inputs, and DDP under torchrun (CPU, gloo)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from facepipe.data.loader import make_loader
from facepipe.errors import InputError
from facepipe.models import create_model
from facepipe.stages.evaluate import EvaluateConfig
from facepipe.stages.evaluate import run as run_evaluate
from facepipe.stages.train import TrainConfig, build_optimizer
from facepipe.stages.train import run as run_train
from facepipe.train.engine import NonFiniteLoss, load_checkpoint, train_step

SMALL = dict(model="resnet18", image_size=64, batch_size=8, steps=6, eval_every=3, checkpoint_every=3,
             num_workers=0, lr=1e-3)


def _batch():
    torch.manual_seed(0)
    return {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}


@pytest.mark.slow
def test_train_step_updates_clips_and_refuses_nan():
    model = create_model("resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = train_step(model, _batch(), opt, clip_norm=1e-3)
    assert loss > 0 and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # clipping: with max norm 1e-3 and lr 0.1 no parameter moves more than 1e-4
    assert max((a - b).abs().max().item() for a, b in zip(before, model.parameters())) <= 1e-4 + 1e-7
    frozen = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        model.head[1].bias.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss):
        train_step(model, _batch(), opt)
    assert all(torch.equal(a, b) or torch.isnan(b).any() for a, b in zip(frozen, model.parameters()))


def test_train_step_bf16_autocast_runs_on_cpu():
    model = create_model("local", dim=32, depth=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert train_step(model, _batch(), opt, amp_dtype=torch.bfloat16) > 0


def _lr_formula(cfg: TrainConfig, t: int, base: float) -> float:
    """The rate at 0-based step ``t`` of a group with base rate ``base``: what torch's LinearLR + SequentialLR +
    CosineAnnealingLR / StepLR / ConstantLR computed before the timm scheduler (closed form)."""
    w = cfg.warmup_steps
    if t < w:
        return base * (cfg.warmup_start + (1 - cfg.warmup_start) * t / w)
    u = t - w
    if cfg.schedule == "cosine":
        return base * (1 + math.cos(math.pi * u / max(1, cfg.steps - w))) / 2
    if cfg.schedule == "step":
        return base * cfg.gamma ** (u // cfg.step_size)
    return base


def _torch_schedule(cfg: TrainConfig, bases: list[float]):
    """The schedule facepipe built with torch.optim.lr_scheduler before timm's, on an optimizer of ``bases``."""
    from torch.optim import lr_scheduler as S

    opt = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": b} for b in bases], lr=bases[0])
    rest = max(1, cfg.steps - cfg.warmup_steps)
    main = {"cosine": lambda: S.CosineAnnealingLR(opt, T_max=rest),
            "step": lambda: S.StepLR(opt, cfg.step_size, cfg.gamma),
            "constant": lambda: S.ConstantLR(opt, factor=1.0, total_iters=0)}[cfg.schedule]()
    if cfg.warmup_steps:
        warm = S.LinearLR(opt, start_factor=cfg.warmup_start, end_factor=1.0, total_iters=cfg.warmup_steps)
        return opt, S.SequentialLR(opt, [warm, main], milestones=[cfg.warmup_steps])
    return opt, main


@pytest.mark.parametrize("schedule,warmup", [("cosine", 5), ("cosine", 0), ("step", 5), ("step", 0), ("constant", 3)])
def test_timm_schedule_gives_the_same_rate_at_every_step(schedule, warmup):
    """Per step and per group (head at lr, backbone at lr * backbone_lr_mult), the timm scheduler's rate equals the
    closed form and what the torch schedulers of the earlier build_optimizer gave."""
    cfg = TrainConfig(**{**SMALL, "steps": 23, "lr": 0.01, "backbone_lr_mult": 0.1, "schedule": schedule,
                         "warmup_steps": warmup, "warmup_start": 0.05, "step_size": 4, "gamma": 0.5})
    opt, sched = build_optimizer(cfg, create_model("resnet18"))
    ref_opt, ref = _torch_schedule(cfg, [0.01, 0.001])
    got, formula, torch_ref = [], [], []
    for t in range(cfg.steps):
        rates = {g["name"]: g["lr"] for g in opt.param_groups}  # the rates step t + 1 is taken with
        got.append([rates["head"], rates["backbone"]])
        formula.append([_lr_formula(cfg, t, 0.01), _lr_formula(cfg, t, 0.001)])
        torch_ref.append([g["lr"] for g in ref_opt.param_groups])
        sched.step_update(t + 1)  # after the optimizer step, as the loop does
        ref_opt.step()
        ref.step()
    assert np.allclose(got, formula, rtol=1e-9, atol=0) and np.allclose(got, torch_ref, rtol=1e-9, atol=0)
    if schedule == "cosine":
        assert got[warmup] == pytest.approx([0.01, 0.001]) and got[-1][0] < 1e-4  # warmup reaches lr, then cosine


class _Trunk(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 4, 8))
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.norm = torch.nn.LayerNorm(8)

    def no_weight_decay(self):  # timm's convention, e.g. a ViT's position embedding
        return {"pos_embed"}


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _Trunk()
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc = torch.nn.Linear(8, 1)


def _decay_of(opt) -> dict[int, tuple[str, float, float]]:
    return {id(p): (g.get("name"), g["weight_decay"], g["lr"]) for g in opt.param_groups for p in g["params"]}


def test_biases_and_norms_get_no_weight_decay():
    """timm's rule inside each group: conv and linear weights decay; biases, norm weights (every 1-d parameter) and
    what a module's no_weight_decay() lists do not; the trunk keeps its rate (lr * backbone_lr_mult)."""
    cfg = TrainConfig(**{**SMALL, "lr": 0.01, "backbone_lr_mult": 0.1, "weight_decay": 0.05})
    model = create_model("resnet18")
    opt, _ = build_optimizer(cfg, model)
    decay = _decay_of(opt)
    trunk = {id(p) for p in model.backbone.parameters()}
    assert len(decay) == len(list(model.parameters()))  # every parameter once
    kinds = set()
    for name, p in model.named_parameters():
        group, wd, lr = decay[id(p)]
        assert (group, lr) == (("backbone", 0.001) if id(p) in trunk else ("head", 0.01)), name
        assert wd == (0.0 if p.ndim <= 1 else 0.05), name
        kinds.add((p.ndim, wd))
    assert {(4, 0.05), (2, 0.05), (1, 0.0)} <= kinds  # conv and linear weights decay, BN weights and biases do not
    assert len(opt.param_groups) == 4 and {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}
    # a trunk's no_weight_decay() names (timm's convention) are exempt too; BatchNorm and Linear of the head alike
    net = _Net()
    decay = _decay_of(build_optimizer(cfg, net)[0])
    assert decay[id(net.backbone.pos_embed)] == ("backbone", 0.0, 0.001)
    assert decay[id(net.backbone.conv.weight)] == ("backbone", 0.05, 0.001)
    assert decay[id(net.backbone.norm.weight)][1] == decay[id(net.bn.weight)][1] == decay[id(net.fc.bias)][1] == 0.0
    assert decay[id(net.fc.weight)] == ("head", 0.05, 0.01)
    # a model's own param_groups(lr) keep their rates, split the same way
    net.param_groups = lambda lr: [{"params": list(net.fc.parameters()), "lr": 2 * lr, "name": "fc"},
                                   {"params": list(net.backbone.parameters()) + list(net.bn.parameters()), "lr": lr}]
    decay = _decay_of(build_optimizer(cfg.model_copy(update={"warmup_steps": 2}), net)[0])
    assert decay[id(net.fc.weight)] == ("fc", 0.05, 0.02 * cfg.warmup_start)
    assert decay[id(net.fc.bias)] == ("fc", 0.0, 0.02 * cfg.warmup_start)


@pytest.mark.slow
def test_train_selects_on_val_resumes_and_evaluates(example_shards, tmp_path):
    out = tmp_path / "run"
    s = run_train(example_shards, out, TrainConfig(**SMALL), progress=False)
    assert s["steps"] == 6 and (out / "best.pt").is_file() and (out / "last.pt").is_file()
    last = load_checkpoint(out / "last.pt", "resnet18")
    assert last["step"] == 6 and last["datasets"] == ["example"] and last["image_size"] == 64
    best = load_checkpoint(out / "best.pt")
    assert best["step"] in (3, 6) and best["best"] == s["best"]
    metrics = (out / "dvclive" / "metrics.json")
    assert metrics.is_file() and "val" in json.loads(metrics.read_text())
    # resume continues from step 6 to 9, keeping optimizer and schedule
    s2 = run_train(example_shards, out, TrainConfig(**{**SMALL, "steps": 9}), resume=True, progress=False)
    assert s2["steps"] == 9 and load_checkpoint(out / "last.pt")["step"] == 9
    # the schedule is this run's: steps 1-6 on the 6-step cosine, steps 7-9 on the 9-step one (build_scheduler)
    lrs = pl.read_csv(out / "dvclive" / "plots" / "metrics" / "train" / "lr.tsv", separator="\t")["lr"].to_list()
    assert lrs == pytest.approx([_lr_formula(TrainConfig(**SMALL), t, 1e-3) for t in range(6)]
                                + [_lr_formula(TrainConfig(**{**SMALL, "steps": 9}), t, 1e-3) for t in range(6, 9)])
    with pytest.raises(InputError, match="checkpoint of model 'resnet18', asked to resume 'local'"):
        run_train(example_shards, out, TrainConfig(**{**SMALL, "model": "local"}), resume=True, progress=False)
    r = run_evaluate(out / "best.pt", [example_shards], tmp_path / "eval",
                     EvaluateConfig(num_workers=0, tta={"flip": True}),
                     progress=False)
    preds = pl.read_parquet(tmp_path / "eval" / "predictions.parquet")
    test_n = json.loads((example_shards / "index.json").read_text())["splits"]["test"]["samples"]
    assert preds.height == test_n and set(preds["split"]) == {"test"}
    assert r["frame"]["n"] == test_n and r["video"]["n"] == 2  # tom_hanks and its SBI twin
    assert r["cross_dataset"] == [{**r["cross_dataset"][0], "trained_on": "example", "tested_on": "example",
                                   "cross": False}]
    roc = pl.read_csv(tmp_path / "eval" / "roc_frame.csv")
    assert roc["fpr"].min() == 0 and roc["tpr"].max() == 1
    on_disk = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert on_disk["video"]["n"] == 2 and on_disk["split"] == "test"
    headline = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert headline == {"step": on_disk["step"], "frame": {k: on_disk["frame"][k] for k in headline["frame"]},
                        "video": {k: on_disk["video"][k] for k in headline["video"]}}
    # the stage's fingerprint (parameters + code) is recorded; run settings such as num_workers stay out of it
    from facepipe.stages.evaluate import fingerprint as evaluate_fingerprint

    assert on_disk["stage_fingerprint"] == evaluate_fingerprint(EvaluateConfig(num_workers=3, tta={"flip": True}))
    assert on_disk["stage_fingerprint"] != evaluate_fingerprint(EvaluateConfig(num_workers=0, tta={"flip": False}))
    # a checkpoint of the earlier optimizer (one group per name, biases and norms decayed too) is not resumed
    old = load_checkpoint(out / "last.pt")
    g = old["optimizer"]["param_groups"]
    assert [x["name"] for x in g] == ["head", "head", "backbone", "backbone"]
    old["optimizer"]["param_groups"] = [{**g[0], "params": g[0]["params"] + g[1]["params"]},
                                        {**g[2], "params": g[2]["params"] + g[3]["params"]}]
    torch.save(old, out / "last.pt")
    with pytest.raises(InputError, match="does not fit this run's parameter groups"):
        run_train(example_shards, out, TrainConfig(**{**SMALL, "steps": 12}), resume=True, progress=False)


@pytest.mark.slow
def test_early_stopping(example_shards, tmp_path):
    cfg = TrainConfig(**{**SMALL, "steps": 50, "eval_every": 1, "patience": 2, "lr": 1e-9})
    s = run_train(example_shards, tmp_path / "run", cfg, progress=False)
    assert s["stop"].startswith("early stop") and s["steps"] < 50


def test_bad_inputs(example_shards, tmp_path):
    with pytest.raises(InputError, match="shard index not found"):
        run_train(tmp_path / "nothing", tmp_path / "o", TrainConfig(**SMALL), progress=False)
    with pytest.raises(InputError, match="checkpoint not found"):
        run_train(example_shards, tmp_path / "fresh", TrainConfig(**SMALL), resume=True, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    ckpt = {"model": {}, "model_name": "resnet18", "schema_version": 0}
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.raises(InputError, match="shard schema 0"):
        load_checkpoint(tmp_path / "old.pt")
    # a model needing a view the batch lacks is named
    model = create_model("vit_freq_adapter", view="srm", embed_dim=32, depth=2, num_heads=2, img_size=64,
                         patch_size=16)
    batch = next(iter(make_loader(example_shards, "train", batch_size=2, num_workers=0)))
    with pytest.raises(InputError, match=r"needs \['srm'\]"):
        train_step(model, batch, torch.optim.SGD(model.parameters(), lr=0.1))


class _Payload:
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoints_load_without_running_code(tmp_path):
    torch.save({"model": {}, "model_name": "resnet18", "schema_version": 2, "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="not a readable checkpoint .*weights_only=True"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.slow
def test_no_stale_best_checkpoint_survives_a_new_run(example_shards, tmp_path, monkeypatch):
    """Validation that never gives a finite AUC (e.g. a val split of one class) must not leave an earlier run's
    best.pt in place."""
    import facepipe.stages.train as stage

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"stale": True}, out / "best.pt")
    from facepipe.metrics import binary_metrics

    nan = binary_metrics(np.zeros(4, int), np.full(4, 0.3))  # one class: every ranking metric is NaN
    assert np.isnan(nan["auc"])
    monkeypatch.setattr(stage, "validate", lambda *a, **k: (nan, nan, {"score_std": 0.1, "predicted_fake": 0.5}))
    s = run_train(example_shards, out, TrainConfig(**SMALL), progress=False)
    assert s["best"] is None
    best = load_checkpoint(out / "best.pt")  # the stale file would not even load
    assert best["step"] == s["steps"] == SMALL["steps"]


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(example_shards, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(**{**SMALL, "steps": 9, "lr": 1e36, "clip_norm": None, "checkpoint_every": 1,
                         "eval_every": 100, "augment": False})  # step 1 overflows the head: step 2 is NaN
    with pytest.raises(NonFiniteLoss, match=r"at step \d+: training stopped; the last good checkpoint is"):
        run_train(example_shards, out, cfg, progress=False)
    last = load_checkpoint(out / "last.pt")
    assert 1 <= last["step"] < 9
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


@pytest.mark.integration
def test_ddp_with_torchrun_on_cpu(example_shards, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\nfrom facepipe.stages.train import TrainConfig, run\n"
        f"run(sys.argv[1], sys.argv[2], TrainConfig(**{SMALL!r}), progress=False)\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(script), str(example_shards), str(tmp_path / "ddp")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["step"] == 6


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_the_stream_exactly(example_cell_shards, tmp_path):
    """`facepipe train` killed (SIGKILL) right after its step-3 `last.pt`, then `--resume`: the train stream continues
    with the next sample, so the finished run has consumed exactly what an uninterrupted one consumed (the loader
    states agree) and ends with the same weights (one loader process: with several workers the resumed pass's batches
    may come from the workers in another order; tests/test_mixer.py checks the samples with 2 ranks x 2 workers)."""
    import os
    import subprocess
    import sys

    args = ["--model", "resnet18", "--steps", "6", "--batch-size", "4", "--lr", "1e-3", "--no-progress",
            "-S", "image_size=64", "-S", "eval_every=3", "-S", "checkpoint_every=3", "-S", "num_workers=0",
            "-S", "augment=true"]

    def train(out, resume=False, fault=""):
        env = {**os.environ, "FACEPIPE_TEST_FAULT": fault}
        cmd = [sys.executable, "-m", "facepipe", "train", "--shards", str(example_cell_shards), "--out", str(out),
               *args, *(["--resume"] if resume else [])]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train(straight).returncode == 0
    r = train(killed, fault="killtrain:3")
    assert r.returncode == -9, r.stderr[-2000:]
    mid = load_checkpoint(killed / "last.pt")
    assert mid["step"] == 3 and mid["ranks"][0]["loader"]["batches"] == 3
    r = train(killed, resume=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(killed / "last.pt")
    assert a["step"] == b["step"] == 6
    assert a["ranks"][0]["loader"] == b["ranks"][0]["loader"]
    # 12 samples in 3 batches a pass: 6 steps are 2 passes
    assert (a["ranks"][0]["loader"]["epoch"], a["ranks"][0]["loader"]["batches"]) == (1, 3)
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-5), k


def test_sam_updates_the_weights_with_the_gradient_at_the_perturbed_point():
    """train.sam (issue 24 item 1's recipe): one step equals the SAM rule computed by hand — the gradient g at w, the
    weights moved to w + rho g / |g|, the gradient g' there, and w - lr g' (SGD, momentum 0.9: its first step is
    lr g'); plain SGD would move by lr g instead. The checkpointed state is the base optimizer's."""
    from facepipe.stages.train import build_optimizer
    from facepipe.train.engine import logits_of, model_inputs

    cfg = TrainConfig(model="local", optimizer="sgd", lr=0.5, weight_decay=0.0, sam={"rho": 0.05})
    model = create_model("local", dim=32, depth=1)
    opt, _ = build_optimizer(cfg, model)
    w0 = [p.detach().clone() for p in model.parameters()]
    batch = _batch()

    def grads_at(weights):
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)
        model.zero_grad()
        logits = logits_of(model(model_inputs(model, dict(batch), training=True))).float()
        torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float()).backward()
        return [p.grad.detach().clone() for p in model.parameters()]

    g = grads_at(w0)
    norm = torch.sqrt(sum((x ** 2).sum() for x in g))
    g2 = grads_at([w + 0.05 * x / norm for w, x in zip(w0, g)])
    with torch.no_grad():
        for p, w in zip(model.parameters(), w0):
            p.copy_(w)
    train_step(model, dict(batch), opt, clip_norm=None)
    for p, w, x in zip(model.parameters(), w0, g2):
        assert torch.allclose(p.detach(), w - 0.5 * x, atol=1e-5)
    assert not all(torch.allclose(w - 0.5 * a, w - 0.5 * b, atol=1e-5) for w, a, b in zip(w0, g, g2))
    assert set(opt.base_optimizer.state_dict()) == {"state", "param_groups"}
    with pytest.raises(ValueError, match="fp16"):
        TrainConfig(sam={"rho": 0.05}, amp="fp16")
