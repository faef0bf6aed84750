from __future__ import annotations

import cv2
import numpy as np
import pytest

from facepipe.errors import DetectorError
from facepipe.faces import create_face_detector, list_face_detectors
from facepipe.faces.align import (
    arcface_template,
    box_matrix,
    face_matrix,
    similarity_matrix,
    transform_points,
    warp_crop,
)
from facepipe.faces.base import FaceDetector
from facepipe.faces.config import AlignConfig, TrackConfig
from facepipe.faces.track import link_tracks
from facepipe.faces.types import Face
from tests.conftest import REAL, needs_real


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_mtcnn_finds_the_six_faces_of_t1(mtcnn, t1):
    faces = mtcnn.detect([t1])[0]
    assert len(faces) == 6
    for f in faces:
        le, re, nose, lm, rm = f.landmarks
        x1, y1, x2, y2 = f.box
        assert le[0] < re[0] and lm[0] < rm[0]  # subject's left/right as seen in the image
        assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1]) + 5
        assert np.all((f.landmarks >= [x1 - 5, y1 - 5]) & (f.landmarks <= [x2 + 5, y2 + 5]))
        assert f.score >= 0.95 and 40 < f.size_px < 250


def test_mtcnn_batch_equals_single(mtcnn, t1):
    a = t1[:400, :640].copy()
    b = t1[400:800, 640:1280].copy()
    single = [mtcnn.detect([x])[0] for x in (a, b)]
    batched = mtcnn.detect(np.stack([a, b]))
    for s, bt in zip(single, batched):
        assert len(s) == len(bt)
        for fs, fb in zip(s, bt):
            np.testing.assert_allclose(fs.box, fb.box, atol=1e-3)


def test_downscaled_detection_maps_back_to_source_pixels(t1):
    from facepipe.faces.mtcnn import MTCNN

    full = MTCNN(max_side=1280).detect([t1])[0]
    small = MTCNN(max_side=640).detect([t1])[0]
    assert len(full) == len(small) == 6
    cf = np.array(sorted(((f.box[:2] + f.box[2:]) / 2).tolist() for f in full))
    cs = np.array(sorted(((f.box[:2] + f.box[2:]) / 2).tolist() for f in small))
    np.testing.assert_allclose(cf, cs, atol=8)  # same faces, in full-resolution coordinates


@needs_real
@pytest.mark.parametrize("name,count", [("faces/multiface.jpg", 6), ("faces/two_people.jpg", 2),
                                        ("faces/dlib_2007_007763.jpg", 7), ("noface/horses.jpg", 0),
                                        ("noface/no_face.jpg", 0)])
def test_mtcnn_counts_on_real_photos(mtcnn, name, count):
    assert len(mtcnn.detect([_rgb(REAL / "images" / name)])[0]) == count


def test_unknown_detector_lists_close_matches():
    with pytest.raises(DetectorError, match="did you mean mtcnn"):
        create_face_detector("mtcn")
    assert {"mtcnn", "scrfd", "retinaface"} <= set(list_face_detectors())


