"""The shortcut probe and shard.reencode (issue 24 item 6): the features in closed form (JPEG quality from the
quantisation tables, blockiness), the cross-validated probe on a table where one nuisance feature gives the label
away and on one where none does, re-encoded shards, and ``facepipe inspect --bias`` on the example's shards."""

from __future__ import annotations

import json
import tarfile

import cv2
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from facepipe.cli import app
from facepipe.data.bias import FEATURES, blockiness, features_frame, jpeg_quality, probe_table, warnings_of
from tests.conftest import shard_files


def _texture(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), (5, 5), 0)


@pytest.mark.parametrize("quality", [30, 75, 95])
def test_jpeg_quality_is_read_back_from_the_quantisation_table(quality):
    ok, buf = cv2.imencode(".jpg", _texture(), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert jpeg_quality(buf.tobytes()) == pytest.approx(quality, abs=1)
    assert np.isnan(jpeg_quality(cv2.imencode(".png", _texture())[1].tobytes()))


def test_blockiness_sees_8_pixel_blocks():
    smooth = np.tile(np.linspace(0, 255, 64), (64, 1))
    blocks = np.kron(np.random.default_rng(0).integers(0, 255, (8, 8)), np.ones((8, 8))).astype(np.float64)
    blocks += np.tile(np.linspace(0, 8, 64), (64, 1))  # some gradient inside the blocks
    assert blockiness(smooth) == pytest.approx(1.0, abs=0.05)
    assert blockiness(blocks) > 5


def _table(separating: bool, videos: int = 8, faces: int = 6, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for label in (0, 1):
        for v in range(videos):
            base = rng.normal(size=len(FEATURES))
            for _ in range(faces):
                f = dict(zip(FEATURES, base + 0.1 * rng.normal(size=len(FEATURES))))
                if separating:
                    f["brightness"] = 100 + 40 * label + rng.normal()
                rows.append({**f, "label": label, "dataset": "d", "video_id": f"{label}-{v}", "split": "train"})
    return features_frame(rows)


def test_the_probe_finds_a_feature_that_gives_the_label_away_and_nothing_where_none_does():
    biased = probe_table(_table(True))["train"]
    assert biased["overall"]["auc"] > 0.95 and biased["overall"]["folds"] == "video"
    assert biased["per_feature"]["brightness"] > 0.95 and biased["overall"]["n_videos"] == 16
    assert warnings_of({"train": biased}, "set") and "brightness" in warnings_of({"train": biased}, "set")[0]
    clean = probe_table(_table(False))["train"]
    assert 0.2 < clean["overall"]["auc"] < 0.8 and not warnings_of({"train": clean}, "set")
    one_video = probe_table(_table(True, videos=1))
    assert one_video["train"]["overall"]["folds"] == "face"  # optimistic, and said so in the table
    assert not warnings_of(one_video, "set")  # a per-video feature identifies the video: no warning on face folds


@pytest.mark.slow
def test_reencoded_shards_hold_jpegs_of_that_quality_and_the_probe_runs_at_shard_time(example_shards, tmp_path):
    from facepipe.stages import shard

    root = example_shards.parent
    inputs = [{"dataset": "example", "extract": str(root / "extract"), "manifest": str(root / "manifest.parquet")}]
    s = shard.run(tmp_path / "q60", shard.ShardConfig.model_validate(
        {"inputs": inputs, "reencode": {"quality": 60}}), progress=False)
    index = json.loads((tmp_path / "q60" / "index.json").read_text())
    assert index["image_format"] == "jpg"
    for t in shard_files(tmp_path / "q60").glob("*.tar"):
        with tarfile.open(t) as tf:
            for m in tf.getmembers():
                if m.name.endswith(".jpg"):
                    assert jpeg_quality(tf.extractfile(m).read()) == pytest.approx(60, abs=1)
                meta = json.loads(tf.extractfile(m).read()) if m.name.endswith(".json") else None
                if meta:
                    assert meta["source"]["height"] > 0 and meta["source"]["kbps"] > 0
    assert set(s.bias) == {"train", "val", "test"} and s.bias["train"]["overall"]["n"] > 0


def test_inspect_bias_prints_the_probe_and_writes_histograms(example_cell_shards, tmp_path):
    png = tmp_path / "bias.png"
    r = CliRunner().invoke(app, ["inspect", str(example_cell_shards), "--bias", "--out", str(png)])
    assert r.exit_code == 0, r.output
    assert "| split | datasets | probe AUC |" in r.output and "| train | all |" in r.output
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 100
