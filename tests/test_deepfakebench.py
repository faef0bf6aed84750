"""DeepfakeBench compatibility: the preset against a straight implementation of DeepfakeBench's recipe on real clips,
export to its layout and JSON (checked the way its loader reads them), import back to shards, Hugging Face datasets."""

from __future__ import annotations

import copy
import csv
import glob
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
from conftest import REAL, needs_real, shard_files

from facepipe.errors import InputError

pytest.importorskip("dlib")

CLIPS = {"ffpp/original_634.mp4": (0, "original", []), "ffpp/FaceSwap_634_660.mp4": (1, "FaceSwap", ["original_634"])}
N_FRAMES = 4


# --- an independent, straight implementation of DeepfakeBench's preprocess.py (commit 8a4a7bf) -------------------
# scripts/deepfakebench_reference.py (it imports nothing from facepipe; also the baseline of scripts/bench_extract.py)

_REF = Path(__file__).resolve().parents[1] / "scripts" / "deepfakebench_reference.py"
_spec = importlib.util.spec_from_file_location("deepfakebench_reference", _REF)
dfb_ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dfb_ref)


def _dfb_video(path: Path, n: int):
    return dfb_ref.video_faces(path, n)


# --- fixtures ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def preset_run(tmp_path_factory):
    """The preset over two real FF++ c23 clips (a FaceSwap fake and its target), with FF++ labels and split."""
    if not REAL.is_dir():
        pytest.skip(f"real test media not present at {REAL}")
    from facepipe.stages import extract, shard
    from facepipe.stages.extract import ExtractConfig

    root = tmp_path_factory.mktemp("dfb")
    videos = root / "videos"
    videos.mkdir()
    rows = []
    for rel, (label, method, sources) in CLIPS.items():
        (videos / Path(rel).name).symlink_to(REAL / "videos" / rel)
        rows.append({"path": Path(rel).name, "label": label, "split": "test", "method": method,
                     "source_ids": ";".join(sources), "dataset": "ffpp", "video_id": Path(rel).stem})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = ExtractConfig.model_validate({"align": {"preset": "deepfakebench"}, "sampling": {"num_frames": N_FRAMES},
                                        "workers": 0})
    extract.run(videos, root / "extract", cfg, progress=False, manifest=root / "manifest.csv")
    shard.run(root / "shards", shard.ShardConfig(inputs=(shard.ShardInput(
        dataset="ffpp", extract=str(root / "extract"), manifest=str(root / "manifest.csv")),)), progress=False)
    return root


def _samples(shards: Path) -> dict[str, dict]:
    import webdataset as wds

    tars = sorted(glob.glob(str(shard_files(shards) / "*.tar")))
    return {s["__key__"]: s for s in wds.WebDataset(tars, shardshuffle=False, empty_check=False)}


# --- 1. the preset --------------------------------------------------------------------------------------------------

@needs_real
def test_preset_equals_a_straight_deepfakebench_implementation(preset_run):
    """Frame indices are DeepfakeBench's formula over OpenCV's header count; crops equal a straight implementation of
    its recipe within 1 grey level (float32 vs float64 similarity matrices); five points and the 68 landmarks
    re-detected on the crop are identical."""
    faces = pl.read_parquet(preset_run / "extract" / "faces.parquet")
    assert set(faces["preset"]) == {"deepfakebench-68"} and set(faces["track_id"]) == {0}  # the 68-point model
    assert faces["detector"].unique().to_list() == ["dlib_hog"]
    for rel, (label, _, _) in CLIPS.items():
        vid = Path(rel).stem
        mine = faces.filter(pl.col("video_id") == vid).sort("frame_index")
        idxs, ref = _dfb_video(REAL / "videos" / rel, N_FRAMES)
        assert mine["frame_index"].to_list() == [int(i) for i in idxs if ref[int(i)] is not None]
        assert set(mine["label"]) == {label} and set(mine["label_source"]) == {"video"}
        for r in mine.iter_rows(named=True):
            crop, lm68, src5 = ref[r["frame_index"]]
            got = cv2.imread(str(preset_run / "extract" / r["crop_path"]))
            diff = np.abs(got.astype(int) - crop.astype(int))
            assert diff.max() <= 1 and diff.mean() < 0.01, (vid, r["frame_index"], diff.max(), diff.mean())
            np.testing.assert_array_equal(np.asarray(r["landmarks"]), src5)
            np.testing.assert_array_equal(np.asarray(r["crop_landmarks"]), lm68)


