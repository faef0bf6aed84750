"""One scheduler for the extract stage's tasks, with two backends: a ``pebble`` process pool on this machine
(``engine: local``) and Ray actors on a cluster (``engine: ray``).

:func:`run_tasks` owns the logic both share: a queue of tasks, submission while the backend has room, each task's
timeout (``timeout_s`` per video it holds), and the retry rule: a task that did not return (timed out, its worker
died, an exception it could not record) is split into one task per video and queued once more; a single video that
fails again gets an ``error`` row (never cached). A backend only runs tasks and reports how each ended
(:class:`Outcome`).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from facepipe.errors import InputError
from facepipe.stages.extract.config import ExtractConfig
from facepipe.stages.extract.inputs import Task, split_task
from facepipe.stages.extract.tables import error_row, part_has_key, write_error_part
from facepipe.stages.extract.worker import init_worker, process_in_worker

log = logging.getLogger(__name__)

Done = Callable[[dict, int], None]
"""Called once per finished video with its row and the number of faces written."""


@dataclass
class Outcome:
    """How a task ended: ``rows`` (per processed video: row, faces written) when it returned, else ``why`` not."""

    task: Task
    retried: bool
    rows: list[tuple[dict, int]] | None = None
    why: str | None = None


class Backend(Protocol):
    """Where tasks run. ``submit`` starts one (the backend stops it after ``timeout`` seconds, ``None``: never);
    ``collect`` waits a little and returns the tasks that ended since the last call."""

    def has_room(self) -> bool: ...

    def busy(self) -> bool: ...

    def submit(self, task: Task, retried: bool, timeout: float | None) -> None: ...

    def collect(self) -> list[Outcome]: ...


def task_timeout(cfg: ExtractConfig, task: Task) -> float | None:
    """A task's time limit: ``timeout_s`` per video it holds (its original included)."""
    return cfg.timeout_s * task.size() if cfg.timeout_s else None


def timed_out(cfg: ExtractConfig, stopped: str) -> str:
    """The message of a task stopped at its time limit."""
    return f"timed out after {cfg.timeout_s:.0f} s per video (hung decoder?); {stopped}"


def run_tasks(tasks: list[Task], out: Path, cfg: ExtractConfig, backend: Backend, done: Done) -> None:
    """Run ``tasks`` on ``backend`` until every video has a row (see the module's description)."""
    queue = deque((t, False) for t in tasks)
    while queue or backend.busy():
        while queue and backend.has_room():
            t, retried = queue.popleft()
            backend.submit(t, retried, task_timeout(cfg, t))
        for o in backend.collect():
            if o.why is None:
                for r in o.rows:
                    done(*r)
            else:
                _failed(o.task, o.retried, o.why, out, queue, done)


def _failed(t: Task, retried: bool, why: str, out: Path, queue: deque, done: Done) -> None:
    """A task that did not return: split into one task per video and queued again once; a single video that
    fails again gets an ``error`` row (never cached: its key does not count as done)."""
    unfinished = [v for v in t.processed() if not part_has_key(out, v, t.keys[v.video_id])]
    if not unfinished:
        return
    if t.size() > 1 and not retried and len(t.processed()) > 1:
        log.warning("a task of %d videos failed (%s); retrying them one by one", len(t.processed()), why)
        queue.extend((s, True) for s in split_task(t) if any(v in unfinished for v in s.processed()))
        return
    for v in unfinished:
        row = error_row(v, t.keys[v.video_id], t.shas.get(v.video_id), "", why)
        write_error_part(out, v, row)
        done(row, 0)


@contextmanager
def open_backend(cfg: ExtractConfig, out: Path, workers: int, threads: int,
                 started: PoolBackend | None = None) -> Iterator[Backend]:
    """The backend of ``cfg.engine`` (``started``: a pool already started, see :meth:`PoolBackend.start`), stopped
    (pool) or disconnected (Ray) on leaving."""
    if started is not None:
        try:
            yield started
        finally:
            started.close()
        return
    if cfg.engine == "ray":
        with RayBackend.connect(cfg, out) as backend:
            yield backend
        return
    backend = PoolBackend(cfg, out, workers, threads)
    try:
        yield backend
    finally:
        backend.close()


