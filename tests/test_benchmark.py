"""Protocols as data and the benchmark runner: the example's protocol end to end (train once, every column with
its n and intervals, csv/md/tex), the shipped protocols' columns on manifests built from trees with the real
layouts, and a DF40 column scored against its reference reals."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from facepipe.cli import app
from facepipe.datasets import ManifestConfig, build_manifest
from facepipe.errors import FacepipeError, InputError
from facepipe.protocols import Column, list_protocols, load_protocol
from facepipe.stages.benchmark import BenchmarkConfig, column_frames, run, score_column
from facepipe.stages.train import TrainConfig
from tests.test_datasets import _celebdf_tree, _df40_json, _ffpp_tree, put, tiny  # noqa: F401
from tests.test_official_splits import _dfdc_tree

TINY_TRAIN = TrainConfig(image_size=64, batch_size=8, steps=2, eval_every=2, checkpoint_every=2, num_workers=0)


def test_shipped_protocols_load_and_cite():
    names = {p.name for p in list_protocols()}
    assert {"deepfakebench", "df40", "ffpp-in-domain", "example"} <= names
    for p in list_protocols():
        assert p.citation and p.columns and p.train
    df40 = load_protocol("df40")
    assert len(df40.columns) == 31 and {c.reference_reals for c in df40.columns} == {"ffpp"}
    assert load_protocol("deepfakebench").video_aggregation == "deepfakebench"
    with pytest.raises(InputError, match="did you mean df40"):
        load_protocol("df4O")


@pytest.mark.slow
def test_example_protocol_end_to_end(example_shards, tmp_path):
    out = tmp_path / "bench"
    r = run(out, BenchmarkConfig(ci_resamples=100), [example_shards], models=["resnet18"],
            train_shards=example_shards, train_cfg=TINY_TRAIN, progress=False)
    m = r["models"]["resnet18"]
    assert m["trained_on"] == ["example"] and m["deviations"] == []
    test = pl.read_parquet(out / "models" / "resnet18" / "evaluate-test" / "predictions.parquet")
    col = m["columns"]["example"]
    assert col["n_videos"] == test.select("video_id").n_unique() and col["n_frames"] == test.height
    assert col["n_real_videos"] >= 1 and col["n_fake_videos"] >= 1 and 0 <= col["video_auc"] <= 1
    # one real and one fake test video: no interval (a point would pretend certainty)
    assert col["n_real_videos"] == col["n_fake_videos"] == 1 and col["frame_auc_ci"] is None
    sbi = m["columns"]["example SBI"]
    assert sbi["n_fake_videos"] == test.filter(pl.col("method") == "SBI").select("video_id").n_unique()
    # the tables: csv one row per model, md with n and the citation, tex a booktabs table
    csv = pl.read_csv(out / "benchmark.csv")
    assert csv.height == 1 and csv["example:n_videos"][0] == col["n_videos"]
    md = (out / "benchmark.md").read_text()
    assert "insightface" in md and f"{col['n_real_videos']}/{col['n_fake_videos']}" in md
    tex = (out / "benchmark.tex").read_text()
    assert r"\begin{tabular}{lcc}" in tex and f"($n$={col['n_videos']})" in tex
    headline = json.loads((out / "metrics.json").read_text())
    assert set(headline["resnet18"]) == {"example", "example SBI"}
    # a checkpoint trained elsewhere: evaluated only; a mismatching training set is said next to the numbers
    ck = out / "models" / "resnet18" / "train" / "best.pt"
    cli = CliRunner().invoke(app, ["benchmark", "--checkpoint", str(ck), "--shards", str(example_shards), "--out",
                                   str(tmp_path / "b2"), "--protocol", "ffpp-in-domain", "--no-progress"])
    assert cli.exit_code == 0, cli.output
    assert "FF-DF: n/a (no fake videos in the test sets)" in cli.output
    assert "deviation: trained on example, the protocol trains on ffpp" in cli.output
    assert "deviates from the protocol" in (tmp_path / "b2" / "benchmark.md").read_text()


def _fake_predictions(manifests: list[pl.DataFrame], faces: int = 3, seed: int = 0) -> pl.DataFrame:
    """Per test video of the manifests, ``faces`` faces with scores a little higher for fakes."""
    rng = np.random.default_rng(seed)
    rows = []
    for man in manifests:
        for r in man.filter(pl.col("split") == "test").iter_rows(named=True):
            for f in range(faces):
                rows.append({"dataset": r["dataset"], "video_id": r["video_id"], "method": r["method"], "split": "test",
                             "frame_index": f, "track_id": 0, "label": r["label"], "video_label": r["label"],
                             "label_source": "video", "face_size": 100.0,
                             "score": float(np.clip(rng.normal(0.4 + 0.2 * r["label"], 0.2), 0, 1))})
    return pl.DataFrame(rows)


def test_deepfakebench_columns_on_trees_with_the_real_layouts(tmp_path, tiny):  # noqa: F811
    """Manifests of all fourteen columns' datasets from their published layouts (FF++ c23 with FaceShifter and
    c40, Celeb-DF v1/v2, DeeperForensics on the FF++ targets, DFD, DFDC with its test labels.csv, DFDCP, UADFV):
    every column of the shipped protocol selects that dataset's test fakes and reals."""
    ff, cdf, ua, dfd = (tmp_path / n for n in ("ff", "cdf", "ua", "dfd"))
    _ffpp_tree(ff, tiny, comps=("c23", "c40"))
    for m in ("Face2Face", "NeuralTextures", "FaceShifter"):
        for a, b in (("000", "003"), ("003", "000"), ("010", "011"), ("020", "021")):
            put(ff, f"manipulated_sequences/{m}/c23/videos/{a}_{b}.mp4", tiny)
    _celebdf_tree(cdf, tiny)
    for i in range(4):
        put(ua, f"real/{i:04d}.mp4", tiny)
        put(ua, f"fake/{i:04d}_fake.mp4", tiny)
    for rel in ("original_sequences/actors/c23/videos/01__kitchen_pan.mp4",
                "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__kitchen_pan__ABCD1234.mp4"):
        put(dfd, rel, tiny)
    mans = [build_manifest("ffpp", ff, "ffpp", ManifestConfig(methods=("Deepfakes", "Face2Face", "FaceSwap",
                                                                        "NeuralTextures", "FaceShifter"))),
            build_manifest("celebdf_v2", cdf, "celebdf_v2", ManifestConfig()),
            build_manifest("uadfv", ua, "uadfv", ManifestConfig(split_mode="group", fractions=(1, 1, 2),
                                                                 max_group_share=1.0)),
            build_manifest("dfd", dfd, "dfd", ManifestConfig()),
            build_manifest("ffpp", ff, "ffpp_c40", ManifestConfig(compression="c40")),
            build_manifest("celebdf_v1", cdf, "celebdf_v1", ManifestConfig())]
    dfdc, dfo, prev = tmp_path / "dfdc", tmp_path / "dfo", tmp_path / "prev"
    _dfdc_tree(dfdc)
    mans.append(build_manifest("dfdc", dfdc, "dfdc", ManifestConfig()))
    for rel in ("manipulated_videos/end_to_end/020_M101.mp4", "manipulated_videos/end_to_end/000_M102.mp4"):
        put(dfo, rel, tiny)
    (dfo / "lists" / "splits").mkdir(parents=True)
    for sp, names in (("train", "000_M102.mp4\n"), ("val", ""), ("test", "020_M101.mp4\n")):
        (dfo / "lists" / "splits" / f"{sp}.txt").write_text(names)
    mans.append(build_manifest("deeperforensics", dfo, "deeperforensics",
                               ManifestConfig(options={"ffpp_root": str(ff)}, both_classes=False)))
    meta = {"original_videos/111/111_A.mp4": {"label": "real", "set": "test"},
            "method_A/111/111_A/222_A_001.mp4": {"label": "fake", "set": "test", "target_id": "111"}}
    for rel in meta:
        put(prev, rel, tiny)
    (prev / "dataset.json").write_text(json.dumps(meta))
    mans.append(build_manifest("dfdc_preview", prev, "dfdc_preview", ManifestConfig(both_classes=False)))
    preds = _fake_predictions(mans)
    proto = load_protocol("deepfakebench")
    for col in proto.columns:
        c = score_column(column_frames(preds, col), proto.video_aggregation, 50, 0)
        man = next(m for m in mans if m["dataset"][0] == col.dataset).filter(pl.col("split") == "test")
        fakes = man.filter(pl.col("label") == 1)
        if col.methods:
            fakes = fakes.filter(pl.col("method").is_in(list(col.methods)))
        assert c["n_fake_videos"] == fakes.height > 0, col.name
        assert c["n_real_videos"] == man.filter(pl.col("label") == 0).height > 0, col.name
        assert not np.isnan(c["video_auc"]), col.name
        enough = min(c["n_real_videos"], c["n_fake_videos"]) >= 2
        assert (c["video_auc_ci"] is not None) == enough, col.name
        if enough:
            lo, hi = c["frame_auc_ci"]
            assert lo <= c["frame_auc"] <= hi, col.name