@needs_real
def test_the_benchmark_variant_without_the_second_dlib_pass_keeps_the_crops():
    """bench_extract's "no second dlib pass" row: the same crops as the recipe, the crop's 68 landmarks mapped from
    the frame's instead of re-detected (within a few pixels of them), so it is a fair faster baseline."""
    path = REAL / "videos" / "ffpp" / "original_634.mp4"
    det, pred = dfb_ref.models()
    _, recipe = dfb_ref.video_faces(path, 3, det, pred)
    _, variant = dfb_ref.video_faces(path, 3, det, pred, redetect=False)
    assert recipe.keys() == variant.keys() and all(r is not None for r in recipe.values())
    for i, (crop, lm, src) in recipe.items():
        crop_v, lm_v, src_v = variant[i]
        np.testing.assert_array_equal(crop, crop_v)
        np.testing.assert_array_equal(src, src_v)
        assert lm_v.shape == (68, 2) and np.median(np.abs(lm - lm_v)) <= 3

@needs_real
def test_preset_frame_count_from_the_header(real_manifest):
    """frame_count header: indices over OpenCV's CAP_PROP_FRAME_COUNT for every shared clip that decodes."""
    from facepipe.video import FrameSampler, SamplingConfig, probe

    cfg = SamplingConfig(num_frames=32, frame_count="header")
    for rel in ("videos/ffpp/NeuralTextures_004_982.mp4", "videos/dfdc/brtujopkby.mp4",
                "videos/misc/short_hamilton_clip.mp4"):
        path = REAL / rel
        n = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
        sampler = FrameSampler(path, probe(path), cfg)
        got = np.concatenate([c.indices for c in sampler])
        want = np.unique(np.linspace(0, n - 1, 32, endpoint=True, dtype=int))
        np.testing.assert_array_equal(got, want[want < sampler.frames_decodable])


def test_preset_overrides_its_sections():
    from facepipe.stages.extract import ExtractConfig

    cfg = ExtractConfig.model_validate({"align": {"preset": "deepfakebench"}, "face_detector": {"name": "mtcnn"},
                                        "sampling": {"num_frames": 8}, "track": {"select": "all"}})
    assert (cfg.face_detector.name, cfg.face_detector.min_score, cfg.sampling.frame_count, cfg.sampling.num_frames,
            cfg.track.select, cfg.align.size, cfg.align.margin) == ("dlib_hog", 0.0, "header", 8, "largest", 256, 1.3)


# --- 2. export ------------------------------------------------------------------------------------------------------

DFB_LABEL_DICT = {"FF-real": 0, "FF-DF": 1, "FF-F2F": 1, "FF-FS": 1, "FF-NT": 1, "FF-FH": 1}  # train_config.yaml
FF_FAMILY = {"FaceForensics++", "DeepFakeDetection", "FaceShifter", "FF-DF", "FF-F2F", "FF-FS", "FF-NT"}


def _dfb_loader(json_path: Path, rgb_dir: Path, compression: str = "c23"):
    """What DeepfakeBench's abstract_dataset does with a dataset JSON, for every split: labels through label_dict,
    frames sorted by int(stem), paths starting with '.' used as they are (rgb_dir here stands for ./datasets/rgb),
    masks at frames->masks, landmarks at frames->landmarks + .npy."""
    name = json_path.stem
    info = json.loads(json_path.read_text())
    frames = []
    for label in info[name]:
        for mode in ("train", "val", "test"):
            sub = info[name][label][mode]
            if name in FF_FAMILY:
                sub = sub[compression]
            for video, vinfo in sub.items():
                lab = DFB_LABEL_DICT[vinfo["label"]]
                paths = sorted(vinfo["frames"], key=lambda x: int(x.split("/")[-1].split(".")[0]))
                for p in paths:
                    assert p.startswith("./datasets/rgb/")
                    local = rgb_dir / p[len("./datasets/rgb/"):]
                    frames.append((mode, label, video, lab, local, Path(str(local).replace("frames", "masks")),
                                   Path(str(local).replace("frames", "landmarks").replace(".png", ".npy"))))
    return frames


