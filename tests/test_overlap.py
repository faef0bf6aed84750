"""Train/test overlap across shard sets: the checkpoint's hashed footprint of its training videos, and evaluate
refusing (or leaving out and reporting) test videos seen in training in any form."""

from __future__ import annotations

import json

import polars as pl
import pytest

from facepipe.data.footprint import VIDEO_TABLE_SCHEMA, footprint, overlaps, read_video_table, video_table
from facepipe.errors import InputError
from facepipe.stages import shard
from facepipe.stages.evaluate import EvaluateConfig
from facepipe.stages.evaluate import run as run_evaluate
from facepipe.stages.train import TrainConfig
from facepipe.stages.train import run as run_train
from facepipe.train.engine import load_checkpoint


def _videos(rows) -> pl.DataFrame:
    return pl.DataFrame([dict(zip(("dataset", "video_id", "split", "label", "method", "source_ids", "identity_ids"),
                                  r), faces=1) for r in rows], schema=VIDEO_TABLE_SCHEMA)


def test_overlap_reasons_across_datasets():
    train = _videos([
        ("ffpp", "original_sequences-youtube-c23-videos-001", "train", 0, "original", [], ["yt001"]),
        ("ffpp", "manipulated-001_010", "train", 1, "Deepfakes", ["original_sequences-youtube-c23-videos-001"],
         ["yt001", "yt010"]),
        ("celebdf", "Celeb-synthesis-id0_id1_0000", "train", 1, "Celeb-DF", ["Celeb-real-id0_0000"],
         ["celebdf:id0", "celebdf:id1"]),
        ("mix", "fake-x", "train", 1, "m", ["other:orig-y"], []),
        ("ffpp", "original_sequences-youtube-c23-videos-002", "test", 0, "original", [], ["yt002"]),
    ])
    fp = footprint(train)
    assert fp["n_videos"] == 4 and fp["datasets"] == ["celebdf", "ffpp", "mix"]
    assert not any("yt" in h for h in fp["videos"] + list(fp["identities"]))  # hashes, not names
    test = _videos([
        # DeeperForensics' real class is FF++'s targets under its own ids: the same person
        ("dfo", "ffpp-c23-001", "test", 0, "original", [], ["yt001"]),
        # a DF40 fake made from an FF++ training video
        ("df40", "simswap-ff-001_010", "test", 1, "simswap", ["ffpp:original_sequences-youtube-c23-videos-001"],
         ["yt001x"]),
        ("other", "orig-y", "test", 0, "original", [], []),  # another dataset's training fake was made from it
        ("ffpp", "manipulated-001_010", "test", 1, "Deepfakes", [], []),  # the same video
        ("ffpp", "original_sequences-youtube-c23-videos-002", "test", 0, "original", [], ["yt002"]),  # clean
        # inside one dataset, the manifest's protocol decides (Celeb-DF test fakes of train originals)
        ("celebdf", "Celeb-synthesis-id0_id9_0000", "test", 1, "Celeb-DF", ["Celeb-real-id0_0000"],
         ["celebdf:id0"]),
    ])
    found = {v: r for _, v, _, r in overlaps(fp, test).iter_rows()}
    assert found == {"ffpp-c23-001": "person yt001 in training videos of ffpp",
                     "simswap-ff-001_010": "made from training video ffpp:original_sequences-youtube-c23-videos-001",
                     "orig-y": "source of training videos of mix",
                     "manipulated-001_010": "training video"}


@pytest.mark.slow
def test_evaluate_refuses_a_test_set_that_holds_training_videos(example_shards, tmp_path):
    root = example_shards.parent
    table = read_video_table(example_shards)
    assert set(table["split"]) == {"train", "val", "test"} and table["faces"].sum() == json.loads(
        (example_shards / "index.json").read_text())["total"]
    ckpt_dir = tmp_path / "train"
    run_train(example_shards, ckpt_dir, TrainConfig(model="resnet18", image_size=64, batch_size=8, steps=2,
                                                    eval_every=2, checkpoint_every=2, num_workers=0),
              progress=False)
    fp = load_checkpoint(ckpt_dir / "best.pt")["footprint"]
    assert fp["n_videos"] == table.filter(pl.col("split") != "test").height
    # the same example re-split with everything in test: a shard set whose test split holds training videos
    man = pl.read_parquet(root / "manifest.parquet").with_columns(pl.lit("test").alias("split"))
    man.write_parquet(tmp_path / "all_test.parquet")
    leaky = tmp_path / "leaky"
    shard.run(leaky, shard.ShardConfig(inputs=(shard.ShardInput(dataset="example", extract=str(root / "extract"),
                                                                manifest=str(tmp_path / "all_test.parquet")),)),
              progress=False)
    cfg = EvaluateConfig(num_workers=0, ci_resamples=50)
    with pytest.raises(InputError, match=r"test video\(s\) .* overlap the checkpoint's training data, e.g. "
                                         r"example:.*\(training video\)"):
        run_evaluate(ckpt_dir / "best.pt", [leaky], tmp_path / "eval", cfg, progress=False)
    r = run_evaluate(ckpt_dir / "best.pt", [leaky], tmp_path / "eval", cfg.model_copy(update={"overlap": "drop"}),
                     progress=False)
    clean = run_evaluate(ckpt_dir / "best.pt", [example_shards], tmp_path / "eval2", cfg, progress=False)
    assert r["overlap"]["videos"] == fp["n_videos"] and r["overlap"]["checked"]
    assert r["video"]["n"] == clean["video"]["n"] == table.filter(pl.col("split") == "test").height
    assert clean["overlap"]["videos"] == 0
    assert r["video"]["auc_ci"] is None or len(r["video"]["auc_ci"]) == 2


def test_video_table_of_rows_without_source_or_identity_columns():
    """Per-face rows of a set without ``source_ids`` / ``identity_ids`` give empty lists (both columns were once the
    same unnamed literal: polars DuplicateError)."""
    rows = pl.DataFrame({"dataset": ["a", "a", "b"], "video_id": ["v2", "v1", "v1"], "split": ["train", "train", "test"],
                         "label": [1, 1, 0], "method": ["FaceSwap", "FaceSwap", ""]})
    table = video_table(rows)
    assert dict(table.schema) == VIDEO_TABLE_SCHEMA
    assert table.select("dataset", "video_id", "faces").rows() == [("a", "v1", 1), ("a", "v2", 1), ("b", "v1", 1)]
    assert table["source_ids"].to_list() == [[], [], []] and table["identity_ids"].to_list() == [[], [], []]
    assert footprint(table)["sources"] == {} and footprint(table)["n_videos"] == 2