def test_df40_columns_are_numbers_against_ffpp_test_reals(tmp_path, tiny, t1):  # noqa: F811
    ff, df40 = tmp_path / "ff", tmp_path / "df40"
    _ffpp_tree(ff, tiny)
    put(df40, "simswap/ff/020_021.mp4", tiny)
    put(df40, "simswap/ff/021_020.mp4", tiny)
    put(df40, "simswap/cdf/id0_id1_0000.mp4", tiny)
    _df40_json(df40, "simswap_ff", "simswap", {"020_021": ("test", "Fake"), "021_020": ("test", "Fake")})
    _df40_json(df40, "simswap_cdf", "simswap", {"id0_id1_0000": ("test", "Fake")})
    mans = [build_manifest("ffpp", ff, "ffpp", ManifestConfig()),
            build_manifest("df40", df40, "df40", ManifestConfig(both_classes=False))]
    preds = _fake_predictions(mans)
    col = next(c for c in load_protocol("df40").columns if c.name == "simswap_ff")
    frames = column_frames(preds, col)
    assert set(frames.filter(pl.col("label") == 1)["video_id"]) == {"simswap-ff-020_021", "simswap-ff-021_020"}
    assert set(frames.filter(pl.col("label") == 0)["dataset"]) == {"ffpp"}  # the reference reals
    c = score_column(frames, "mean", 50, 0)
    assert c["n_fake_videos"] == 2 and c["n_real_videos"] == 2 and not np.isnan(c["frame_auc"])
    # without the reference reals the same column has none: reported, never a number
    bare = score_column(column_frames(preds, Column(name="x", dataset="df40", methods=("simswap",))), "mean", 0, 0)
    assert bare["missing"] == "no real videos in the test sets" and np.isnan(bare["video_auc"])


