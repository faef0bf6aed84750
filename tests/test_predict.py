"""facepipe predict: a checkpoint's own extract settings on new videos and photos, scores as evaluate computes them,
the tables, the DFDC-form CSV, annotated images and Grad-CAM overlays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from facepipe.errors import InputError
from facepipe.inference import PREDICTION_SCHEMA, aggregate, predict, resolve_inputs

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def checkpoint(example_checkpoint):
    return example_checkpoint


@pytest.fixture(scope="module")
def predicted(checkpoint, example_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("predict_out")
    videos = example_shards.parent / "videos"
    s = predict([videos], checkpoint, out, faces="main", progress=False)
    return s, out, videos


def test_checkpoint_records_the_extract_settings(checkpoint):
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    doc = ckpt["extract"]["example"]
    assert doc["params"]["sampling"]["num_frames"] == 6 and doc["params"]["align"]["size"] == 64
    assert doc["detector"].startswith("mtcnn@")


def test_predict_scores_the_faces_exactly_as_evaluate(predicted, checkpoint, example_shards, tmp_path):
    """Same crops (the checkpoint's extract settings) and the same inputs to the model: predict's score of every test
    face equals evaluate's for it."""
    from facepipe.stages.evaluate import EvaluateConfig
    from facepipe.stages.evaluate import run as run_evaluate

    s, out, videos = predicted
    run_evaluate(checkpoint, [example_shards], tmp_path / "ev", EvaluateConfig(num_workers=0, ci_resamples=0),
                 progress=False)
    ev = pl.read_parquet(tmp_path / "ev" / "predictions.parquet")
    path_of = {r["video_id"]: r["path"] for r in
               pl.read_parquet(example_shards.parent / "extract" / "videos.parquet").iter_rows(named=True)}
    ev = ev.with_columns(input=pl.col("video_id").replace_strict(path_of).map_elements(
        lambda p: str((videos / p).resolve()), return_dtype=pl.String))
    both = ev.join(s.table, on=["input", "frame_index", "track_id"], suffix="_p")
    assert both.height == ev.height > 0
    np.testing.assert_allclose(both["score_p"].to_numpy(), both["score"].to_numpy(), atol=1e-5)


def test_predict_tables_csv_and_pictures(predicted):
    s, out, videos = predicted
    t = pl.read_parquet(out / "predictions.parquet")
    assert t.schema == pl.Schema(PREDICTION_SCHEMA)
    assert t.drop("annotated", "explain_path").equals(s.table.drop("annotated", "explain_path"))
    per_input = t.group_by("input").agg(pl.col("status").first(), pl.col("score").count().alias("n"),
                                        pl.col("video_score").first(), pl.col("annotated").first())
    files = sorted(str(p.resolve()) for p in videos.rglob("*") if p.is_file() and p.suffix in (".mp4", ".mov", ".txt"))
    assert sorted(per_input["input"]) == files  # every input has a row, scored or not
    status = dict(zip(per_input["input"].map_elements(lambda p: Path(p).name, return_dtype=pl.String),
                      per_input["status"]))
    assert status["tom_hanks.mp4"] == "ok" and status["table.mp4"] == "no_face"
    assert status["not_a_video.mp4"] == "unsupported" and status["empty.mp4"] == "decode_error"
    ok = per_input.filter(pl.col("status") == "ok")
    assert (ok["n"] > 0).all() and ok["video_score"].is_between(0, 1).all()
    assert per_input.filter(pl.col("n") == 0)["video_score"].is_null().all()
    # the DFDC submission form: one row per input, 0.5 where no face was scored
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert list(rows[0]) == ["filename", "label"] and len(rows) == len(files)
    by_name = {r["filename"]: float(r["label"]) for r in rows}
    assert by_name["videos/noface/table.mp4"] == 0.5
    tom = ok.filter(pl.col("input").str.ends_with("portrait/tom_hanks.mp4"))
    assert by_name["videos/portrait/tom_hanks.mp4"] == pytest.approx(tom["video_score"][0], abs=1e-6)
    # a contact sheet per scored video, opened: JPEG, wider than high (4 frames per row), boxes drawn in colour
    from PIL import Image

    for rel in ok["annotated"]:
        im = Image.open(out / rel)
        assert im.format == "JPEG" and im.width >= 480
        px = np.asarray(im).reshape(-1, 3).astype(int)
        assert ((px[:, 0] > 200) & (px[:, 2] < 60)).any()  # the green-to-red box colours are there
    assert per_input.filter(pl.col("n") == 0)["annotated"].is_null().all()


def test_video_score_is_the_most_fake_track():
    scored = pl.DataFrame({"video_id": ["a"] * 5 + ["b"] * 2, "track_id": [0, 0, 0, 1, 1, 0, 0],
                           "frame_index": [0, 1, 2, 0, 1, 0, 1], "score": [0.1, 0.2, 0.3, 0.9, 0.7, 0.4, 0.6],
                           "face_size_px": [50.0, 50, 50, 20, 20, 30, 30]}, schema_overrides={"track_id": pl.Int32})
    mean = aggregate(scored, "mean").sort("video_id", "track_id", "frame_index")
    assert mean["track_score"].to_list() == pytest.approx([0.2] * 3 + [0.8] * 2 + [0.5] * 2)
    assert mean["video_score"].to_list() == pytest.approx([0.8] * 5 + [0.5] * 2)
    assert aggregate(scored, "max")["video_score"].max() == pytest.approx(0.9)
    dfb = aggregate(scored, "deepfakebench").sort("video_id", "track_id", "frame_index")
    assert dfb["video_score"].to_list()[:5] == pytest.approx([0.2] * 5)  # the largest face of each frame: track 0


def test_inputs_resolve_to_unique_names_and_lists_carry_labels(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "clip.mp4").write_bytes(b"x")
    (tmp_path / "a" / ".hidden.mp4").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\na/clip.mp4,fake\nb/clip.mp4,real\n")
    items = resolve_inputs([tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.mp4", tmp_path / "a", lst])
    assert [i.name for i in items] == ["clip.mp4", "clip-2.mp4", "a/clip.mp4", "clip-3.mp4", "clip-4.mp4"]
    assert [i.label for i in items] == [None, None, None, 1, 0]
    with pytest.raises(InputError, match="notes.txt: not a video or photo"):
        resolve_inputs([tmp_path / "a" / "notes.txt"])
    with pytest.raises(InputError, match="does not exist"):
        resolve_inputs([tmp_path / "missing.mp4"])
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.mp4\n")
    with pytest.raises(InputError, match="bad.csv: a list of inputs needs a 'path' column"):
        resolve_inputs([bad])
    with pytest.raises(InputError, match="no input"):
        resolve_inputs([])


def test_checkpoint_without_extract_settings_is_one_clear_error(checkpoint, example_shards, tmp_path):
    from typer.testing import CliRunner

    from facepipe.cli import app

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt.pop("extract")
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    clip = example_shards.parent / "videos" / "portrait" / "tom_hanks.mp4"
    with pytest.raises(InputError, match="old.pt: the checkpoint does not record how its training crops were made"):
        predict([clip], old, tmp_path / "out", progress=False)
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  sampling: {num_frames: 3}\n  face_detector: {name: mtcnn}\n  align: {size: 64}\n")
    s = predict([clip], old, None, params=params, progress=False)
    assert s.table["frame_index"].n_unique() == 3 and s.out_dir is None
    r = CliRunner().invoke(app, ["predict", str(clip), "--checkpoint", str(tmp_path / "nothing.pt"), "--out",
                                 str(tmp_path / "o")])
    assert r.exit_code != 0 and "nothing.pt: checkpoint not found" in str(r.exception)


@pytest.mark.slow
def test_predict_cli_with_explain(checkpoint, example_shards, tmp_path):
    from typer.testing import CliRunner

    from facepipe.cli import app

    clip = example_shards.parent / "videos" / "portrait" / "tom_hanks_sbi.mp4"
    r = CliRunner().invoke(app, ["predict", str(clip), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                                 "--explain", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "tom_hanks_sbi.mp4" in r.output and "1 input (1 ok), 6 faces scored on cpu" in r.output
    t = pl.read_parquet(tmp_path / "o" / "predictions.parquet")
    assert t["explain_path"].null_count() == 0
    from PIL import Image

    im = Image.open(tmp_path / "o" / t["explain_path"][0])
    assert im.size == (64, 64)
    # a rerun resumes the extraction (nothing re-detected) and gives the same table
    r2 = CliRunner().invoke(app, ["predict", str(clip), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                                  "--workers", "0", "--no-progress"])
    assert r2.exit_code == 0
    assert pl.read_parquet(tmp_path / "o" / "predictions.parquet")["score"].to_list() == t["score"].to_list()


@pytest.mark.slow
def test_predict_clip_model(example_clip_shards, tmp_path):
    """A video model's checkpoint: predict samples clips as its training did and scores each (video, clip, track)."""
    from facepipe.stages.train import TrainConfig
    from facepipe.stages.train import run as run_train

    run_train(example_clip_shards, tmp_path / "t", TrainConfig(model="r3d_18", image_size=64, steps=1, eval_every=1,
                                                               checkpoint_every=1, batch_size=2, num_workers=0),
              progress=False)
    clip = example_clip_shards.parent / "videos" / "portrait" / "tom_hanks.mp4"
    s = predict([clip], tmp_path / "t" / "best.pt", tmp_path / "o", explain=True, progress=False)
    t = s.table
    assert t["clip_id"].n_unique() == 2 and t.height == t.select("clip_id", "track_id").n_unique()
    assert t["score"].is_between(0, 1).all()
    from PIL import Image

    im = Image.open(tmp_path / "o" / t["explain_path"][0])  # the clip's 4 frames side by side, Grad-CAM over them
    assert im.size == (4 * 64, 64)


@pytest.mark.real_data
@pytest.mark.slow
def test_predict_on_the_shared_real_clips_and_photos(checkpoint, tmp_path):
    if not REAL.is_dir():
        pytest.skip("../shared/data/real not present")
    inputs = [REAL / "videos" / "ffpp" / "original_634.mp4", REAL / "videos" / "dfdc" / "brtujopkby.mp4",
              REAL / "images" / "faces" / "multiface.jpg", REAL / "images" / "faces" / "two_people.jpg",
              REAL / "images" / "noface" / "horses.jpg", REAL / "images" / "faces" / "one_face_cmyk.jpg"]
    s = predict(inputs, checkpoint, tmp_path / "o", workers=2, progress=False)
    per = s.table.group_by("input").agg(pl.col("status").first(), pl.col("score").count().alias("n"),
                                        pl.col("kind").first(), pl.col("annotated").first())
    n = {Path(i).name: k for i, k in zip(per["input"], per["n"])}
    assert n["multiface.jpg"] >= 5 and n["two_people.jpg"] == 2 and n["one_face_cmyk.jpg"] == 1
    assert n["horses.jpg"] == 0 and n["original_634.mp4"] >= 6
    assert set(per.filter(pl.col("n") > 0)["kind"]) == {"image", "video"}
    from PIL import Image

    photo = per.filter(pl.col("input").str.ends_with("multiface.jpg"))["annotated"][0]
    im = Image.open(tmp_path / "o" / photo)
    assert im.size[0] == 1200  # the photo at its own size, a title band above it
    rows = list(csv.DictReader((tmp_path / "o" / "predictions.csv").open()))
    assert {r["filename"] for r in rows} == {p.name for p in inputs}
    assert json.loads(json.dumps(s.statuses)) == {"no_face": 1, "ok": 5}
