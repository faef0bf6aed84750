"""Tests generated from the four registries and the CLI's command tree (issue 22, item 6): every registered
model builds with a tiny configuration and runs a forward, every dataset adapter builds a manifest from a tiny tree
of its layout, every face detector builds or refuses clearly (offline), every frequency view has its documented
shape and dtype, and ``facepipe <cmd> --help`` works for every command. A name registered without a case here
fails the test that lists the cases, so a new registrant cannot go untested. Also: a duplicate name is an error in
every registry, and the same definition registered again is not.

The models' full training step (forward, backward, every parameter's gradient) is ``tests/test_models.py``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from facepipe.datasets import ManifestConfig, build_manifest, list_adapters
from facepipe.errors import ConfigError, DetectorError
from facepipe.faces import create_face_detector, list_face_detectors
from facepipe.faces.base import FaceDetector
from facepipe.faces.config import DetectorConfig
from facepipe.freq import VIEWS, FreqConfig, compute_view, compute_views_torch
from facepipe.manifest import MANIFEST_SCHEMA
from facepipe.models import create_model, list_models, logits_of
from tests.test_datasets import _celebdf_tree, _df40_json, _ffpp_tree, _seq, put, tiny  # noqa: F401  (tiny: fixture)
from tests.test_insight import _scrfd_like
from tests.test_models import TINY, _batch

# ------------------------------------------------------------------------------------------------------- models

SLOW_FORWARD = {"efficientnet_b4", "f3net", "f3net_fad", "recce", "srm", "xception"}
"""Members whose forward at 64 px takes more than ~2 s on a 2-core CPU (measured: 2-10 s under a shared load)."""


def _forward_case(name: str) -> tuple[dict, int]:
    """The tiny configuration and input side of ``name``: test_models' TINY, at most 64 px where the model's
    filters follow its input size."""
    kw, size = TINY.get(name, ({}, 64))
    if size > 64:
        kw, size = ({**kw, "input_size": 64} if "input_size" in kw else kw), 64
    return kw, size


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FORWARD else n
                                  for n in list_models()])
def test_every_model_builds_tiny_and_runs_a_forward(name):
    kw, size = _forward_case(name)
    torch.manual_seed(0)
    model = create_model(name, **kw).eval()
    batch = _batch(model, size, n=2)
    with torch.no_grad():
        logit = logits_of(model({k: batch[k] for k in model.spec.inputs}))
    assert logit.shape == (2,) and logit.dtype == torch.float32 and torch.isfinite(logit).all()
    assert model.spec.name == name and set(model.spec.inputs) <= {"image", *VIEWS}


# ------------------------------------------------------------------------------------------- dataset adapters


def _dfd(root: Path, clip: Path, t1) -> ManifestConfig:
    for rel in ("original_sequences/actors/c23/videos/01__kitchen_pan.mp4",
                "original_sequences/actors/c23/videos/02__kitchen_pan.mp4",
                "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__kitchen_pan__ABCD1234.mp4"):
        put(root, rel, clip)
    return ManifestConfig()


def _dfdc(root: Path, clip: Path, t1) -> ManifestConfig:
    for rel in ("dfdc_train_part_0/aaa.mp4", "dfdc_train_part_0/bbb.mp4", "test/t1.mp4", "test/t2.mp4"):
        put(root, rel, clip)
    (root / "dfdc_train_part_0" / "metadata.json").write_text(json.dumps({
        "aaa.mp4": {"label": "REAL", "split": "train", "original": None},
        "bbb.mp4": {"label": "FAKE", "split": "train", "original": "aaa.mp4"}}))
    (root / "test" / "labels.csv").write_text("filename,label\nt1.mp4,1\nt2.mp4,0\n")
    return ManifestConfig(fractions=(1, 1, 0), max_group_share=1.0, both_classes=False)


def _dfdc_preview(root: Path, clip: Path, t1) -> ManifestConfig:
    meta = {"original_videos/111/111_A.mp4": {"label": "real", "set": "train"},
            "method_A/111/111_A/222_A_001.mp4": {"label": "fake", "set": "train", "target_id": "111"}}
    for rel in meta:
        put(root, rel, clip)
    (root / "dataset.json").write_text(json.dumps(meta))
    return ManifestConfig(both_classes=False)


def _deeperforensics(root: Path, clip: Path, t1) -> ManifestConfig:
    ff = root.parent / f"{root.name}_ffpp"
    put(root, "manipulated_videos/end_to_end/000_M101.mp4", clip)
    put(ff, "original_sequences/youtube/c23/videos/000.mp4", clip)
    (root / "lists" / "splits").mkdir(parents=True)
    (root / "lists" / "splits" / "train.txt").write_text("000_M101.mp4\n")
    for s in ("val", "test"):
        (root / "lists" / "splits" / f"{s}.txt").write_text("")
    return ManifestConfig(options={"ffpp_root": str(ff)}, both_classes=False)


def _uadfv(root: Path, clip: Path, t1) -> ManifestConfig:
    for i in range(3):
        put(root, f"real/{i:04d}.mp4", clip)
        put(root, f"fake/{i:04d}_fake.mp4", clip)
    return ManifestConfig(fractions=(1, 1, 1))


def _wilddeepfake(root: Path, clip: Path, t1) -> ManifestConfig:
    _seq(root, "real_train/7/1", t1, n=2)
    _seq(root, "fake_test/9/2", t1, n=2)
    return ManifestConfig(both_classes=False)


def _df40(root: Path, clip: Path, t1) -> ManifestConfig:
    put(root, "simswap/ff/000_003.mp4", clip)
    put(root, "heygen/real/clip_b.mp4", clip)
    _df40_json(root, "simswap_ff", "roop", {"000_003": ("test", "Fake")})
    _df40_json(root, "heygen", "heygen", {"clip_b": ("test", "Real")})
    return ManifestConfig(both_classes=False)


def _folder(root: Path, clip: Path, t1) -> ManifestConfig:
    put(root, "real/x.mp4", clip)
    put(root, "fake/Deepfakes/y.mp4", clip)
    return ManifestConfig()


def _csv(root: Path, clip: Path, t1) -> ManifestConfig:
    put(root, "o.mp4", clip)
    put(root, "f.mp4", clip)
    (root / "manifest.csv").write_text("path,label,split,source_ids\no.mp4,real,train,\nf.mp4,fake,train,o.mp4\n")
    return ManifestConfig()


def _ffpp(root: Path, clip: Path, t1) -> ManifestConfig:
    _ffpp_tree(root, clip)
    return ManifestConfig()


def _celebdf(root: Path, clip: Path, t1) -> ManifestConfig:
    _celebdf_tree(root, clip)
    return ManifestConfig()


TREES = {"ffpp": _ffpp, "dfd": _dfd, "celebdf_v1": _celebdf, "celebdf_v2": _celebdf, "dfdc": _dfdc,
         "dfdc_preview": _dfdc_preview, "deeperforensics": _deeperforensics, "uadfv": _uadfv,
         "wilddeepfake": _wilddeepfake, "df40": _df40, "folder": _folder, "csv": _csv}
"""A tiny tree of each adapter's layout (the adapters' own tests in test_datasets.py check their rules)."""


def test_every_adapter_has_a_tree_here():
    assert {a.name for a in list_adapters()} == set(TREES)


@pytest.mark.parametrize("name", sorted(TREES))
def test_every_adapter_builds_a_manifest_from_a_tiny_tree(name, tmp_path, tiny, t1):  # noqa: F811
    root = tmp_path / name
    root.mkdir()
    cfg = TREES[name](root, tiny, t1)
    df = build_manifest(name, root, "ds", cfg)
    assert df.height >= 2 and set(MANIFEST_SCHEMA) <= set(df.columns)
    assert set(df["label"]) <= {0, 1} and set(df["split"]) <= {"train", "val", "test"}
    assert df["video_id"].n_unique() == df.height


# ------------------------------------------------------------------------------------------------ face detectors

PACKED = {"scrfd", "retinaface"}
"""Detectors whose weights come from an insightface pack under ``model_root`` (none here: offline)."""


def _optional_library(name: str) -> str | None:
    """The Python package a detector needs beyond the core install, if any."""
    return {"dlib_hog": "dlib"}.get(name)


def test_every_face_detector_has_a_case_here():
    assert set(list_face_detectors()) == {"mtcnn", "dlib_hog"} | PACKED


@pytest.mark.parametrize("name", sorted(list_face_detectors()))
def test_every_face_detector_builds_or_says_what_is_missing(name, tmp_path):
    cfg = DetectorConfig(name=name, model_root=str(tmp_path / "empty"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # retinaface's deprecation: tested in test_insight.py
        if name in PACKED:
            with pytest.raises(DetectorError, match=f"no scrfd model pack under {tmp_path / 'empty'}"):
                create_face_detector(cfg)
            _scrfd_like(tmp_path / "models" / "pack" / "det_tiny.onnx")
            cfg = cfg.model_copy(update={"model_root": str(tmp_path / "models")})
        lib = _optional_library(name)
        if lib is not None:
            pytest.importorskip(lib)
        det = create_face_detector(cfg)
    assert isinstance(det, FaceDetector) and det.version
    faces = det.detect(np.zeros((1, 96, 96, 3), np.uint8))
    assert faces == [[]]  # a black frame: no face, and the call contract holds


# ---------------------------------------------------------------------------------------------------- views

VIEW_SHAPES = {"dct": (3, 64, 64), "dct_bands": (9, 64, 64), "block_dct": (64, 8, 8), "fft": (3, 64, 64),
               "phase": (3, 64, 64), "srm": (3, 64, 64)}
"""The shapes ``facepipe.freq``'s docstring documents, for a (3, 64, 64) crop."""


