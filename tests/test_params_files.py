"""Every params file the project ships validates against the stages' parameter models.

``scripts/real/params.yaml`` (the pipeline CI runs on ../shared/data/real) once kept a key the extract
model had dropped (``labels.max_frame_diff``) and CI's ``dvc repro`` failed on it; this catches such drift
without running the pipeline.
"""

from pathlib import Path

import pytest
import yaml

from facepipe.config import load_dataset_entry, load_params
from facepipe.datasets import ManifestConfig
from facepipe.freq.config import FreqConfig
from facepipe.stages.benchmark import BenchmarkConfig
from facepipe.stages.evaluate import EvaluateConfig
from facepipe.stages.explain import ExplainConfig
from facepipe.stages.extract import ExtractConfig
from facepipe.stages.shard import ShardConfig
from facepipe.stages.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "manifest": ManifestConfig,
    "extract": ExtractConfig,
    "freq": FreqConfig,
    "shard": ShardConfig,
    "train": TrainConfig,
    "evaluate": EvaluateConfig,
    "benchmark": BenchmarkConfig,
    "explain": ExplainConfig,
}


@pytest.mark.parametrize("name", ["params.yaml", "scripts/real/params.yaml"])
def test_shipped_params_validate(name):
    path = ROOT / name
    doc = yaml.safe_load(path.read_text())
    assert set(doc) == {"datasets", *MODELS}, f"{name}: sections {sorted(doc)}"
    for section, model in MODELS.items():
        load_params(path, section, model)  # raises ConfigError naming any stale or mistyped key
    for key in doc["datasets"]:
        load_dataset_entry(path, key)


def test_stale_key_is_named(tmp_path):
    doc = yaml.safe_load((ROOT / "params.yaml").read_text())
    doc["extract"]["labels"]["max_frame_diff"] = 0
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(doc))
    from facepipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[extract\].*labels\.max_frame_diff"):
        load_params(p, "extract", ExtractConfig)
