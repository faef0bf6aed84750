"""An ablation grid with DVC's own experiment queue, in a real DVC repo on the CPU example, compared with
`facepipe compare` (mean ± std over seeds per configuration)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.integration  # DVC experiments: a parameter grid through dvc exp run

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    # PYTHONPATH ".": every stage (in the workspace or in an experiment's temp copy) runs the repo's own facepipe
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": "."}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The pipeline with its code committed (experiments run from git), small settings, reproduced once."""
    d = tmp_path_factory.mktemp("exprepo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "facepipe", d / "facepipe", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["extract"]["sampling"]["num_frames"] = 4
    params["extract"]["align"]["size"] = 64
    params["train"].update(image_size=64, steps=4, eval_every=2, checkpoint_every=2, batch_size=8, num_workers=0)
    params["evaluate"]["num_workers"] = 0
    params["explain"]["n"] = 2
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # the project's own .gitignore: data/ stays out of git, so every metric an experiment reports must come
    # through the DVC cache (a `cache: false` metrics file under data/ would be missing from every experiment)
    shutil.copy(ROOT / ".gitignore", d / ".gitignore")
    _run(["git", "init", "-q"], d)
    _run(["dvc", "init", "-q"], d)
    _run(["dvc", "repro"], d)
    _run(["git", "add", "-A"], d)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "baseline"], d)
    return d


def test_the_readme_ablation_grid_runs_and_compares(repo):
    queued = _run(["dvc", "exp", "run", "--queue", "-S", "train.model=local,multipole", "-S", "train.seed=0,1"],
                  repo)
    assert len(re.findall(r"Queued experiment", queued)) == 4
    _run(["dvc", "queue", "start"], repo)
    out = _run(["facepipe", "compare", "--wait", "--no-progress", "--out", "compare"], repo, timeout=1800)

    from facepipe.train.analysis import experiment_rows

    rows = experiment_rows(repo)
    assert len(rows) == 4
    grid = sorted((r["params.yaml:train.model"], r["params.yaml:train.seed"]) for r in rows)
    assert grid == [("local", 0), ("local", 1), ("multipole", 0), ("multipole", 1)]
    assert all(isinstance(r["data/evaluate/metrics.json:video.auc"], float) for r in rows)

    table = pl.read_csv(repo / "compare" / "compare.csv")
    assert table["train.model"].to_list() == ["local", "multipole"] and table["runs"].to_list() == [2, 2]
    assert {"video.auc mean", "video.auc std", "video.eer mean", "frame.auc std"} <= set(table.columns)
    for det in ("local", "multipole"):
        aucs = [r["data/evaluate/metrics.json:video.auc"] for r in rows if r["params.yaml:train.model"] == det]
        got = table.filter(pl.col("train.model") == det)
        assert got["video.auc mean"][0] == pytest.approx(sum(aucs) / 2)
    md = (repo / "compare" / "compare.md").read_text()
    assert md.count("\n") == 4 and "±" in md and "| local | 2 |" in md and "| local | 2 |" in out
    # the data stages came from the cache: an experiment reran only what follows training
    log = _run(["dvc", "queue", "logs", rows[0]["name"]], repo)
    assert set(re.findall(r"Running stage '([^']+)'", log)) == {"train", "evaluate", "benchmark", "explain"}