@needs_real
def test_export_follows_deepfakebench_layout(preset_run, tmp_path):
    from facepipe import deepfakebench as dfb
    from facepipe.data.schema import decode_image

    out = tmp_path / "dfb"
    s = dfb.export(dfb.faces_from_shards(str(preset_run / "shards")), out, progress=False)
    assert s.frames == pl.read_parquet(preset_run / "extract" / "faces.parquet").height
    frames = _dfb_loader(out / "dataset_json" / "FaceForensics++.json", out / "rgb")
    assert len(frames) == s.frames
    samples = {(json.loads(x["json"])["video_id"], json.loads(x["json"])["frame_index"]): x
               for x in _samples(preset_run / "shards").values()}
    for mode, label, video, lab, img, mask, lm in frames:
        assert mode == "test" and label == ("FF-FS" if lab else "FF-real")
        sample = samples[(video, int(img.stem))]
        np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(img)), cv2.COLOR_BGR2RGB),
                                      decode_image(sample["png"], "png"))
        meta = json.loads(sample["json"])
        assert meta["label"] == lab
        points = np.load(lm)
        assert points.shape == (68, 2) and points.dtype == np.int64
        np.testing.assert_array_equal(points, np.asarray(meta["crop_landmarks"]))
        assert mask.is_file() == (lab == 1)  # masks: the fake compared with its original
        if lab:
            assert cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE).max() == 255
    labels = (out / "label_dict.yaml").read_text()
    assert "FF-FS: 1" in labels and "FF-real: 0" in labels


def test_export_refuses_names_deepfakebench_would_mangle(tmp_path):
    from facepipe import deepfakebench as dfb

    face = dfb.Face("example", "my_frames_video", "train", "original", 0, 0, 0, 0, b"x", "png", None, None, [])
    with pytest.raises(InputError, match="frames"):
        dfb.export(iter([face]), tmp_path, progress=False)


# --- 3. import ------------------------------------------------------------------------------------------------------

@needs_real
def test_round_trip_preset_export_import(preset_run, tmp_path):
    """preset extraction -> shards -> export -> import: the same samples, labels, splits, ids, crops, masks."""
    from facepipe import deepfakebench as dfb

    out = tmp_path / "dfb"
    dfb.export(dfb.faces_from_shards(str(preset_run / "shards")), out, progress=False)
    s = dfb.import_json([out / "dataset_json" / "FaceForensics++.json"], out / "rgb", tmp_path / "shards",
                        progress=False)
    assert s.masks == N_FRAMES and s.landmarks == 2 * N_FRAMES
    before, after = _samples(preset_run / "shards"), _samples(tmp_path / "shards")
    assert sorted(before) == sorted(after)
    for key, a in before.items():
        b = after[key]
        ma, mb = json.loads(a["json"]), json.loads(b["json"])
        for f in ("label", "video_label", "split", "method", "video_id", "frame_index", "track_id", "dataset",
                  "source_ids", "crop_landmarks", "preset", "has_mask"):
            assert ma[f] == mb[f], (key, f)
        assert a["png"] == b["png"] and a["cls"] == b["cls"]
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(a["mask.png"], np.uint8), 0),
                                      cv2.imdecode(np.frombuffer(b["mask.png"], np.uint8), 0))


def _plain_json(out: Path) -> dict:
    """The export's JSON as DeepfakeBench writes it: no facepipe entries, FF++ video names."""
    data = json.loads((out / "dataset_json" / "FaceForensics++.json").read_text())
    ff = data["FaceForensics++"]
    for label, new in (("FF-real", "634"), ("FF-FS", "634_660")):
        videos = ff[label]["test"]["c23"]
        (_, entry), = videos.items()
        entry.pop("facepipe")
        videos.clear()
        videos[new] = entry
    return data