# ---------------------------------------------------------------------------------------------
# engine: local


class PoolBackend:
    """A ``pebble`` process pool (spawned workers, each with its own face detector), ``2 * workers`` tasks in
    flight. pebble stops a worker past its task's timeout."""

    def __init__(self, cfg: ExtractConfig, out: Path, workers: int, threads: int) -> None:
        from pebble import ProcessPool

        self.cfg, self.out, self.capacity = cfg, str(out), 2 * workers
        self.pool = ProcessPool(max_workers=workers, initializer=init_worker,
                                initargs=(cfg, threads, logging.getLogger().level), context=mp.get_context("spawn"))
        self.inflight: dict = {}  # future -> (task, retried)

    def start(self) -> PoolBackend:
        """Start the workers now (pebble starts them at the first task): they import facepipe and load their
        detectors while the caller prepares the run. Returns ``self``."""
        self.pool.schedule(os.getpid)
        return self

    def has_room(self) -> bool:
        return len(self.inflight) < self.capacity

    def busy(self) -> bool:
        return bool(self.inflight)

    def submit(self, task: Task, retried: bool, timeout: float | None) -> None:
        self.inflight[self.pool.schedule(process_in_worker, args=(task, self.out), timeout=timeout)] = (task, retried)

    def collect(self) -> list[Outcome]:
        import concurrent.futures as cf

        finished, _ = cf.wait(list(self.inflight), return_when=cf.FIRST_COMPLETED)
        return [self._outcome(fut, *self.inflight.pop(fut)) for fut in finished]

    def _outcome(self, fut, task: Task, retried: bool) -> Outcome:
        from pebble import ProcessExpired

        try:
            return Outcome(task, retried, rows=fut.result())
        except FutureTimeout:
            why = timed_out(self.cfg, "the worker was stopped")
        except ProcessExpired as e:
            why = f"the worker process died ({e}): a decoder crash or out of memory"
        except Exception as e:  # noqa: BLE001  an exception the task itself could not record
            why = f"unexpected error: {type(e).__name__}: {e}"
        return Outcome(task, retried, why=why)

    def close(self) -> None:
        if self.pool.active:
            self.pool.stop()
            self.pool.join()


# ---------------------------------------------------------------------------------------------
# engine: ray


class RayExtractor:
    """A Ray actor holding one face detector (the pool worker of the ``ray`` engine)."""

    def __init__(self, cfg: ExtractConfig, threads: int, log_level: int) -> None:
        init_worker(cfg, threads, log_level)

    def run(self, task: Task, out_dir: str) -> list[tuple[dict, int]]:
        return process_in_worker(task, out_dir)


