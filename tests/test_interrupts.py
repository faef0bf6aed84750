"""Interrupts that say what happened, in every stage that runs long (issue 27, item 4; extract's own tests are in
test_messages.py): the item under way is abandoned, temporary files are removed, one line says how far the run got
and how to go on, and a rerun continues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from facepipe.errors import Interrupted
from facepipe.stages import freq, shard


def _shard_cfg(example_shards, **kw) -> shard.ShardConfig:
    root = example_shards.parent
    return shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                      manifest=str(root / "manifest.parquet")),),
                             **{"max_samples": 2, "layout": "mixed", **kw})


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_an_interrupted_shard_run_publishes_nothing_and_says_so(sig, code, example_shards, tmp_path):
    """A real signal while the CLI holds between two tars (fault injection): exit 130 / 143, one line, no staging
    folder, the index still names the set published before, and the rerun publishes."""
    root = example_shards.parent
    out = tmp_path / "shards"
    before = shard.run(out, _shard_cfg(example_shards, max_samples=3), progress=False)
    index = (out / "index.json").read_text()
    cmd = [sys.executable, "-m", "facepipe", "shard", "--out", str(out), "--max-samples", "2", "--no-progress",
           "-S", "layout=mixed", "-S", "bias_probe=0", "--input",
           f"dataset=example,extract={root / 'extract'},manifest={root / 'manifest.parquet'}"]
    env = {**os.environ, "FACEPIPE_TEST_FAULT": "hang:train-000001.tar"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not list(out.glob(".staging-*/train-000001.tar")) and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    lines = [line for line in err.splitlines() if line.startswith("facepipe:")]
    total = json.loads(index)["total"]
    assert lines == [f"facepipe: shard: interrupted after 4 of {total} samples; nothing was published: "
                     f"{out}/index.json still names the set it named before (if any) and the staging files are "
                     "removed; rerun the same command"], err
    assert "Traceback" not in err
    assert not list(out.glob(".staging-*")) and (out / "index.json").read_text() == index
    assert sorted(q.name for q in out.glob("set-*")) == [before.version]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "index.json").read_text())["version"] != before.version


def test_an_interrupted_freq_run_keeps_the_finished_videos(example_shards, tmp_path, monkeypatch):
    ex = example_shards.parent / "extract"
    cfg = freq.FreqConfig(views=("fft",))
    real, calls = freq._video_views, []

    def interrupted_on_the_second(*a, **kw):
        calls.append(a[2])
        if len(calls) == 2:
            (tmp_path / "out" / "views" / f".{a[2]}.npz.tmp-1").write_bytes(b"half")  # as a write cut short
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(freq, "_video_views", interrupted_on_the_second)
    with pytest.raises(Interrupted, match=r"^freq: interrupted after 1 of (\d+) videos \(0 done before\); the "
                                          r"finished ones are kept, views.parquet is not updated: rerun the same "
                                          r"command to resume$"):
        freq.run(ex, tmp_path / "out", cfg, workers=0, progress=False)
    assert not [q for q in (tmp_path / "out").rglob("*") if ".tmp-" in q.name]
    assert not (tmp_path / "out" / "views.parquet").exists()
    monkeypatch.setattr(freq, "_video_views", real)
    summary = freq.run(ex, tmp_path / "out", cfg, workers=0, progress=False)
    assert summary.skipped == 1 and summary.processed >= 1


@pytest.mark.slow
def test_an_interrupted_training_run_names_the_checkpoint_to_resume_from(example_shards, tmp_path, monkeypatch):
    from facepipe.stages import train

    cfg = train.TrainConfig(model="resnet18", image_size=64, steps=4, eval_every=2, checkpoint_every=2, batch_size=8,
                            num_workers=0)
    real = train.train_one_interval

    def interval(tr, *a, **kw):
        if tr.step >= 2:
            raise KeyboardInterrupt
        return real(tr, *a, **kw)

    monkeypatch.setattr(train, "train_one_interval", interval)
    out = tmp_path / "train"
    with pytest.raises(Interrupted) as e:
        train.run(example_shards, out, cfg, progress=False)
    assert str(e.value) == (f"train: interrupted at step 2 of 4; {out / 'last.pt'} holds step 2; best.pt holds step 2:"
                            " rerun with --resume to continue from it (without it, training starts over)")
    assert not [q for q in out.rglob("*") if ".tmp" in q.name]
    monkeypatch.setattr(train, "train_one_interval", real)
    summary = train.run(example_shards, out, cfg, resume=True, progress=False)
    assert summary["steps"] == 4


@pytest.mark.slow
def test_an_interrupted_evaluation_writes_nothing(example_checkpoint, example_shards, tmp_path, monkeypatch):
    from facepipe.stages import evaluate
    from facepipe.train import engine

    monkeypatch.setattr(engine, "predict", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
    out = tmp_path / "eval"
    with pytest.raises(Interrupted, match=r"^evaluate: interrupted while scoring .* \(0 of 1 shard set\(s\) scored\); "
                                          r"nothing was written to "):
        evaluate.run(example_checkpoint, [example_shards], out, evaluate.EvaluateConfig(split="test", num_workers=0),
                     progress=False)
    assert not out.exists() or not any(out.iterdir())