@needs_real
def test_import_plain_deepfakebench_json(preset_run, tmp_path):
    """Without facepipe's entries: ids from label name and video, methods from label names, FF++ pairs linked to
    their originals, the dataset named after facepipe's adapter."""
    from facepipe import deepfakebench as dfb

    out = tmp_path / "dfb"
    dfb.export(dfb.faces_from_shards(str(preset_run / "shards")), out, progress=False)
    plain = tmp_path / "FaceForensics++.json"
    plain.write_text(json.dumps(_plain_json(out)))
    dfb.import_json([plain], out / "rgb", tmp_path / "shards", progress=False)
    metas = [json.loads(s["json"]) for s in _samples(tmp_path / "shards").values()]
    fakes = [m for m in metas if m["label"] == 1]
    assert {m["video_id"] for m in metas} == {"FF-real-634", "FF-FS-634_660"}
    assert {m["method"] for m in fakes} == {"FaceSwap"} and {m["dataset"] for m in metas} == {"ffpp"}
    assert all(m["source_ids"] == ["FF-real-634"] for m in fakes)
    assert len(metas) == 2 * N_FRAMES and all(m["split"] == "test" for m in metas)


@needs_real
def test_import_bad_input_names_the_entries(preset_run, tmp_path):
    from facepipe import deepfakebench as dfb

    out = tmp_path / "dfb"
    dfb.export(dfb.faces_from_shards(str(preset_run / "shards")), out, progress=False)
    base = _plain_json(out)

    def attempt(data: dict, match: str, **kw):
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(data))
        with pytest.raises(InputError, match=match):
            dfb.import_json([p], out / "rgb", tmp_path / "never", progress=False, **kw)
        assert not (tmp_path / "never" / "index.json").exists()

    unknown = copy.deepcopy(base)
    unknown["FaceForensics++"]["FF-FS"]["test"]["c23"]["634_660"]["label"] = "FF-XX"
    attempt(unknown, r"unknown DeepfakeBench label name.*'FF-XX'.*FaceForensics\+\+/FF-FS/test/634_660")
    two = copy.deepcopy(base)  # DeepfakeBench's DFD quirk: the same video listed in train and test
    two["FaceForensics++"]["FF-real"]["train"]["c23"]["634"] = two["FaceForensics++"]["FF-real"]["test"]["c23"]["634"]
    attempt(two, r"two splits.*ffpp:FF-real-634 in FaceForensics\+\+/FF-real/test, FaceForensics\+\+/FF-real/train")
    missing = copy.deepcopy(base)
    frames = missing["FaceForensics++"]["FF-real"]["test"]["c23"]["634"]["frames"]
    frames[0] = frames[0].replace("000.png", "999.png")
    attempt(missing, r"1 frame file\(s\) missing.*FF-real/test/634: .*999.png")
    frames[0] = frames[0].replace("999.png", "first.png")
    attempt(missing, r"unusable frame file.*FF-real/test/634: .*first.png \(stem is not a frame index\)")
    attempt(base, r"no compression level 'c40'", compression="c40")
    # the label names to import can be chosen (and the rest skipped)
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(two))
    s = dfb.import_json([p], out / "rgb", tmp_path / "only_fakes", only=["FF-FS"], progress=False)
    assert s.frames == N_FRAMES


# --- 4. Hugging Face datasets -------------------------------------------------------------------------------------