class RayBackend:
    """Ray actors (one detector each) taking tasks from the driver's queue, one task per idle actor.

    Each actor reserves ``num_cpus`` = the cluster's CPUs / actors (at least 1; onnxruntime uses as many threads),
    and a share of a GPU when the cluster has GPUs and ``face_detector.device`` is not ``cpu`` (the detector then runs
    on onnxruntime's CUDA provider). An actor decodes its videos itself: 32 decoded 1080p frames are ~200 MB, more
    than the video file, so decoding where the detector runs moves the least data. Videos and ``out`` must be at
    the same paths on every node (a shared file system); actors write part files there exactly as local workers
    do, and the driver consolidates the tables, so outputs, statuses and resume are the local engine's.

    An actor past its task's timeout is killed and replaced (the driver checks each second), an actor that dies is
    replaced; the task then goes through the scheduler's retry rule like a local one.
    """

    def __init__(self, ray, cfg: ExtractConfig, out: Path) -> None:
        self.ray, self.cfg, self.out = ray, cfg, str(out)
        res = ray.cluster_resources()
        cpus = max(1, int(res.get("CPU", 1)))
        actors_n = cfg.workers or cpus
        gpus = res.get("GPU", 0) if cfg.face_detector.device != "cpu" else 0
        threads = max(1, cpus // actors_n)
        opts = {"num_cpus": threads, "max_restarts": 0}
        if gpus:
            opts["num_gpus"] = min(1.0, gpus / actors_n)
        self._actor_cls, self._opts = ray.remote(RayExtractor), opts
        self._args = (cfg, threads, logging.getLogger().level)
        self.idle = [self._new_actor() for _ in range(actors_n)]
        self.inflight: dict = {}  # ObjectRef -> (task, retried, actor, started, timeout)
        log.info("ray engine: %d actors (%s each) on %d nodes", actors_n, opts,
                 sum(1 for n in ray.nodes() if n.get("Alive")))

    @classmethod
    @contextmanager
    def connect(cls, cfg: ExtractConfig, out: Path) -> Iterator[RayBackend]:
        """Connect to the cluster at ``cfg.ray_address`` (or start a local Ray) for the run, then disconnect.

        Raises:
            InputError: Ray is not installed, or the cluster cannot be reached.
        """
        try:
            import ray
        except ImportError:
            raise InputError("engine 'ray' needs Ray: pip install 'facepipe[ray]'") from None
        started = not ray.is_initialized()
        if started and cfg.ray_address and cfg.ray_address not in ("auto", "local") and "://" not in cfg.ray_address:
            _check_reachable(cfg.ray_address)  # ray.init retries an unreachable GCS for minutes
        if started:
            try:
                ray.init(address=cfg.ray_address, ignore_reinit_error=True, log_to_driver=False,
                         include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise InputError(f"cannot reach the Ray cluster at {cfg.ray_address or 'RAY_ADDRESS/local'}: {e}"
                                 ) from e
        try:
            backend = cls(ray, cfg, out)
            yield backend
            for a in backend.idle:
                ray.kill(a)
        finally:
            if started:
                ray.shutdown()

    def _new_actor(self):
        return self._actor_cls.options(**self._opts).remote(*self._args)

    def has_room(self) -> bool:
        return bool(self.idle)

    def busy(self) -> bool:
        return bool(self.inflight)

    def submit(self, task: Task, retried: bool, timeout: float | None) -> None:
        a = self.idle.pop()
        self.inflight[a.run.remote(task, self.out)] = (task, retried, a, time.monotonic(), timeout)

    def collect(self) -> list[Outcome]:
        ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
        now = time.monotonic()
        outcomes = [self._outcome(ref) for ref in ready]
        for ref, (t, retried, a, t0, timeout) in list(self.inflight.items()):
            if timeout is not None and now - t0 > timeout:
                self.inflight.pop(ref)
                self.ray.kill(a)
                self.idle.append(self._new_actor())
                outcomes.append(Outcome(t, retried, why=timed_out(self.cfg, "the Ray actor was stopped")))
        return outcomes

    def _outcome(self, ref) -> Outcome:
        from ray.exceptions import RayActorError

        t, retried, a, _, _ = self.inflight.pop(ref)
        try:
            rows = self.ray.get(ref)
        except RayActorError as e:
            self.idle.append(self._new_actor())
            return Outcome(t, retried, why=f"the Ray actor died ({type(e).__name__}): a decoder crash, out of memory "
                                           "or a lost node")
        except Exception as e:  # noqa: BLE001  an exception the task itself could not record
            cause = getattr(e, "cause", None) or e
            self.idle.append(a)
            return Outcome(t, retried, why=f"unexpected error: {type(cause).__name__}: {cause}")
        self.idle.append(a)
        return Outcome(t, retried, rows=rows)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at a Ray ``host:port`` address.

    Raises:
        InputError: the address is malformed or refuses / does not answer a TCP connection within ``timeout_s``.
    """
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"Ray address {address!r}: expected host:port (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise InputError(f"cannot reach the Ray cluster at {address}: {e}") from None
