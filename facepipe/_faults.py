"""Fault injection for tests of the stages' failure handling (hung decoders, crashed workers, full disks).

Inactive unless the environment variable ``FACEPIPE_TEST_FAULT`` is set, e.g.
``FACEPIPE_TEST_FAULT="hang:videoA,crash:videoB,enospc:videoC"``: the extract worker then sleeps forever
on ``videoA``, kills its own process on ``videoB`` and fails its first crop write of ``videoC`` with
``ENOSPC`` (as a full disk does); ``killrun:videoD`` kills the whole run (``SIGKILL`` to its process group, driver
and workers) right after ``videoD``'s part file is written: a kill -9 at a known point, with no timing in the test;
``killtrain:6`` kills a training process right after its ``last.pt`` of step 6 is written; ``hang:train-000001.tar``
holds the shard stage right after that tar is closed.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "FACEPIPE_TEST_FAULT"


def _faults() -> dict[str, str]:
    spec = os.environ.get(ENV, "")
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        mode, _, target = part.partition(":")
        out[target] = mode
    return out


def at_start(video_id: str) -> None:
    """Called when a worker starts a video: ``hang`` sleeps, ``crash`` kills the worker process."""
    mode = _faults().get(video_id)
    if mode == "hang":
        time.sleep(3600)
    elif mode == "crash":
        os.kill(os.getpid(), signal.SIGKILL)


def at_part(video_id: str) -> None:
    """Called after a video's part file is written: ``killrun`` sends ``SIGKILL`` to the run's process group."""
    if _faults().get(video_id) == "killrun":
        os.killpg(os.getpgrp(), signal.SIGKILL)


def at_checkpoint(step: int) -> None:
    """Called after ``train`` wrote ``last.pt`` at ``step``: ``killtrain`` sends ``SIGKILL`` to this process."""
    if _faults().get(str(step)) == "killtrain":
        os.kill(os.getpid(), signal.SIGKILL)


def at_write(video_id: str) -> None:
    """Called before a crop is written: ``enospc`` raises the error a full disk gives.

    Raises:
        OSError: ``ENOSPC`` when injected for ``video_id``.
    """
    if _faults().get(video_id) == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def at_upload(name: str) -> None:
    """Called before an object is uploaded (``name`` relative to the remote prefix, e.g.
    ``set-…/train-000001.tar`` is matched by ``upload:train-000001.tar``): ``upload`` fails it as a killed
    upload would.

    Raises:
        RuntimeError: when injected for the object's file name.
    """
    if _faults().get(name.rsplit("/", 1)[-1]) == "upload":
        raise RuntimeError(f"injected fault: upload of {name} interrupted")


def at_shard(name: str) -> None:
    """Called by the shard stage when a tar is closed (``name``: its file name): ``hang`` sleeps."""
    if _faults().get(name) == "hang":
        time.sleep(3600)