def test_hugging_face_datasets_loads_shards(example_shards, tmp_path, monkeypatch):
    """Every sample carries the same members (mask.png included), so datasets' webdataset builder reads the set;
    hf_features makes it independent of which samples come first (nullable fields)."""
    datasets = pytest.importorskip("datasets")
    import webdataset as wds

    from facepipe.data import hf_features

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    index = json.loads((example_shards / "index.json").read_text())
    files = {split: [str(example_shards / s["url"]) for s in info["shards"]]
             for split, info in index["splits"].items() if info["shards"]}
    ds = datasets.load_dataset("webdataset", data_files=files, cache_dir=str(tmp_path / "hf"))
    for split, info in index["splits"].items():
        if not info["shards"]:
            continue
        assert ds[split].num_rows == info["samples"]
        row = ds[split][0]
        assert row["png"].size == (64, 64) and row["mask.png"].size == (64, 64)
        assert row["cls"] == row["json"]["label"]
        for r in ds[split]:
            if r["json"]["has_mask"]:
                assert r["json"]["label_source"] == "original_diff" and np.asarray(r["mask.png"]).max() == 255
            else:
                assert np.asarray(r["mask.png"]).max() == 0
    # reals first: inference from the first five samples alone types manipulation_score as null
    samples = [s for u in files["train"] for s in wds.WebDataset(u, shardshuffle=False, empty_check=False)]
    samples.sort(key=lambda s: (s["json"].find(b'"manipulation_score":null') < 0, s["__key__"]))
    assert json.loads(samples[0]["json"])["manipulation_score"] is None
    assert any(json.loads(s["json"])["manipulation_score"] is not None for s in samples)
    tar = tmp_path / "reordered.tar"
    with wds.TarWriter(str(tar)) as w:
        for s in samples:
            w.write({k: v for k, v in s.items() if not k.startswith("__") or k == "__key__"})
    with pytest.raises(Exception, match="(?i)generat|cast"):
        datasets.load_dataset("webdataset", data_files={"train": [str(tar)]}, cache_dir=str(tmp_path / "hf2"))
    ds2 = datasets.load_dataset("webdataset", data_files={"train": [str(tar)]}, cache_dir=str(tmp_path / "hf3"),
                                features=hf_features(example_shards))
    assert ds2["train"].num_rows == len(samples)
    assert [r["json"]["manipulation_score"] for r in ds2["train"]][-1] is not None


# --- 5. the predictor, export's method names, import's dataset names -----------------------------------------------

