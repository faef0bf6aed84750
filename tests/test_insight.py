"""The insightface adapter on a real ONNX session: a tiny SCRFD-layout model built here.

The model has SCRFD's nine outputs (scores, box distances, keypoint offsets for strides 8/16/32,
two anchors). Its stride-32 score is high where the *red* channel of the RGB input it receives is
bright, so the test also catches an RGB/BGR mix-up in the adapter (insightface expects BGR and swaps).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from facepipe.errors import DetectorError
from facepipe.faces import create_face_detector, resolve_detector_name
from facepipe.faces.config import DetectorConfig

KPS = np.array([[-0.4, -0.2], [0.4, -0.2], [0.0, 0.1], [-0.3, 0.5], [0.3, 0.5]], np.float32)


def _scrfd_like(path):
    nodes, inits, outs = [], [], {}
    inits.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
    inits.append(helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0]))
    inits.append(helper.make_tensor("shape_k1", TensorProto.INT64, [2], [-1, 1]))
    inits.append(helper.make_tensor("dist", TensorProto.FLOAT, [1, 4], [1.0, 1.0, 1.0, 1.0]))
    inits.append(helper.make_tensor("kps", TensorProto.FLOAT, [1, 10], KPS.reshape(-1).tolist()))
    inits.append(helper.make_tensor("starts", TensorProto.INT64, [1], [0]))
    inits.append(helper.make_tensor("ends", TensorProto.INT64, [1], [1]))
    inits.append(helper.make_tensor("axes", TensorProto.INT64, [1], [1]))
    nodes.append(helper.make_node("Slice", ["input.1", "starts", "ends", "axes"], ["red"]))
    for s in (8, 16, 32):
        nodes += [
            helper.make_node("AveragePool", ["red"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]),
            helper.make_node("Mul", [f"p{s}", "gain"], [f"g{s}"]),
            helper.make_node("Sigmoid", [f"g{s}"], [f"sg{s}"]),
            helper.make_node("Transpose", [f"sg{s}"], [f"t{s}"], perm=[0, 2, 3, 1]),
            helper.make_node("Reshape", [f"t{s}", "shape_k1"], [f"k{s}"]),
            helper.make_node("Concat", [f"k{s}", f"k{s}"], [f"a{s}"], axis=1),  # two anchors per cell
            helper.make_node("Reshape", [f"a{s}", "shape_k1"], [f"raw{s}"]),
        ]
        if s == 32:
            nodes.append(helper.make_node("Identity", [f"raw{s}"], [f"score{s}"]))
        else:
            nodes.append(helper.make_node("Mul", [f"raw{s}", "zero"], [f"score{s}"]))
        nodes += [
            helper.make_node("Mul", [f"raw{s}", "zero"], [f"z{s}"]),
            helper.make_node("Add", [f"z{s}", "dist"], [f"bbox{s}"]),
            helper.make_node("Add", [f"z{s}", "kps"], [f"kps{s}"]),
        ]
        outs[s] = [f"score{s}", f"bbox{s}", f"kps{s}"]
    width = (1, 4, 10)
    outputs = [helper.make_tensor_value_info(outs[s][i], TensorProto.FLOAT, [f"K{s}", width[i]])
               for i in range(3) for s in (8, 16, 32)]
    graph = helper.make_graph(
        nodes, "scrfd_like",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "H", "W"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def model_root(tmp_path):
    _scrfd_like(tmp_path / "models" / "buffalo_test" / "det_test.onnx")
    return tmp_path / "models"


def test_auto_prefers_a_local_pack_and_maps_boxes_back(model_root):
    cfg = DetectorConfig(name="auto", model_root=str(model_root), max_side=320, min_score=0.5)
    assert resolve_detector_name(cfg) == "scrfd"
    det = create_face_detector(cfg)
    assert det.name == "scrfd" and det.version.startswith("buffalo_test/det_test+insightface-")
    # 640x640 RGB frame, a red 32x32 cell at row 5, col 7 of the stride-32 grid *at detection scale*
    # (320 px); the frame is downscaled by 2 before detection.
    frame = np.zeros((640, 640, 3), np.uint8)
    frame[2 * 160:2 * 192, 2 * 224:2 * 256, 0] = 255
    faces = det.detect(frame[None])[0]
    assert len(faces) == 1
    # SCRFD anchors sit at cell corners: (224, 160) at 320 px; box = anchor -/+ 1 stride; x2 back to 640.
    np.testing.assert_allclose(faces[0].box, 2 * np.array([192, 128, 256, 192]), atol=1.0)
    np.testing.assert_allclose(faces[0].landmarks, 2 * (np.array([224, 160]) + 32 * KPS), atol=1.0)
    # Blue instead of red: nothing (the adapter must hand insightface BGR).
    blue = np.zeros_like(frame)
    blue[2 * 160:2 * 192, 2 * 224:2 * 256, 2] = 255
    assert det.detect(blue[None])[0] == []


def test_named_insightface_detector_without_pack_says_where_it_looked(tmp_path):
    with pytest.raises(DetectorError, match=f"no scrfd model pack under {tmp_path}"):
        create_face_detector(DetectorConfig(name="scrfd", model_root=str(tmp_path)))
    assert resolve_detector_name(DetectorConfig(name="auto", model_root=str(tmp_path))) == "mtcnn"


def test_retinaface_is_a_deprecated_name_of_scrfd_and_says_so(model_root):
    """insightface has no RetinaFace decoder for pack files (every detection ONNX goes to its SCRFD class) and no
    pack ships a RetinaFace network: the old name loads SCRFD, warns that it does, and the rows say scrfd."""
    from facepipe.faces.insight import find_detector_model

    cfg = DetectorConfig(name="retinaface", model_root=str(model_root), max_side=320, min_score=0.5)
    with pytest.warns(FutureWarning, match="'retinaface' is deprecated and loads SCRFD.*Use 'scrfd'"):
        det = create_face_detector(cfg)
    assert det.name == "scrfd" and det.model_file == find_detector_model("scrfd", model_root)
    assert find_detector_model("retinaface", model_root) == find_detector_model("scrfd", model_root)
