"""The quick start's first command: the pipeline on the bundled example in a sandbox project, the checkout's
git status clean afterwards (DVC refuses a git-ignored dvc.lock, so it cannot run in the checkout and stay clean)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT


def _git(args, cwd):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout


def test_a_checkout_refuses_a_git_ignored_lock_file(tmp_path):
    """Why the sandbox: DVC itself refuses to run when dvc.lock is git-ignored."""
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo hi > out.txt\n    outs: [out.txt]\n")
    (tmp_path / ".gitignore").write_text("/dvc.lock\n")
    _git(["init", "-q"], tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "is git-ignored" in r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_quickstart_runs_the_example_in_a_sandbox_and_leaves_the_checkout_clean(tmp_path):
    co = tmp_path / "checkout"
    co.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, co / name)
    shutil.copytree(ROOT / "facepipe", co / "facepipe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / ".dvc", co / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    params = yaml.safe_load((co / "params.yaml").read_text())  # small and quick
    params["extract"]["sampling"]["num_frames"] = 4
    params["extract"]["align"]["size"] = 64
    params["train"].update(image_size=64, steps=4, eval_every=2, checkpoint_every=2, batch_size=8, num_workers=0)
    params["evaluate"]["num_workers"] = 0
    params["explain"]["n"] = 2
    (co / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(["init", "-q"], co)
    _git(["add", "-A"], co)
    _git(["commit", "-qm", "checkout"], co)
    env = {"PATH": f"{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "facepipe", "quickstart", "--checkout", str(co)], cwd=co,
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "quickstart: the example's pipeline ran in" in r.stdout and "test split: frame AUC" in r.stdout
    box = co / "example"
    assert (box / "dvc.lock").is_file() and (box / "data" / "evaluate" / "metrics.json").is_file()
    assert (box / "data" / "shards" / "README.md").is_file() and (box / "facepipe").is_symlink()
    assert _git(["status", "--porcelain"], co) == ""  # the checkout is clean
    again = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=box, capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout  # a DVC project of its own, incremental
    plots = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path / "p")], cwd=box,
                           capture_output=True, text=True)
    assert plots.returncode == 0 and "cdn.jsdelivr" not in (tmp_path / "p" / "index.html").read_text()
