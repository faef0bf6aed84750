"""The shard set's dataset card (README.md in the Hugging Face form): datasets.load_dataset(DIR) finds the splits."""

from __future__ import annotations

import json

import pytest
import yaml

from facepipe.data.card import ADAPTERS, dataset_info, features_yaml


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_front_matter_names_every_split_and_the_features(example_shards):
    index = json.loads((example_shards / "index.json").read_text())
    text = (example_shards / "README.md").read_text()
    meta = _front(text)
    files = {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]}
    assert set(files) == {s for s, i in index["splits"].items() if i["samples"]}
    for split, pattern in files.items():  # the glob matches exactly the index's shards of that split
        matched = sorted(p.relative_to(example_shards).as_posix() for p in example_shards.glob(pattern))
        assert matched == sorted(s["url"] for s in index["splits"][split]["shards"])
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {
        s: i["samples"] for s, i in index["splits"].items() if i["samples"]}
    assert meta["license"] is None and meta["size_categories"] == ["n<1K"]
    assert "## How the crops were made" in text and "`mtcnn@" in text and "alignment `arcface` at 64 px" in text


def test_card_features_are_hf_features(example_shards):
    datasets = pytest.importorskip("datasets")
    from facepipe.data import hf_features

    index = json.loads((example_shards / "index.json").read_text())
    by_name = lambda feats: {f["name"]: f for f in feats}  # noqa: E731
    assert by_name(features_yaml(index)) == by_name(hf_features(index)._to_yaml_list())
    assert datasets.Features._from_yaml_list(features_yaml(index)) == hf_features(index)


def test_load_dataset_reads_the_splits_from_the_card(example_shards, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    index = json.loads((example_shards / "index.json").read_text())
    ds = datasets.load_dataset(str(example_shards), cache_dir=str(tmp_path / "hf"))
    want = {s: i["samples"] for s, i in index["splits"].items() if i["samples"]}
    assert {s: ds[s].num_rows for s in ds} == want
    row = ds["train"][0]
    assert row["png"].size == (64, 64) and row["cls"] == row["json"]["label"]
    keys = {r["json"]["key"] for s in ds for r in ds[s]}
    assert len(keys) == sum(want.values())


def test_card_cites_the_protocol_of_each_adapter():
    info = dataset_info("ffpp", {"train": 10})
    assert "Rössler" in info["citation"] and "720/140/140" in info["protocol"]
    assert dataset_info("celebdf_v2")["citation"].startswith("Li et al.")
    assert dataset_info("csv")["protocol"].startswith("the user's own")
    assert dataset_info(None) == {"adapter": None, "protocol": None, "citation": None, "split_report": None}
    assert {"ffpp", "celebdf_v2", "dfdc", "df40", "deeperforensics", "wilddeepfake", "uadfv"} <= set(ADAPTERS)


def test_shard_stage_writes_the_adapter_and_its_citation(tmp_path):
    """Through the manifest stage (which records the adapter) and shard: the card names the dataset's adapter."""
    from facepipe.datasets import ManifestConfig
    from facepipe.stages import extract, manifest, shard
    from facepipe.stages.example import build_example
    from facepipe.stages.extract import ExtractConfig

    videos = build_example(tmp_path / "videos", seconds=0.4)
    manifest.run("csv", videos, "example", ManifestConfig(), tmp_path / "manifest.parquet")
    assert manifest.read_adapter(tmp_path / "manifest.parquet") == "csv"
    cfg = ExtractConfig.model_validate({"sampling": {"num_frames": 3}, "face_detector": {"name": "mtcnn"},
                                        "align": {"size": 48}, "workers": 0})
    extract.run(videos, tmp_path / "extract", cfg, progress=False, manifest=tmp_path / "manifest.parquet")
    settings = json.loads((tmp_path / "extract" / "extract.json").read_text())
    assert settings["params"]["align"]["size"] == 48 and settings["detector"].startswith("mtcnn@")
    shard.run(tmp_path / "shards", shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="example", extract=str(tmp_path / "extract"), manifest=str(tmp_path / "manifest.parquet")),)),
        progress=False)
    index = json.loads((tmp_path / "shards" / "index.json").read_text())
    assert index["extract"]["example"]["params"]["align"]["size"] == 48
    text = (tmp_path / "shards" / "README.md").read_text()
    assert "- Adapter: `csv`" in text and "the user's own labels and splits" in text