def test_every_view_has_a_documented_shape_here():
    import facepipe.freq

    assert set(VIEW_SHAPES) == set(VIEWS) and len(VIEWS) == len(set(VIEWS))
    for name in VIEWS:
        assert f"``{name}``" in facepipe.freq.__doc__, name


@pytest.mark.parametrize("name", VIEWS)
def test_every_view_has_its_shape_and_dtype_in_numpy_and_torch(name):
    rng = np.random.default_rng(0)
    x = rng.random((3, 64, 64), dtype=np.float32)
    ref = compute_view(name, x, FreqConfig())
    assert ref.shape == VIEW_SHAPES[name] and ref.dtype == np.float32 and np.isfinite(ref).all()
    got = compute_views_torch([name], torch.from_numpy(x)[None], FreqConfig())[name]
    assert tuple(got.shape) == (1, *VIEW_SHAPES[name]) and got.dtype == torch.float32
    np.testing.assert_allclose(got[0].numpy(), ref, rtol=1e-3, atol=1e-3)


# -------------------------------------------------------------------------------------------------------- CLI


def _commands():
    import typer

    from facepipe.cli import app

    def walk(cmd, path):
        yield path
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


@pytest.mark.parametrize("path", _commands(), ids=lambda p: " ".join(p) or "facepipe")
def test_every_command_has_help(path):
    from typer.testing import CliRunner

    from facepipe.cli import app

    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


