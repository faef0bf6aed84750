"""The per-video work of the extract stage (runs in worker processes, Ray actors, or in the driver with
``workers: 0``): one :class:`~facepipe.stages.extract.inputs.Task` at a time, an original decoded once in lockstep
with the fakes compared with it.

:func:`process_task` runs its steps in order: open every video of the task (:meth:`_TaskRun.open`), decode them
chunk by chunk in lockstep with the original, detecting and cropping as they go (:meth:`_TaskRun.lockstep`), then
finish and publish each video (:meth:`_TaskRun.finish_all`, see :mod:`~facepipe.stages.extract.finish`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from pathlib import Path

import cv2

from facepipe import _faults
from facepipe.errors import VideoError
from facepipe.stages.extract.clips import add_clip_chunk
from facepipe.stages.extract.config import ExtractConfig
from facepipe.stages.extract.crops import detect_and_crop
from facepipe.stages.extract.finish import finish, publish
from facepipe.stages.extract.inputs import Task
from facepipe.stages.extract.state import VideoState
from facepipe.stages.extract.tables import new_video_row

log = logging.getLogger(__name__)

_WORKER: dict = {}
"""The worker process's configuration and face detector (set by :func:`init_worker`)."""


def init_worker(cfg: ExtractConfig, threads: int, log_level: int) -> None:
    """Set up a worker process (or Ray actor): logging, OpenCV on one thread, its own face detector."""
    from facepipe.faces import create_face_detector

    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    cv2.setNumThreads(1)
    _WORKER["detector"] = create_face_detector(cfg.face_detector, threads=threads)
    _WORKER["cfg"] = cfg


def process_in_worker(task: Task, out_dir: str) -> list[tuple[dict, int]]:
    """:func:`process_task` with the worker's configuration and detector."""
    return process_task(task, out_dir)