def _tiny_81_point_model(path: Path, image: np.ndarray) -> Path:
    """A deliberately crude 81-point dlib shape predictor (one tree, trained on ``image``'s faces: the 68-point
    model's points plus 13 made-up forehead points), standing in for DeepfakeBench's file, which is not available
    offline: it exercises the 81-point code path, not DeepfakeBench's landmark quality."""
    import dlib

    from facepipe.faces.dlib68 import predictor_path

    det, pred = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(predictor_path()))
    objs = []
    for r in det(image, 1):
        s = pred(image, r)
        forehead = [dlib.point(int(r.left() + r.width() * k // 12), int(r.top() - 5)) for k in range(13)]
        objs.append(dlib.full_object_detection(r, [s.part(i) for i in range(68)] + forehead))
    o = dlib.shape_predictor_training_options()
    o.tree_depth, o.cascade_depth, o.num_trees_per_cascade_level, o.oversampling_amount = 1, 1, 1, 1
    o.feature_pool_size, o.num_test_splits = 8, 2
    dlib.train_shape_predictor([image], [objs], o).save(str(path))
    return path


@pytest.fixture(scope="module")
def tom_clip(tmp_path_factory):
    from facepipe.stages.example import camera_frames, package_photo, write_video

    d = tmp_path_factory.mktemp("tom")
    canvas = np.full((360, 640, 3), 100, np.uint8)
    canvas[68:292, 208:432] = cv2.resize(package_photo("Tom_Hanks_54745.png"), (224, 224),
                                         interpolation=cv2.INTER_CUBIC)
    write_video(d / "videos" / "tom.mp4", camera_frames(canvas, (640, 360), 6, (310, 180, 1.0), (320, 182, 1.05)),
                fps=10)
    return d


@pytest.mark.slow
def test_preset_records_its_predictor_and_loads_the_81_point_one(tom_clip, t1, tmp_path):
    """Without --dlib-81 the 68-point stand-in labels rows deepfakebench-68 (68 crop landmarks); with an 81-point
    model named, rows say deepfakebench, the five points are parts 37, 44, 30, 49, 55 of the 81-point shape (as
    DeepfakeBench's get_keypts takes them) and the crop landmarks are all 81 points (as it saves them)."""
    from facepipe.faces.dlib68 import DFB_FIVE_PARTS, DlibHOG
    from facepipe.stages import extract
    from facepipe.stages.extract import ExtractConfig

    def run(out, **detector):
        cfg = ExtractConfig.model_validate({"align": {"preset": "deepfakebench"}, "sampling": {"num_frames": 3},
                                            "face_detector": detector, "workers": 0})
        extract.run(tom_clip / "videos", out, cfg, progress=False)
        return pl.read_parquet(out / "faces.parquet")

    f68 = run(tmp_path / "x68")
    assert f68.height and set(f68["preset"]) == {"deepfakebench-68"}
    assert {len(c) for c in f68["crop_landmarks"]} == {68}
    model = _tiny_81_point_model(tmp_path / "sp81.dat", t1)
    f81 = run(tmp_path / "x81", dlib_81=str(model))
    assert f81.height and set(f81["preset"]) == {"deepfakebench"}
    assert {len(c) for c in f81["crop_landmarks"]} == {81}
    assert set(f81["detector_version"]) != set(f68["detector_version"])
    det = DlibHOG(predictor=model)
    assert det.n_points == 81 and det.preset_name == "deepfakebench"
    (faces,) = det.detect(t1[None])
    for face, (rect, _) in zip(faces, det.rects(t1)):
        shape = det.shape(t1, rect)
        assert shape.shape == (81, 2)
        np.testing.assert_array_equal(face.landmarks, shape[list(DFB_FIVE_PARTS)].astype(np.float32))


def test_dlib_81_path_errors_are_clear(tom_clip, tmp_path):
    from pydantic import ValidationError

    from facepipe.errors import DetectorError
    from facepipe.faces.config import DetectorConfig
    from facepipe.faces.dlib68 import predictor_path
    from facepipe.stages import extract
    from facepipe.stages.extract import ExtractConfig

    for path, words in [(tmp_path / "nowhere" / "shape_predictor_81_face_landmarks.dat", "no such file"),
                        (predictor_path(), "a 68-point shape predictor")]:
        cfg = ExtractConfig.model_validate({"align": {"preset": "deepfakebench"}, "face_detector": {"dlib_81": str(path)},
                                            "workers": 0})
        with pytest.raises(DetectorError, match=words) as e:
            extract.run(tom_clip / "videos", tmp_path / "out", cfg, progress=False)
        assert str(path) in str(e.value) and "shape_predictor_81_face_landmarks.dat" in str(e.value)
        assert not (tmp_path / "out" / "faces.parquet").exists()
    with pytest.raises(ValidationError, match="dlib_hog"):
        DetectorConfig(name="mtcnn", dlib_81="x.dat")


def _png_face(dataset, video_id, label, method, frame=0):
    from facepipe import deepfakebench as dfb

    ok, buf = cv2.imencode(".png", np.full((8, 8, 3), 128, np.uint8))
    return dfb.Face(dataset, video_id, "test", method, label, label, frame, 0, buf.tobytes(), "png", None, None, [])


def test_export_refuses_a_method_it_cannot_name_unless_mapped(tmp_path):
    """--adapter shared_real=ffpp: FF++'s naming has a label name per method, none for DFDC; such fakes are refused
    (named, with the fix) instead of landing under FF-DF, unless --method-map says where they go."""
    from facepipe import deepfakebench as dfb

    faces = [_png_face("shared_real", "ffpp-original_634", 0, "original"),
             _png_face("shared_real", "ffpp-FaceSwap_634_660", 1, "FaceSwap"),
             _png_face("shared_real", "dfdc-brtujopkby", 1, "DFDC")]
    adapters = {"shared_real": "ffpp"}
    with pytest.raises(InputError, match=r"1 fake face\(s\) of dataset 'shared_real' with method 'DFDC'.*--method-map"):
        dfb.export(iter(faces), tmp_path / "a", adapters=adapters, progress=False)
    assert not (tmp_path / "a" / "dataset_json").exists()
    with pytest.raises(InputError, match="real label name"):
        dfb.export(iter(faces), tmp_path / "b", adapters=adapters, method_map={"DFDC": "FF-real"}, progress=False)
    s = dfb.export(iter(faces), tmp_path / "c", adapters=adapters, method_map={"DFDC": "DFDC_Fake"}, progress=False)
    ff = json.loads((tmp_path / "c" / "dataset_json" / "FaceForensics++.json").read_text())["FaceForensics++"]
    assert list(ff["DFDC_Fake"]["test"]["c23"]) == ["dfdc-brtujopkby"]
    assert list(ff["FF-FS"]["test"]["c23"]) == ["ffpp-FaceSwap_634_660"] and "FF-DF" not in ff
    assert s.label_dict == {"FF-real": 0, "FF-FS": 1, "DFDC_Fake": 1}


def test_import_checks_the_facepipe_dataset_name(tmp_path):
    """A dataset name that cannot be part of a sample key is refused, naming it, before any frame is read."""
    from facepipe import deepfakebench as dfb
    from facepipe.ids import IdError

    data = {"UADFV": {"UADFV_Real": {"train": {"v1": {"label": "UADFV_Real", "frames": ["./datasets/rgb/v1/000.png"]}},
                                     "val": {}, "test": {}}}}
    p = tmp_path / "UADFV.json"
    p.write_text(json.dumps(data))
    with pytest.raises(IdError, match=r"dataset 'my\.uadfv' cannot be part of a sample key"):
        dfb.import_json([p], tmp_path, tmp_path / "shards", dataset_names={"UADFV": "my.uadfv"}, progress=False)


@needs_real
def test_shard_index_records_the_preset(preset_run):
    """The set's index says which predictor made every crop (so training can follow DeepfakeBench's 256 px)."""
    index = json.loads((preset_run / "shards" / "index.json").read_text())
    assert index["preset"] == "deepfakebench-68" and index["crop_size"] == 256


@pytest.mark.slow
def test_train_on_deepfakebench_shards_defaults_to_256(example_shards, tmp_path):
    """DeepfakeBench trains at 256 px (its xception/recce/f3net configs: resolution 256) where the zoo's input sizes
    differ (resnet18: 224): on a set whose index says preset deepfakebench, train.image_size unset means 256."""
    import shutil

    from facepipe.models import get_spec
    from facepipe.stages.train import TrainConfig
    from facepipe.stages.train import run as run_train
    from facepipe.train.engine import load_checkpoint

    shards = tmp_path / "shards"
    shutil.copytree(example_shards, shards)
    index = json.loads((shards / "index.json").read_text())
    (shards / "index.json").write_text(json.dumps({**index, "preset": "deepfakebench"}))
    assert get_spec("resnet18").input_size != 256
    cfg = TrainConfig(model="resnet18", batch_size=4, steps=1, eval_every=1, checkpoint_every=1, num_workers=0)
    run_train(shards, tmp_path / "run", cfg, progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt", "resnet18")["image_size"] == 256


def test_export_landmarks_refuses_faces_without_them(tmp_path):
    """--landmarks: a face without 68-point landmarks is an error naming it and the preset that makes them (no JSON
    written), instead of DeepfakeBench's with_landmark reading zeros; without it the faces export, and the CLI says
    that no landmark file was written."""
    from typer.testing import CliRunner

    from facepipe import deepfakebench as dfb
    from facepipe.cli import app

    faces = [_png_face("shared_real", "ffpp-original_634", 0, "original"),
             _png_face("shared_real", "ffpp-FaceSwap_634_660", 1, "FaceSwap")]
    with pytest.raises(InputError, match=r"ffpp-original_634 frame 0: no 68-point landmarks.*--preset deepfakebench"):
        dfb.export(iter(faces), tmp_path / "a", adapters={"shared_real": "ffpp"}, landmarks=True, progress=False)
    assert not (tmp_path / "a" / "dataset_json").exists()
    s = dfb.export(iter(faces), tmp_path / "b", adapters={"shared_real": "ffpp"}, progress=False)
    assert s.frames == 2 and s.landmarks == 0
    r = CliRunner().invoke(app, ["export", "deepfakebench", "--help"])
    assert "no validation mode" in " ".join(r.output.split()) and "--landmarks" in r.output