# ------------------------------------------------------------------------------------- duplicate names


def _model_factory(pretrained=False):
    return torch.nn.Linear(1, 1)


def _other_model_factory(pretrained=False):
    return torch.nn.Linear(1, 1)


def _scan(root, cfg):
    return []


def _detector(cfg, threads=0):
    raise AssertionError("never built")


@pytest.fixture()
def scratch_registries(monkeypatch):
    """Copies of the three registries, so the names registered here are gone afterwards."""
    import facepipe.datasets.base as datasets_base
    import facepipe.faces as faces
    import facepipe.models._registry as models_registry

    monkeypatch.setattr(models_registry, "_REGISTRY", dict(models_registry._REGISTRY))
    monkeypatch.setattr(datasets_base, "_ADAPTERS", dict(datasets_base._ADAPTERS))
    monkeypatch.setattr(faces, "_REGISTRY", dict(faces._REGISTRY))


def test_a_taken_model_name_is_an_error_naming_both(scratch_registries):
    from facepipe.models import ModelSpec, register_model

    with pytest.raises(ConfigError, match=r"model 'xception' is registered twice: by "
                                          r"facepipe\.models\.baselines\.xception .* and by "
                                          r"(tests\.)?test_registries\._model_factory"):
        register_model(ModelSpec("xception"))(_model_factory)
    register_model(ModelSpec("dup_test_net"))(_model_factory)
    register_model(ModelSpec("dup_test_net"))(_model_factory)  # the same definition again: allowed
    with pytest.raises(ConfigError, match="_model_factory .* and by .*_other_model_factory"):
        register_model(ModelSpec("dup_test_net"))(_other_model_factory)
    assert create_model("dup_test_net").spec.name == "dup_test_net"


def test_a_taken_adapter_name_is_an_error_naming_both(scratch_registries):
    from facepipe.datasets import register_adapter

    with pytest.raises(ConfigError, match=r"dataset adapter 'ffpp' is registered twice: by "
                                          r"facepipe\.datasets\.ffpp\.\w+ .* and by (tests\.)?test_registries\._scan"):
        register_adapter("ffpp", "ROOT/...")(_scan)
    register_adapter("dup_test_layout", "ROOT/...")(_scan)
    register_adapter("dup_test_layout", "ROOT/...")(_scan)


def test_a_taken_face_detector_name_is_an_error_naming_both(scratch_registries):
    from facepipe.faces import register_face_detector

    with pytest.raises(ConfigError, match=r"face detector 'mtcnn' is registered twice: by facepipe\.faces\._mtcnn"
                                          r" .* and by (tests\.)?test_registries\._detector"):
        register_face_detector("mtcnn")(_detector)
    register_face_detector("dup_test_detector")(_detector)
    register_face_detector("dup_test_detector")(_detector)


USER_FILE = '''
import torch
from facepipe.models import ModelSpec, register_model


@register_model(ModelSpec("{name}", paper="mine", faithful="mine"))
def net(pretrained=False, width=2):
    return torch.nn.Linear(width, 1)
'''


def test_importing_the_same_model_file_twice_is_allowed_and_another_file_with_the_name_is_not(
        scratch_registries, tmp_path):
    from facepipe.models import import_model_file

    mine = tmp_path / "mine.py"
    mine.write_text(USER_FILE.format(name="dup_user_net"))
    import_model_file(mine)
    import_model_file(mine)  # a new function object from the same file and line: a re-import, not a clash
    assert create_model("dup_user_net", width=3).in_features == 3
    other = tmp_path / "other.py"
    other.write_text(USER_FILE.format(name="dup_user_net"))
    with pytest.raises(ConfigError, match=r"importing the model file failed: ConfigError: model 'dup_user_net' is "
                                          r"registered twice: by .*mine\.py.* and by .*other\.py"):
        import_model_file(other)
