"""The stage contract: code fingerprints and dvc.yaml deps, errors never cached, timeouts and crashed workers,
full disks, kill -9, locks, atomic shard publishing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from facepipe.errors import InputError
from facepipe.stages import contract
from facepipe.stages.extract import run as run_extract
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from dvc_deps import STAGE_MODULES, declared, expected  # noqa: E402


def test_dvc_yaml_code_deps_are_exactly_each_stages_import_closure():
    want, have = expected(), declared()
    assert set(want) == set(STAGE_MODULES)
    for stage, deps in want.items():
        assert have[stage] == deps, f"dvc.yaml deps of '{stage}' differ from its imports: run scripts/dvc_deps.py"
    # the closures are what they should be: no stage pulls in another stage, extract does not import train code
    assert "facepipe/faces/labels.py" in want["extract"] and not any("models" in d for d in want["extract"])
    assert not any(d.startswith("facepipe/faces") for d in want["freq"] + want["shard"] + want["train"])
    assert not any(d.startswith("facepipe/stages/extract") for d in want["manifest"])  # no extract <-> manifest cycle
    assert "facepipe/data/loader.py" not in want["shard"]  # lazy re-exports are not followed


def test_closure_follows_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "facepipe"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("def __getattr__(n):\n    from facepipe.lazy import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from . import b\n    from ..c import g\n")
    (pkg / "sub" / "b.py").write_text("import os\n")
    (pkg / "c.py").write_text("")
    (pkg / "lazy.py").write_text("")
    monkeypatch.setattr(contract, "PACKAGE_ROOT", pkg)
    contract.code_closure.cache_clear()
    try:
        got = [p.relative_to(tmp_path).as_posix() for p in contract.code_closure("facepipe.sub.a")]
    finally:
        contract.code_closure.cache_clear()
    assert got == ["facepipe/__init__.py", "facepipe/c.py", "facepipe/sub/__init__.py", "facepipe/sub/a.py",
                   "facepipe/sub/b.py"]


def test_a_stage_package_is_covered_module_by_module():
    """extract is a package: its closure (so its fingerprint and dvc.yaml deps) holds every module of it, so an
    edit to any of them redoes the stage's videos."""
    pkg = contract.PACKAGE_ROOT / "stages" / "extract"
    modules = set(pkg.glob("*.py"))
    assert len(modules) > 1 and modules <= set(contract.code_closure("facepipe.stages.extract"))


FP_SCRIPT = """
import json, sys
from facepipe.stages import contract
print(json.dumps({m: contract.code_hash(m) for m in sys.argv[1:]}))
"""


def test_editing_a_module_changes_exactly_the_fingerprints_of_the_stages_importing_it(tmp_path):
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "facepipe", copy / "facepipe", ignore=shutil.ignore_patterns("__pycache__"))
    mods = ["facepipe.stages.extract", "facepipe.stages.freq", "facepipe.stages.train"]

    def hashes() -> dict:
        r = subprocess.run([sys.executable, "-c", FP_SCRIPT, *mods], capture_output=True, text=True, check=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(copy)})
        return json.loads(r.stdout)

    before = hashes()
    with open(copy / "facepipe" / "faces" / "align.py", "a") as f:
        f.write("\n# a comment is a change: DVC reruns the stage, so the stage redoes its videos\n")
    after = hashes()
    assert after["facepipe.stages.extract"] != before["facepipe.stages.extract"]
    assert after["facepipe.stages.freq"] == before["facepipe.stages.freq"]
    assert after["facepipe.stages.train"] == before["facepipe.stages.train"]


def _cfg(small_cfg, **kw):
    return small_cfg.model_copy(update=kw)


@pytest.fixture()
def videos(tmp_path, face_video_dir) -> Path:
    d = tmp_path / "in"
    shutil.copytree(face_video_dir, d)
    return d


@pytest.mark.slow
def test_code_change_redoes_every_video(videos, tmp_path, small_cfg, monkeypatch):
    out = tmp_path / "out"
    run_extract(videos, out, small_cfg, progress=False)
    assert run_extract(videos, out, small_cfg, progress=False).processed == 0
    real = contract.code_hash
    monkeypatch.setattr(contract, "code_hash", lambda m: real(m) + ("x" if m.endswith("extract") else ""))
    s = run_extract(videos, out, small_cfg, progress=False)
    assert s.processed == 2 and s.skipped == 0


def test_full_disk_gives_error_rows_that_are_retried_once_space_is_back(videos, tmp_path, small_cfg, monkeypatch,
                                                                        capsys):
    out = tmp_path / "out"
    monkeypatch.setenv("FACEPIPE_TEST_FAULT", "enospc:single")
    s = run_extract(videos, out, small_cfg, progress=False)
    v = {r["video_id"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)}
    assert v["single"]["status"] == "error" and "No space left on device" in v["single"]["message"]
    assert s.statuses["error"] == 1 and s.statuses["ok"] == 1 and s.problems == []  # named as it finished:
    assert "single.mp4: error: " in capsys.readouterr().out
    assert not (out / "faces" / "single").exists() and not list((out / "faces").glob(".*tmp*"))
    monkeypatch.delenv("FACEPIPE_TEST_FAULT")
    s2 = run_extract(videos, out, small_cfg, progress=False)  # an error is never cached: retried
    assert s2.processed == 1 and s2.skipped == 1 and s2.statuses == {**s2.statuses, "ok": 2, "error": 0}


