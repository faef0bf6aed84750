"""What the per-video work keeps while a video is processed: its faces so far (:class:`KeptFace`) and its state
(:class:`VideoState`), shared by the steps of :mod:`~facepipe.stages.extract.worker`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facepipe.stages.extract.inputs import VideoJob


@dataclass
class KeptFace:
    """A face kept from a sampled frame: the detection, its crop matrix and provisional file name, and (compared
    with the original) its difference evidence."""

    face: object
    matrix: np.ndarray
    name: str
    score: float | None = None
    mask: str | None = None
    crop_landmarks: np.ndarray | None = None
    diff: np.ndarray | None = None  # compared with the original: its box's difference values (working pixels)
    diff_crop: np.ndarray | None = None  # and its difference map warped like the crop (masks)
    frame_thr: float = float("nan")  # its frame's background threshold
    clip_id: int | None = None  # clip mode: the clip, its first frame, the track within it, an interpolated frame
    clip_start: int | None = None
    track: int | None = None
    gap: bool = False


@dataclass
class VideoState:
    """A video being processed: its sampler, its faces so far, its row."""

    job: VideoJob
    row: dict
    tmp_dir: Path
    sampler: object = None
    info: object = None
    per_frame: list = field(default_factory=list)
    frame_meta: list = field(default_factory=list)
    compare: bool = False  # fake compared with the reference, frame by frame
    pair_note: str | None = None
    backgrounds: list = field(default_factory=list)
    thresholds: list = field(default_factory=list)  # per compared frame, its background threshold
    probes: list = field(default_factory=list)  # per compared frame (index, working uint8 copy, working boxes,
    # position in per_frame, scale): the lag test and its correction
    probes_thinned: bool = False
    reference: object = None  # the VideoJob of the original compared with
    done: bool = False
    redetect_dropped: int = 0  # preset deepfakebench: faces whose crop had no re-detected face
    clip_buf: dict = field(default_factory=dict)  # clip mode: frame index -> ClipFrame until its clips are done
    clips_done: set = field(default_factory=set)  # clip mode: start frames of the clips processed or given up
    n_clips: int = 0  # clip mode: (track, clip) pairs kept
    clips_dropped: dict = field(default_factory=dict)  # clip mode: reason -> (track, clip) pairs dropped
