"""The Ray engine of the extract stage against a real two-node Ray cluster on 127.0.0.1 (`ray start --head` plus a
second node process, started here): same tables, crops, statuses and resume as the local engine."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from conftest import REAL, needs_real

pytestmark = pytest.mark.integration  # a two-node Ray cluster on 127.0.0.1

ray = pytest.importorskip("ray")

CLIPS = {  # path -> (label, method, original): a FaceSwap-free FF++ pair (labels by comparison), a corrupt file
    "ffpp/original_004.mp4": ("real", "", ""),
    "ffpp/NeuralTextures_004_982.mp4": ("fake", "NeuralTextures", "original_004.mp4"),
    "edge/corrupted.mp4": ("real", "", ""),
    "misc/short_hamilton_clip.mp4": ("real", "", ""),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``(address, env)``: a head node and a second node, one CPU each, on 127.0.0.1, stopped afterwards; ``env``
    (this environment plus token authentication with a token of its own) is what every Ray process of the test runs
    with. Ray >= 2.5x turns token auth on by itself once ``~/.ray/auth_token`` exists (any local ``ray.init()``
    writes one), and a second node then cannot join unless every process agrees on the mode and the token; Ray
    reads the mode once per process, so the drivers run as subprocesses too."""
    import os
    import secrets

    exe = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="fpray")  # short: Ray's socket paths must fit in 107 bytes
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
              "--node-ip-address", "127.0.0.1"]
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    def ray_cli(*args: str) -> None:
        r = subprocess.run([exe, *args], capture_output=True, text=True, timeout=180, env=env)
        if r.returncode:
            raise RuntimeError(f"ray {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")

    try:
        ray_cli("start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", tmp, *common)
        ray_cli("start", "--address", f"127.0.0.1:{port}", *common)
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([exe, "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("rayvids")
    rows = []
    for rel, (label, method, orig) in CLIPS.items():
        (root / Path(rel).name).symlink_to(REAL / "videos" / rel)
        rows.append({"path": Path(rel).name, "label": label, "split": "test", "method": method,
                     "source_ids": Path(orig).stem, "dataset": "shared", "video_id": Path(rel).stem})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def _tables(out: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    return pl.read_parquet(out / "videos.parquet"), pl.read_parquet(out / "faces.parquet")


@needs_real
def test_ray_engine_on_a_two_node_cluster_equals_local(cluster, videos, tmp_path):
    from facepipe.stages.extract import ExtractConfig, run

    address, env = cluster
    nodes = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address=%r, log_to_driver=False); "
                            "print(json.dumps([n['Resources'].get('CPU') for n in ray.nodes() if n['Alive']]))"
                            % address], capture_output=True, text=True, timeout=180, env=env)
    assert nodes.returncode == 0, nodes.stderr[-3000:]
    assert json.loads(nodes.stdout.strip().splitlines()[-1]) == [1, 1]

    base = {"sampling": {"num_frames": 8}, "workers": 2}
    local = run(videos, tmp_path / "local", ExtractConfig.model_validate(base), progress=False,
                manifest=videos / "manifest.csv")
    # Through the CLI, as a user would: two actors of one CPU each, so one on each node.
    cmd = [str(Path(sys.executable).parent / "facepipe"), "extract", "--video-dir", str(videos), "--out",
           str(tmp_path / "ray"), "--manifest", str(videos / "manifest.csv"), "--num-frames", "8", "--workers", "2",
           "--engine", "ray", "--address", address, "--no-progress", "--no-contact-sheet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "extract: 4 videos (4 processed" in r.stdout

    lv, lf = _tables(tmp_path / "local")
    rv, rf = _tables(tmp_path / "ray")
    assert lv.equals(rv) and lf.equals(rf)
    assert dict(zip(rv["video_id"], rv["status"])) == {"original_004": "ok", "NeuralTextures_004_982": "ok",
                                                        "corrupted": "decode_error", "short_hamilton_clip": "ok"}
    assert set(rf.filter(pl.col("video_id") == "NeuralTextures_004_982")["label_source"]) == {"original_diff"}
    assert local.faces_written == len(rf) > 0
    for p in rf["crop_path"]:
        assert (tmp_path / "local" / p).read_bytes() == (tmp_path / "ray" / p).read_bytes()

    # Resume on the cluster: nothing changed, nothing redone; the tables stay byte-identical.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "extract: 4 videos (0 processed, 4 unchanged since the last run)" in again.stdout
    assert _tables(tmp_path / "ray")[1].equals(rf)


def test_ray_engine_unreachable_cluster_is_a_clear_error(tmp_path):
    import cv2

    from facepipe.errors import InputError
    from facepipe.stages.example import package_photo
    from facepipe.stages.extract import ExtractConfig, run

    (tmp_path / "v").mkdir()
    cv2.imwrite(str(tmp_path / "v" / "a.jpg"), package_photo("t1.jpg")[..., ::-1])
    cfg = ExtractConfig.model_validate({"engine": "ray", "ray_address": f"127.0.0.1:{_free_port()}"})
    with pytest.raises(InputError, match="cannot reach the Ray cluster"):
        run(tmp_path / "v", tmp_path / "out", cfg, progress=False)
