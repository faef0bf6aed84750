"""The pipeline in a real DVC repo (temp dir): repro, no-op repro, one-parameter changes rerun only dependents."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import chromium_dom

pytestmark = pytest.mark.integration  # a real DVC repo: dvc repro of the whole pipeline

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path) -> str:
    # PYTHONPATH: the stages run the repo's own copy of facepipe, the code its dvc.yaml deps point at
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(cwd)}
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def metrics_file(metrics: dict, path: str) -> dict:
    return next(iter(metrics.values()))["data"][path]["data"]


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dvcrepo")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, d / name)
    shutil.copytree(ROOT / "facepipe", d / "facepipe", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((d / "params.yaml").read_text())
    params["extract"]["sampling"]["num_frames"] = 4  # small and quick
    params["extract"]["align"]["size"] = 64
    params["train"].update(image_size=64, steps=6, eval_every=3, checkpoint_every=3, batch_size=8, num_workers=0)
    params["evaluate"]["num_workers"] = 0
    params["explain"]["n"] = 4
    (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], d)
    _run(["dvc", "init", "-q"], d)
    shutil.copy(ROOT / ".dvc" / "config", d / ".dvc" / "config")  # plots.html_template: the offline page
    shutil.copytree(ROOT / ".dvc" / "plots", d / ".dvc" / "plots")
    (d / ".gitignore").write_text("/facepipe/\n")
    _run(["git", "add", "-A"], d)  # a repo with history, as a clone is (dvclive records the baseline commit)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline"], d)
    return d


def test_repro_builds_everything_then_does_nothing(repo):
    out = _run(["dvc", "repro"], repo)
    assert _ran(out) == {"example", "manifest@example", "extract@example", "freq@example", "shard", "train",
                         "evaluate", "benchmark", "explain"}
    gallery = repo / "data" / "explain" / "gallery"
    assert len(list(gallery.glob("*_comparison.png"))) == 4 and (gallery / "gallery.html").is_file()
    index = json.loads((repo / "data" / "shards" / "index.json").read_text())
    # every face of an ok video is a sample (one track per video: track.select main), and every split has some
    ex = repo / "data" / "datasets" / "example" / "extract"
    ok = pl.read_parquet(ex / "videos.parquet").filter(pl.col("status") == "ok")["video_id"]
    faces = pl.read_parquet(ex / "faces.parquet")
    assert index["total"] == faces.filter(pl.col("video_id").is_in(ok.implode())).height >= 20
    assert all(index["splits"][s]["samples"] > 0 for s in ("train", "val", "test"))
    labels = {k for s in index["splits"].values() for sh in s["shards"] for k in sh["labels"]}
    assert labels == {"real", "fake"}
    again = _run(["dvc", "repro"], repo)
    assert _ran(again) == set() and "Data and pipelines are up to date" in again


def test_one_parameter_reruns_only_what_depends_on_it(repo):
    _run(["dvc", "repro"], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["tta"]["flip"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro"], repo)) == {"evaluate", "benchmark"}
    assert json.loads((repo / "data" / "evaluate" / "evaluation.json").read_text())["tta"]["flip"] is True
    params["shard"]["max_samples"] = 50
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro"], repo)) == {"shard", "train", "evaluate", "benchmark", "explain"}
    params["freq"]["views"] = ["dct", "srm"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_run(["dvc", "repro"], repo)) == {"freq@example", "shard", "train", "evaluate", "benchmark",
                                                  "explain"}
    index = json.loads((repo / "data" / "shards" / "index.json").read_text())
    assert index["views"] == ["dct", "srm"]
    assert all(sh["samples"] <= 50 for s in index["splits"].values() for sh in s["shards"])


def test_metrics_and_plots_are_declared(repo):
    """`dvc metrics show` prints the headline numbers only (evaluate, explain, benchmark); the details are files it
    shows when named."""
    _run(["dvc", "repro"], repo)
    metrics = json.loads(_run(["dvc", "metrics", "show", "--json"], repo))
    shown = set(next(iter(metrics.values()))["data"])
    assert shown == {"data/evaluate/metrics.json", "data/explain/metrics.json", "data/benchmark/metrics.json"}
    headline = metrics_file(metrics, "data/evaluate/metrics.json")
    assert set(headline) == {"step", "frame", "video"}
    # (auc_ci is null with one video per class, and `dvc metrics show` leaves nulls out)
    assert {"auc", "eer", "ap", "n", "n_real", "n_fake"} <= set(headline["video"]) <= {"auc", "auc_ci", "eer", "ap", "n",
                                                                                       "n_real", "n_fake"}
    assert headline["video"]["n"] > 0
    detail = json.loads((repo / "data" / "evaluate" / "evaluation.json").read_text())
    assert detail["video"]["auc"] == headline["video"]["auc"] and "per_dataset" in detail
    named = json.loads(_run(["dvc", "metrics", "show", "--json", "data/shards/stats.json",
                             "data/train/dvclive/metrics.json"], repo))
    stats = metrics_file(named, "data/shards/stats.json")
    index = json.loads((repo / "data" / "shards" / "index.json").read_text())
    assert stats["samples"] == index["total"]
    assert {s: v["samples"] for s, v in stats["splits"].items()} == {s: v["samples"] for s, v in index["splits"].items()}
    assert 0 < stats["splits"]["train"]["fake_share"] < 1
    assert "val" in metrics_file(named, "data/train/dvclive/metrics.json")
    explained = metrics_file(metrics, "data/explain/metrics.json")
    assert set(explained) <= {"n", "n_masked", "face_mass", "face_mass_chance", "pointing_game", "pointing_game_chance"}
    assert explained["n"] == 4
    assert explained.get("face_mass") is None or 0 <= explained["face_mass"] <= 1  # None (left out): every map blank
    bench = metrics_file(metrics, "data/benchmark/metrics.json")  # the example protocol's table, n per column
    assert set(bench["resnet18"]) == {"example", "example SBI"} and bench["resnet18"]["example"]["n_videos"] > 0
    assert "| model | example | example SBI |" in (repo / "data" / "benchmark" / "benchmark.md").read_text()
    out = _run(["dvc", "plots", "show", "--json"], repo)
    assert "data/shards/counts.csv" in out and "roc_video.csv" in out and "val/video_auc" in out


def _mtimes(folder: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob(pattern)}


def _touch_module(repo: Path, rel: str) -> None:
    with open(repo / rel, "a") as f:
        f.write("\n# edited by the test: any change DVC sees must reach the stage's outputs\n")


def test_editing_a_module_regenerates_that_stages_outputs_and_nothing_upstream(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["freq"]["views"] = ["dct"]  # stored views, so freq has per-video outputs to regenerate
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["dvc", "repro"], repo)
    ex, fq = repo / "data" / "datasets" / "example" / "extract", repo / "data" / "datasets" / "example" / "freq"
    crops, views = _mtimes(ex / "faces", "*.png"), _mtimes(fq / "views", "*.npz")
    assert crops and views
    # a module only the freq stage imports: views regenerated, crops untouched
    _touch_module(repo, "facepipe/freq/functional.py")
    ran = _ran(_run(["dvc", "repro"], repo))
    assert "freq@example" in ran and "extract@example" not in ran and "manifest@example" not in ran
    new_views = _mtimes(fq / "views", "*.npz")
    assert set(new_views) == set(views) and all(new_views[k] != views[k] for k in views)
    assert _mtimes(ex / "faces", "*.png") == crops
    # a module of face alignment: the extract stage redoes its crops
    _touch_module(repo, "facepipe/faces/align.py")
    assert "extract@example" in _ran(_run(["dvc", "repro"], repo))
    new_crops = _mtimes(ex / "faces", "*.png")
    assert set(new_crops) == set(crops) and all(new_crops[k] != crops[k] for k in crops)
    # a module only evaluate imports: evaluate alone
    _touch_module(repo, "facepipe/stages/evaluate.py")
    assert _ran(_run(["dvc", "repro"], repo)) == {"evaluate", "benchmark"}  # the benchmark evaluates through it


def test_dag_shows_the_graph(repo):
    dag = _run(["dvc", "dag", "--md"], repo)
    for stage in ("example", "manifest@example", "extract@example", "freq@example", "shard", "train", "evaluate",
                  "benchmark", "explain"):
        assert stage in dag


CLIP_VARIANT = ["-S", "extract.sampling.mode=clips", "-S", "extract.sampling.num_clips=2",
                "-S", "extract.sampling.clip_length=4", "-S", "train.model=r3d_18", "-S", "freq.views=[]"]
"""The clip variant of the pipeline (issue 23): one params switch, the same stages (docs: Clips and video models)."""


def test_the_clip_variant_runs_the_whole_chain(repo):
    """`dvc exp run -S extract.sampling.mode=clips ... -S train.model=r3d_18`: extract writes clips, shard a clip set,
    a video model trains, evaluate scores clips and videos, the benchmark fills its table, explain maps clips.
    Last in this module: the experiment leaves its parameters in the workspace."""
    out = _run(["dvc", "exp", "run", *CLIP_VARIANT], repo)
    assert {"extract@example", "shard", "train", "evaluate", "benchmark", "explain"} <= _ran(out)
    index = json.loads((repo / "data" / "shards" / "index.json").read_text())
    assert (index["sample_kind"], index["clip_length"]) == ("clip", 4)
    faces = pl.read_parquet(repo / "data" / "datasets" / "example" / "extract" / "faces.parquet")
    assert faces["clip_id"].null_count() == 0
    preds = pl.read_parquet(repo / "data" / "evaluate" / "predictions.parquet")
    assert preds.height > 0 and preds["clip_id"].null_count() == 0
    metrics = json.loads((repo / "data" / "evaluate" / "evaluation.json").read_text())
    assert metrics["model"] == "r3d_18" and metrics["video"]["n"] >= 2
    gallery = repo / "data" / "explain" / "gallery"
    assert len(list(gallery.glob("*__c*_comparison.png"))) == 4
    assert (repo / "data" / "benchmark" / "benchmark.md").is_file()


def test_plots_render_offline(repo, tmp_path):
    """`dvc plots show` writes a page with vega, vega-lite and vega-embed inlined (.dvc/plots/offline.html): headless
    Chromium with every network request sent to a dead proxy renders every plot (DVC's own page loads them from a
    CDN and stays blank offline)."""
    _run(["dvc", "repro"], repo)
    _run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    n_plots = page.count("vegaEmbed(")
    assert n_plots >= 3  # shard counts, ROC (frame and video), the training curves
    dom = chromium_dom((tmp_path / "plots" / "index.html").as_uri(), offline=True, budget_ms=15000)
    rendered = dom.count('class="marks"')  # vega's SVG or canvas element, one per rendered plot
    assert rendered == n_plots, dom[:1000]