@pytest.mark.slow
def test_hung_and_crashing_videos_become_errors_and_the_run_goes_on(videos, tmp_path, small_cfg, monkeypatch):
    from facepipe.stages.example import camera_frames, package_photo, write_video

    photo = package_photo("t1.jpg")
    for name in ("c", "d"):
        write_video(videos / f"{name}.mp4", camera_frames(photo, (320, 180), 6, (640, 440, 0.3), (650, 440, 0.3)))
    out = tmp_path / "out"
    monkeypatch.setenv("FACEPIPE_TEST_FAULT", "hang:c,crash:d")
    cfg = _cfg(small_cfg, workers=2, timeout_s=8.0)  # the hung video waits this long: the shortest safe under load
    t0 = time.perf_counter()
    s = run_extract(videos, out, cfg, progress=False)
    assert time.perf_counter() - t0 < 120
    v = {r["video_id"]: r for r in pl.read_parquet(out / "videos.parquet").iter_rows(named=True)}
    assert v["c"]["status"] == "error" and "timed out after 8 s" in v["c"]["message"]
    assert v["d"]["status"] == "error" and "worker process died" in v["d"]["message"]
    assert v["single"]["status"] == "ok" and s.statuses["error"] == 2
    monkeypatch.delenv("FACEPIPE_TEST_FAULT")
    s2 = run_extract(videos, out, cfg, progress=False)
    assert s2.processed == 2 and s2.statuses["error"] == 0  # only the two failed videos are redone


KILL_SCRIPT = """
import sys
from facepipe.stages.extract import ExtractConfig, run
if __name__ == "__main__":  # spawned workers import this file
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 8}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 96}, "workers": int(sys.argv[3])})
    run(sys.argv[1], sys.argv[2], cfg, progress=False)
"""


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_tables_and_no_temporary_files(tmp_path, face_video_dir):
    from facepipe.stages.example import camera_frames, package_photo, write_video

    d = tmp_path / "in"
    shutil.copytree(face_video_dir, d)
    photo = package_photo("t1.jpg")
    for i in range(4):
        write_video(d / f"more{i}.mp4", camera_frames(photo, (480, 270), 10, (400 + 80 * i, 330, 0.5),
                                                      (480 + 80 * i, 330, 0.5)), fps=10)
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(d), str(ref), "0"], check=True, timeout=600)
    killed = tmp_path / "killed"
    # kill -9 of the whole run (driver and both workers) right after the third video's part is written: a known
    # point mid-run, no polling or sleeping (the other worker is wherever it is in its own video)
    env = {**os.environ, "FACEPIPE_TEST_FAULT": "killrun:more1"}
    p = subprocess.run([sys.executable, str(script), str(d), str(killed), "2"], start_new_session=True, env=env,
                       timeout=600)
    assert p.returncode == -signal.SIGKILL
    assert not (killed / "videos.parquet").exists()  # killed mid-run
    assert list((killed / "_parts").glob("*.json"))  # with some videos done
    subprocess.run([sys.executable, str(script), str(d), str(killed), "2"], check=True, timeout=600)
    for name in ("videos.parquet", "faces.parquet"):
        assert pl.read_parquet(killed / name).equals(pl.read_parquet(ref / name)), name
    leftovers = [p for p in killed.rglob("*") if ".tmp-" in p.name or p.name.startswith(".staging")]
    assert leftovers == []


def test_a_second_run_on_the_same_output_fails_at_once(videos, tmp_path, small_cfg):
    from filelock import FileLock

    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / contract.LOCK_NAME)):  # another process would hold it the same way
        with pytest.raises(contract.StageBusy, match=r"another 'facepipe extract' run is writing this folder"):
            run_extract(videos, out, small_cfg, progress=False)
    assert run_extract(videos, out, small_cfg, progress=False).processed == 2


def test_shard_publishing_is_atomic_and_a_failed_run_leaves_the_published_set(example_shards, tmp_path):
    from facepipe.stages import shard

    root = example_shards.parent
    cfg = shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                     manifest=str(root / "manifest.parquet")),), max_samples=16)
    out = tmp_path / "shards"
    shard.run(out, cfg, progress=False)
    index_before = (out / "index.json").read_text()
    version = json.loads(index_before)["version"]
    assert sorted(p.name for p in out.iterdir()) == sorted([".lock", "README.md", "counts.csv", "index.json",
                                                            "stats.json", version])
    faces = pl.read_parquet(root / "extract" / "faces.parquet")
    broken = tmp_path / "extract_broken"
    shutil.copytree(root / "extract", broken)
    (broken / faces["crop_path"][len(faces) // 2]).unlink()  # fails mid-write
    bad = cfg.model_copy(update={"inputs": (cfg.inputs[0].model_copy(update={"extract": str(broken)}),),
                                 "seed": 1})
    with pytest.raises(InputError, match="cannot read"):
        shard.run(out, bad, progress=False)
    assert (out / "index.json").read_text() == index_before  # readers still see the complete old set
    assert all((out / s["url"]).is_file() for sp in json.loads(index_before)["splits"].values() for s in sp["shards"])
    assert not list(out.glob(".staging-*"))
    # a new set replaces the old one in one step; the old set stays its grace period (marked), then goes
    shard.run(out, cfg.model_copy(update={"seed": 2}), progress=False)
    new = json.loads((out / "index.json").read_text())["version"]
    assert new != version and (out / version / shard.REPLACED_NAME).is_file() and (out / new).is_dir()
    shard.run(out, cfg.model_copy(update={"seed": 2, "grace_hours": 0}), progress=False)
    assert not (out / version).exists() and (out / new).is_dir()