class _TaskRun:
    """One task being processed: its videos' states and the results published so far."""

    def __init__(self, task: Task, out: Path, cfg: ExtractConfig, detector) -> None:
        self.task, self.out, self.cfg, self.detector = task, out, cfg, detector
        self.t0 = time.perf_counter()
        self.results: list[tuple[dict, int]] = []
        self.states: list[VideoState] = []
        self.ref_info = None
        self.ref_note: str | None = None
        for job in task.processed():
            _faults.at_start(job.video_id)
            row = new_video_row(job, task.keys[job.video_id], task.shas.get(job.video_id), detector.id)
            st = VideoState(job, row, out / "faces" / f".{job.video_id}.tmp-{os.getpid()}")
            if job is not task.reference and task.reference is not None:
                row.update(original_id=task.reference.video_id)
                st.compare, st.reference = True, task.reference
            elif job.label == 1 and job.original_note:
                row.update(pair_check=job.original_note)
            self.states.append(st)

    def fail(self, st: VideoState, status: str, message: str) -> None:
        """Record a video as failed (no faces) and publish it."""
        st.row.update(status=status, message=message, n_faces=0, n_tracks=0)
        st.done = True
        shutil.rmtree(st.tmp_dir, ignore_errors=True)
        self.results.append(publish(self.out, st, [], time.perf_counter() - self.t0))

    def unexpected(self, st: VideoState, e: Exception) -> None:
        """A bug, a full disk: logged with its traceback, the video recorded as ``error`` (never cached)."""
        log.error("%s: unexpected error:\n%s", st.job.rel, traceback.format_exc())
        self.fail(st, "error", f"unexpected error: {type(e).__name__}: {e}")

    def _chunk_size(self) -> int:
        return max(8, 64 // max(1, self.task.size()))

    # -- step 1: open every video (the reference too, when it is only the fakes' original)

    def open(self) -> None:
        """Probe the reference and every video, create their samplers and temporary crop folders; a fake whose
        original does not decode or differs in size is not compared."""
        from facepipe.video import FrameSampler, probe

        if self.task.reference is not None:
            try:
                self.ref_info = probe(self.task.reference.path)
            except VideoError as e:
                self.ref_note = f"original {self.task.reference.video_id} does not decode: {e}"
        for st in self.states:
            try:
                st.info = probe(st.job.path)
                st.row.update(fps=st.info.fps, frames_header=st.info.frames_header, width=st.info.width,
                              height=st.info.height, rotation=st.info.rotation, duration_s=st.info.duration_s,
                              codec=st.info.codec)
                shutil.rmtree(st.tmp_dir, ignore_errors=True)
                st.tmp_dir.mkdir(parents=True)
                st.sampler = FrameSampler(st.job.path, st.info, self.cfg.sampling, chunk_size=self._chunk_size())
            except VideoError as e:
                self.fail(st, e.status, str(e))
                continue
            if st.compare:
                self._check_pair(st)

    def _check_pair(self, st: VideoState) -> None:
        from facepipe.faces.labels import check_sizes

        if self.ref_note:
            st.compare, st.pair_note = False, self.ref_note
            return
        why = check_sizes((st.info.height, st.info.width), (self.ref_info.height, self.ref_info.width),
                          self.cfg.labels)
        if why:
            st.compare, st.pair_note = False, why

    # -- step 2: decode in lockstep, detect and crop

    def lockstep(self) -> None:
        """Decode the live videos chunk by chunk; the reference's chunk is compared with each fake's chunk of the
        same frames. One detector call per round for every video's frames."""
        from facepipe.video import FrameSampler

        live = [st for st in self.states if not st.done]
        iters = {id(st): iter(st.sampler) for st in live}
        ref_state = ref_iter = None
        if any(st.compare for st in live):
            ref_state = next((st for st in live if st.job is self.task.reference), None)
            ref_iter = (iters[id(ref_state)] if ref_state is not None else
                        iter(FrameSampler(self.task.reference.path, self.ref_info, self.cfg.sampling,
                                          chunk_size=self._chunk_size())))
        active = list(live)
        while active:
            ref_chunk = None
            if ref_iter is not None:
                ref_chunk, ref_iter, ok = self._next_reference_chunk(ref_iter, ref_state, active)
                if not ok:
                    break
            round_ = self._gather_round(active, iters, ref_state, ref_chunk)
            self._detect_round(round_, ref_chunk, active)
            del round_

    def _next_reference_chunk(self, ref_iter, ref_state, active: list[VideoState]):
        """The reference's next chunk (``None`` past its end or when it stops decoding: its fakes are then no longer
        compared). Returns (chunk, the iterator or ``None`` when done, False when every active video failed)."""
        try:
            return next(ref_iter), ref_iter, True
        except StopIteration:
            return None, None, True
        except VideoError as e:
            note = f"original {self.task.reference.video_id} does not decode: {e}"
            if ref_state is not None:
                self.fail(ref_state, e.status, str(e))
                active.remove(ref_state)
            for st in active:
                if st.compare:
                    st.compare, st.pair_note = False, note
            return None, None, True
        except Exception as e:  # noqa: BLE001  unexpected: this task's videos all become 'error'
            for st in active:
                self.fail(st, "error", f"unexpected error decoding the original: {type(e).__name__}: {e}")
            active.clear()
            return None, None, False

    def _gather_round(self, active: list[VideoState], iters: dict, ref_state, ref_chunk) -> list[tuple]:
        """This round's chunk of every active video (the reference's own is ``ref_chunk``); a video that ends or
        fails to decode leaves ``active``."""
        round_: list[tuple[VideoState, object]] = []
        for st in list(active):
            try:
                chunk = ref_chunk if ref_state is not None and st is ref_state else next(iters[id(st)])
                if chunk is None:
                    raise StopIteration
            except StopIteration:
                active.remove(st)
                continue
            except VideoError as e:
                self.fail(st, e.status, str(e))
                active.remove(st)
                continue
            except Exception as e:  # noqa: BLE001
                self.unexpected(st, e)
                active.remove(st)
                continue
            round_.append((st, chunk))
        return round_

    def _detect_round(self, round_: list[tuple], ref_chunk, active: list[VideoState]) -> None:
        """One detector call for the round: every video's frames in the same batches (a GPU's gain); when it
        raises, each video is detected alone so that only the one at fault fails."""
        dets: list = [None] * len(round_)
        if len(round_) > 1:
            try:
                dets = self.detector.detect_many([c.frames for _, c in round_])
            except Exception as e:  # noqa: BLE001
                log.warning("batched detection failed (%s: %s); detecting video by video", type(e).__name__, e)
        step = add_clip_chunk if self.cfg.sampling.mode == "clips" else detect_and_crop
        for (st, chunk), det in zip(round_, dets):
            try:
                step(st, chunk, self.detector, self.cfg, ref_chunk if st.compare else None, det)
            except Exception as e:  # noqa: BLE001  a bug, a full disk: recorded, never cached
                self.unexpected(st, e)
                active.remove(st)

    # -- step 3: finish and publish

    def finish_all(self) -> None:
        """Finish every video still live (tracks, labels, rows) and publish it."""
        for st in self.states:
            if st.done:
                continue
            try:
                face_rows = finish(st, self.cfg, self.detector)
                self.results.append(publish(self.out, st, face_rows, time.perf_counter() - self.t0))
            except Exception as e:  # noqa: BLE001
                self.unexpected(st, e)


def process_task(task: Task, out_dir: str, cfg: ExtractConfig | None = None, detector=None) -> list[tuple[dict, int]]:
    """Process one task (see :class:`~facepipe.stages.extract.inputs.Task`) and publish every processed video's
    crops and parts.

    Never raises for a bad video: problems are recorded in each video row's ``status`` and ``message``
    (``error`` for unexpected failures, which the next run retries).

    Returns:
        Per processed video: (video row as in :data:`~facepipe.stages.extract.tables.VIDEO_SCHEMA`, number of
        faces written).
    """
    run = _TaskRun(task, Path(out_dir), cfg or _WORKER["cfg"], detector or _WORKER["detector"])
    run.open()
    run.lockstep()
    run.finish_all()
    return run.results