def test_similarity_recovers_a_known_transform():
    tmpl = arcface_template(256, 1.3)
    ang, s, t = np.deg2rad(20), 0.7, np.array([300.0, 120.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    src = ((tmpl - 128) / s) @ r.T + t  # landmarks of a rotated, scaled face in a frame
    m = similarity_matrix(src, 256, 1.3)
    np.testing.assert_allclose(transform_points(src, m), tmpl, atol=1e-6)


def test_similarity_equals_scikit_image_umeyama():
    """The in-house Umeyama estimate equals scikit-image's (the reference it replaced) on random, face-like,
    collinear and mirrored point sets, and refuses degenerate ones."""
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(0)
    tmpl = arcface_template(256, 1.3)
    for i in range(300):
        src = rng.uniform(0, 1000, (5, 2))
        if i % 3 == 0:
            src = arcface_template(112, 1.0) * rng.uniform(0.5, 5) + rng.uniform(0, 500, 2) + rng.normal(0, 3, (5, 2))
        if i % 7 == 0:
            src[:, 1] = src[:, 0] * 0.5 + 3
        if i % 11 == 0:
            src[:, 0] *= -1
        if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            est = SimilarityTransform.from_estimate(src, tmpl)
        else:
            est = SimilarityTransform()
            est.estimate(src, tmpl)
        np.testing.assert_allclose(similarity_matrix(src, 256, 1.3), est.params[:2], rtol=1e-9, atol=1e-9)
    for bad in (np.full((5, 2), 7.0), np.full((5, 2), np.nan)):
        with pytest.raises(ValueError, match="degenerate"):
            similarity_matrix(bad, 256)


def test_box_matrix_square_and_centred():
    m = box_matrix(np.array([100, 50, 180, 170]), 200, margin=1.0)  # 80x120 box -> 120 square
    c = transform_points(np.array([[139.5, 109.5]]), m)  # centre pixel of the box
    np.testing.assert_allclose(c, [[99.5, 99.5]], atol=1e-6)
    assert m[0, 0] == pytest.approx(200 / 120) and m[0, 1] == 0 and m[1, 0] == 0


def test_aligned_crop_puts_eyes_on_the_template(mtcnn, t1):
    """Re-detect on each aligned crop: the eyes land where the matrix sends the source landmarks, and
    near the template. t1's faces are tilted and turned, where five points cannot all sit on the
    template; the strict per-crop bound on frontal faces is in test_real.py."""
    cfg = AlignConfig(mode="arcface", size=256, margin=1.3)
    tmpl = arcface_template(256, 1.3)
    to_template, to_mapped = [], []
    for f in mtcnn.detect([t1])[0]:
        m = face_matrix(f.box, f.landmarks, cfg)
        crop = warp_crop(t1, m, 256)
        again = mtcnn.detect([crop])[0]
        assert again, "no face found again on the aligned crop"
        eyes = again[0].landmarks[:2]
        to_template.append(np.abs(eyes - tmpl[:2]).max())
        to_mapped.append(np.abs(eyes - transform_points(f.landmarks[:2], m)).max())
    assert np.median(to_mapped) < 4.0 and max(to_mapped) < 16.0
    assert np.median(to_template) < 8.0


def _face(cx, cy, s=40.0):
    return Face(box=[cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], landmarks=np.zeros((5, 2)), score=0.99)


def test_tracks_follow_fast_movers_and_survive_gaps():
    cfg = TrackConfig(max_shift=1.5, max_gap=1)
    # person A walks 50 px (1.25 face sizes) per sampled frame; person B stands still and is missed once.
    frames = [[_face(100 + 50 * t, 100), _face(400, 300, 60)] for t in range(5)]
    frames[2] = [frames[2][0]]
    ids = link_tracks(frames, cfg)
    a = [f[0] for f in ids]
    b = [f[1] for f in ids if len(f) > 1]
    assert len(set(a)) == 1 and len(set(b)) == 1 and a[0] != b[0]
    assert b[0] == 0  # the larger face is track 0


def test_tracks_split_on_jumps_and_size_changes():
    cfg = TrackConfig(max_shift=1.0, max_scale=1.5, max_gap=0)
    ids = link_tracks([[_face(100, 100)], [_face(300, 100)], [_face(300, 100, 120)]], cfg)
    assert len({i[0] for i in ids}) == 3


def _greedy_nms(b, s, th, groups):
    """The reference: MTCNN's greedy IoU loop (inclusive corners), groups shifted apart."""
    b = b.astype(np.float64)
    if groups is not None:
        b = b + (groups * (float(b.max() - b.min()) + 2))[:, None]
    x1, y1, x2, y2 = b.T
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = np.argsort(-s, kind="stable"), []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= th]
    return keep


def test_opencv_nms_keeps_what_the_greedy_loop_keeps():
    """IoU NMS moved to OpenCV: the same boxes in the same order (ties included) as MTCNN's loop."""
    from facepipe.faces.nms import nms

    rng = np.random.default_rng(1)
    for _ in range(12):
        k = int(rng.integers(1, 3000))
        xy = np.fix(rng.uniform(0, 600, (k, 2)))
        b = np.concatenate([xy, xy + np.fix(rng.uniform(1, 150, (k, 2)))], 1)
        s = rng.uniform(0.6, 1, k).astype(np.float32)
        s[: k // 10] = 0.9  # ties
        g = rng.integers(0, 8, k)
        for th in (0.5, 0.7):
            for groups in (g, None):
                assert nms(b, s, th, "union", groups=groups).tolist() == _greedy_nms(b, s, th, groups)


@needs_real
def test_mtcnn_outputs_do_not_depend_on_call_size(mtcnn, monkeypatch):
    """The cascade runs in onnxruntime calls of ``call_bytes`` input; one call per network and stage (the previous
    layout) gives the same faces, boxes and landmarks on real FF++ and DFDC frames."""
    from facepipe.faces import mtcnn as mod
    from facepipe.video import SamplingConfig, probe, read_frames

    for rel in ("ffpp/NeuralTextures_004_982.mp4", "dfdc/lynaeydofd.mp4"):
        p = REAL / "videos" / rel
        frames = read_frames(p, probe(p), SamplingConfig(num_frames=6)).frames
        assert mtcnn.call_bytes == mod.CALL_BYTES  # the CPU provider
        chunked = mtcnn.detect(frames)
        monkeypatch.setattr(mtcnn, "call_bytes", 1 << 40)
        whole = mtcnn.detect(frames)
        monkeypatch.setattr(mtcnn, "call_bytes", 1)  # one image per call
        single = mtcnn.detect(frames)
        monkeypatch.undo()
        assert sum(map(len, chunked)) >= len(frames)
        for a, b, c in zip(chunked, whole, single):
            assert len(a) == len(b) == len(c)
            for fa, fb, fc in zip(a, b, c):
                np.testing.assert_allclose(fa.box, fb.box, atol=1e-3)
                np.testing.assert_allclose(fa.landmarks, fb.landmarks, atol=1e-3)
                np.testing.assert_allclose(fa.box, fc.box, atol=1e-3)
                assert abs(fa.score - fb.score) < 1e-5


@needs_real
def test_min_face_frac_starts_the_pyramid_at_a_share_of_the_frame(mtcnn):
    """``min_face_frac`` skips the pyramid levels for faces smaller than that share of the shorter side; the
    large faces of an FF++ clip are all found again, with the landmarks within 3 % and boxes within 6 % of the face
    width (measured: 2 % and 5 %; the cascade refines different P-Net candidates, so not bit-identical)."""
    from facepipe.faces.mtcnn import MTCNN
    from facepipe.video import SamplingConfig, probe, read_frames

    frac = MTCNN(min_score=0.95, min_face_frac=0.1, threads=1)
    assert frac._scales(360, 640)[0] == pytest.approx(12 / 36) and mtcnn._scales(360, 640)[0] == pytest.approx(0.6)
    assert frac._scales(100, 100)[0] == pytest.approx(12 / 20)  # min_face_px still the floor
    p = REAL / "videos/ffpp/original_004.mp4"
    frames = read_frames(p, probe(p), SamplingConfig(num_frames=6)).frames
    for a, b in zip(MTCNN(min_score=0.95, threads=1).detect(frames), frac.detect(frames)):
        assert len(a) == len(b) == 1
        width = a[0].box[2] - a[0].box[0]
        assert np.abs(a[0].box - b[0].box).max() <= 0.06 * width
        assert np.abs(a[0].landmarks - b[0].landmarks).max() <= 0.03 * width


def _same_faces(a: list[list[Face]], b: list[list[Face]]) -> None:
    assert [len(fs) for fs in a] == [len(fs) for fs in b]
    for fa, fb in zip((f for fs in a for f in fs), (f for fs in b for f in fs)):
        np.testing.assert_array_equal(fa.box, fb.box)
        np.testing.assert_array_equal(fa.landmarks, fb.landmarks)
        assert fa.score == fb.score


@needs_real
def test_detect_many_equals_one_call_per_video_on_real_clips():
    """Several videos' frames detected in the same calls (what a GPU batch is made of) give each video exactly its
    own :meth:`detect` result: frames of two sizes (FF++ 720p, DFDC 1080p portrait), one clip sideways (rotation
    retries on)."""
    from facepipe.faces.mtcnn import MTCNN
    from facepipe.video import SamplingConfig, probe, read_frames

    det = MTCNN(threads=1)
    det.rotations = True
    clips = []
    for rel in ("ffpp/original_004.mp4", "dfdc/lynaeydofd.mp4", "ffpp/FaceSwap_634_660.mp4"):
        p = REAL / "videos" / rel
        clips.append(read_frames(p, probe(p), SamplingConfig(num_frames=4)).frames)
    clips.append(np.ascontiguousarray(np.rot90(clips[0], 1, axes=(1, 2))))  # sideways
    together = det.detect_many(clips)
    assert len(together) == len(clips)
    for frames, got in zip(clips, together):
        _same_faces(got, det.detect(frames))
    assert all(fs for fs in together[3])  # the sideways faces found


class _Marker(FaceDetector):
    """A stand-in detector on 17 x 17 frames: a face (score 0.95) when pixel (0, 0) is 255, i.e. in the frame's
    upright orientation; a face of score 0.91 in any orientation when the centre pixel is 7 (a frame whose
    orientation the detector cannot tell)."""

    name = "marker"

    def _detect_resized(self, images):
        out = []
        for img in images:
            score = 0.95 if img[0, 0, 0] == 255 else 0.91 if img[8, 8, 0] == 7 else None
            if score is None:
                out.append((np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32)))
                continue
            lm = np.array([[[4, 5], [12, 5], [8, 8], [5, 12], [11, 12]]], np.float32)
            out.append((np.array([[2, 2, 15, 15]], np.float32), lm, np.array([score], np.float32)))
        return out


def test_detect_many_keeps_the_rotation_vote_per_video():
    """The majority rotation of a video is applied to its own frames only. Video A: three frames sideways (found
    after a quarter turn) and one frame of unknown orientation (found as it is); its majority turn re-detects that
    frame turned. Video B: five upright frames. Pooling the votes of A and B (majority: upright) would leave A's
    ambiguous frame unturned."""
    det = _Marker()
    det.rotations = True
    side = np.zeros((17, 17, 3), np.uint8)
    side[0, -1] = 255  # np.rot90(k=1) brings it to (0, 0)
    ambiguous = np.zeros((17, 17, 3), np.uint8)
    ambiguous[8, 8] = 7
    upright = np.zeros((17, 17, 3), np.uint8)
    upright[0, 0] = 255
    a, b = np.stack([side, side, side, ambiguous]), np.stack([upright] * 5)
    alone_a, alone_b = det.detect(a), det.detect(b)
    roll = [float(np.degrees(np.arctan2(*(f[0].landmarks[1] - f[0].landmarks[0])[::-1]))) for f in alone_a]
    assert all(abs(abs(r) - 90) < 1e-6 for r in roll)  # A's frames, the ambiguous one included, turned
    together = det.detect_many([a, b])
    _same_faces(together[0], alone_a)
    _same_faces(together[1], alone_b)
