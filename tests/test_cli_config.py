"""One config path for every stage command: --params, then the named options, then repeated -S/--set KEY=VALUE
(dvc exp run -S's convention), validated by the stage's pydantic model (issue 22 item 4)."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from facepipe.cli import app
from facepipe.config import field_paths, parse_sets
from facepipe.errors import ConfigError, FacepipeError
from facepipe.stages.extract import ExtractConfig

STAGE_COMMANDS = {
    "extract": ["--video-dir", "{d}", "--out", "{d}/out"],
    "manifest": ["--out", "{d}/m.parquet", "--dataset", "x", "--adapter", "csv", "--root", "{d}"],
    "freq": ["--extract", "{d}", "--out", "{d}/freq"],
    "shard": ["--out", "{d}/shards"],
    "train": ["--shards", "{d}", "--out", "{d}/train"],
    "evaluate": ["--checkpoint", "{d}/best.pt", "--shards", "{d}", "--out", "{d}/eval"],
    "benchmark": ["--shards", "{d}", "--out", "{d}/bench"],
    "explain": ["--checkpoint", "{d}/best.pt", "--shards", "{d}", "--out", "{d}/explain"],
}


def test_parse_sets_follows_dvc_exp_run_s():
    got = parse_sets(["align.size=128", "extract.labels.min_score=0.01", "params.yaml:workers=0", "views=[dct, srm]",
                      "freq.dct_log=false", "ray_address=null", "face_detector.model_root=/m=x"], ("extract", "freq"))
    assert got == {"extract": [("align.size", 128), ("labels.min_score", 0.01), ("workers", 0),
                               ("views", ["dct", "srm"]), ("ray_address", None), ("face_detector.model_root", "/m=x")],
                   "freq": [("dct_log", False)]}
    for bad in ("align.size", "=3", ".a=1", "a..b=1", "a.=1"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_sets([bad], ("extract",))


def test_field_paths_reach_nested_sections():
    p = field_paths(ExtractConfig)
    assert {"align", "align.size", "labels.min_score", "sampling.num_frames", "workers"} <= p
    assert "align.nope" not in p


@pytest.mark.parametrize("command", sorted(STAGE_COMMANDS))
def test_every_stage_command_takes_s_and_names_a_wrong_key(command, tmp_path):
    """Each stage command's -S reaches its model: an unknown key is an error naming it. Every named option's key
    is checked against the model on each run, so a named flag that maps to no parameter fails here too."""
    args = [a.format(d=tmp_path) for a in STAGE_COMMANDS[command]]
    r = CliRunner().invoke(app, [command, *args, "-S", "no_such_key=1"])
    assert isinstance(r.exception, FacepipeError), (r.output, r.exception)
    msg = str(r.exception)
    assert "no_such_key" in msg and "Extra inputs are not permitted" in msg, msg
    assert "mapped to no parameter" not in msg
    r = CliRunner().invoke(app, [command, *args, "-S", "no_such_key"])
    assert isinstance(r.exception, ConfigError) and "expected KEY=VALUE" in str(r.exception)


def test_s_sets_nested_parameters_after_params_and_named_options(tmp_path, face_video_dir):
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  sampling: {num_frames: 5}\n  align: {size: 96}\n  workers: 0\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["extract", "--video-dir", str(face_video_dir), "--out", str(out), "--params",
                                 str(params), "--size", "80", "-S", "extract.align.size=64", "-S",
                                 "sampling.num_frames=3", "--no-progress", "--no-contact-sheet"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert set(pl.read_parquet(out / "faces.parquet")["crop_size"]) == {64}  # -S after --size after --params
    assert pl.read_parquet(out / "videos.parquet")["frames_sampled"].to_list() == [3, 3]
    r = CliRunner().invoke(app, ["extract", "--video-dir", str(face_video_dir), "--out", str(out),
                                 "-S", "align.size=big"])
    assert isinstance(r.exception, ConfigError) and "align.size" in str(r.exception)


def test_train_detector_flag_is_the_old_name_of_model(tmp_path):
    with pytest.warns(FutureWarning, match="renamed to --model"):
        r = CliRunner().invoke(app, ["train", "--shards", str(tmp_path), "--out", str(tmp_path / "o"),
                                     "--detector", "resnet18", "-S", "no_such_key=1"])
    assert "no_such_key" in str(r.exception)  # configured as far as validation: the flag was taken


def test_extract_detector_is_the_old_name_of_face_detector(tmp_path):
    cfg = ExtractConfig.model_validate({"face_detector": {"name": "mtcnn", "min_score": 0.9}})
    with pytest.warns(FutureWarning, match="renamed to extract.face_detector"):
        old = ExtractConfig.model_validate({"detector": {"name": "mtcnn", "min_score": 0.9}})
    assert old == cfg and "detector" not in old.model_dump()  # fingerprints say face_detector
    with pytest.raises(ValueError), pytest.warns(FutureWarning):
        ExtractConfig.model_validate({"face_detector": {"name": "mtcnn"}, "detector": {"name": "scrfd"}})
    with pytest.warns(FutureWarning, match="renamed to --face-detector"):
        r = CliRunner().invoke(app, ["extract", "--video-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                                     "--detector", "mtcnn", "-S", "no_such_key=1"])
    assert "no_such_key" in str(r.exception)


def test_extract_flag_map_names_real_options_and_parameters():
    import inspect

    from facepipe.cli.pipeline import EXTRACT_FLAGS, extract

    options = set(inspect.signature(extract).parameters)
    assert set(EXTRACT_FLAGS) <= options
    assert set(EXTRACT_FLAGS.values()) | {"face_detector.dlib_81"} <= field_paths(ExtractConfig)


def test_one_key_value_parser_for_every_pair_option():
    from facepipe.cli._common import key_values
    from facepipe.errors import InputError

    assert key_values(["a=1", " b = x=y ", "a=2"], "--option") == {"a": "2", "b": "x=y"}
    assert key_values(["dataset=d,extract=e, manifest=m"], "--input", sep=",") == {
        "dataset": "d", "extract": "e", "manifest": "m"}
    for bad in ("a", "=1", "a=", " = "):
        with pytest.raises(InputError, match=f"--alias '{bad}': expected PROTOCOL_NAME=DATASET"):
            key_values([bad], "--alias", "PROTOCOL_NAME=DATASET")
    r = CliRunner().invoke(app, ["manifest", "--out", "m.parquet", "--dataset", "x", "--adapter", "csv",
                                 "--root", ".", "--option", "file"])
    assert "--option 'file': expected KEY=VALUE" in str(r.exception)