def test_bad_protocol_files_name_the_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("name: x\ntitle: t\ncitation: c\ntrain: [a]\nvideo_aggregation: median\ncolumns: [{name: a, "
                 "dataset: a}]\n")
    with pytest.raises(FacepipeError, match="video_aggregation"):
        load_protocol(p)
    p.write_text("name: x\ntitle: t\ncitation: c\ntrain: [a]\ncolumns: [{name: a, dataset: a, video_id_regex: '('}]\n")
    with pytest.raises(FacepipeError, match=re.escape("not a regular expression")):
        load_protocol(p)


def test_the_table_marks_test_time_augmentation():
    """benchmark.md says when every score is a TTA score (evaluate.tta), and not otherwise."""
    from facepipe.stages.benchmark import markdown

    col = {"frame_auc": 0.9, "video_auc": 0.95, "frame_auc_ci": None, "video_auc_ci": None, "n_real_videos": 2,
           "n_fake_videos": 2, "n_real_frames": 8, "n_fake_frames": 8}
    result = {"title": "t", "protocol": "p", "citation": "c", "notes": "", "video_aggregation": "mean",
              "columns": [{"name": "A"}], "models": {"m": {"columns": {"A": col}, "deviations": []}}}
    assert "Test-time augmentation" not in markdown({**result, "tta": "none"})
    md = markdown({**result, "tta": "flip, scales 0.9/1/1.1 (mean of probabilities)"})
    assert "**Test-time augmentation: flip, scales 0.9/1/1.1 (mean of probabilities)**" in md
