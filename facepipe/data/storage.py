"""Shards in object storage: ``s3://`` (AWS or any S3-compatible store), ``gs://`` and other fsspec protocols.

Reading: importing :mod:`facepipe.data.loader` registers an ``s3`` scheme (and ``gs``/``gcs`` when ``gcsfs`` is installed)
in webdataset's ``gopen``, so :func:`~facepipe.data.make_loader` streams ``s3://bucket/prefix`` (its index) like a
local folder, in every DataLoader worker. Objects are read through fsspec (``s3fs``) in large ranged GETs
(:data:`BLOCK_SIZE`); opening an object is retried on transient errors (:data:`RETRIES` times, exponential
backoff; s3fs and botocore retry each request as well); a missing object is an :class:`~facepipe.errors.InputError`
naming it.

Writing: :class:`RemoteSet` uploads a shard set as ``facepipe shard --out s3://bucket/prefix`` writes it: each tar
as soon as it is closed (the local disk holds one shard at a time), then ``_meta.json``, the statistics, and
**the index last**: a single PUT, which S3 makes visible atomically. A killed or failed upload therefore never
leaves an index naming missing shards; readers keep seeing the previous set until the new index lands, and a
replaced set stays ``shard.grace_hours`` longer (:func:`facepipe.stages.shard.retire_sets`).

Endpoint and credentials come from the standard AWS sources (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/config``, instance roles), so MinIO, Ceph, R2 or a test
server work unchanged. ``s3fs`` is the optional extra ``facepipe[s3]``.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path
from typing import IO, Any, Callable, TypeVar

from facepipe import _faults
from facepipe.errors import ConfigError, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")
BLOCK_SIZE = 16 * 2**20
"""Bytes per ranged GET when streaming a shard (one request per 16 MiB: the store's first-byte latency is paid
once per block, not per sample)."""
RETRIES = 4
_EXTRAS = {"s3": "s3fs (pip install 'facepipe[s3]')", "s3a": "s3fs (pip install 'facepipe[s3]')",
           "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def protocol(url: str | os.PathLike) -> str | None:
    """The URL's scheme when it names object storage (``s3``, ``gs``, ...), else ``None``."""
    s = str(url)
    if "://" not in s:
        return None
    p = s.split("://", 1)[0].lower()
    return p if p in REMOTE_PROTOCOLS else None


def is_remote(url: str | os.PathLike) -> bool:
    """True for object-storage URLs (see :data:`REMOTE_PROTOCOLS`)."""
    return protocol(url) is not None


def filesystem(url: str):
    """``(fsspec filesystem, path without the scheme)`` for an object-storage URL.

    Raises:
        ConfigError: the protocol's fsspec implementation is not installed.
    """
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise ConfigError(f"{url}: reading or writing {protocol(url)}:// needs {_EXTRAS.get(protocol(url), e)}") \
            from None


def _transient(e: BaseException) -> bool:
    return isinstance(e, (OSError, ConnectionError, TimeoutError)) and not isinstance(
        e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError))


class _GaveUp(Exception):
    """A call that failed for good: ``error`` after ``attempts`` tries."""

    def __init__(self, attempts: int, error: Exception) -> None:
        super().__init__(f"{error} (after {attempts} attempt(s))")
        self.attempts, self.error = attempts, error


def _retrying(call: Callable[[], T], where: str) -> T:
    """``call()``, retried with exponential backoff (0.5, 1, 2, 4 s) while it fails transiently.

    Raises:
        _GaveUp: it failed for a reason that is not transient, or still failed after :data:`RETRIES` retries.
    """
    for attempt in range(RETRIES + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001  s3fs/botocore raise many transient types
            if attempt == RETRIES or not _transient(e):
                raise _GaveUp(attempt + 1, e) from e
            delay = 0.5 * 2**attempt
            log.warning("%s: %s; retrying in %.1fs", where, e, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _read_transient(e: BaseException) -> bool:
    """A read that may succeed when tried again: any error of the connection or the store (s3fs lets aiohttp's
    ``ClientPayloadError`` and botocore's errors through after its own retries), not a missing object, a refusal or a
    programming error."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError,
                      TypeError, AttributeError, InputError)):
        return False
    return True


class _ResumingReader(io.RawIOBase):
    """A read-only object stream that survives dropped connections: a read that fails transiently (after s3fs's own
    retries of the ranged GET) reopens the object and continues at the byte it had reached, up to :data:`RETRIES`
    times per read with backoff, so a reset mid-object costs a retry, never the rest of the shard.

    Raises (from ``read``):
        InputError: naming the URL and the byte offset: the object vanished, or reading still fails after
            :data:`RETRIES` retries.
    """

    def __init__(self, url: str, opener: Callable[[], IO[bytes]]) -> None:
        super().__init__()
        self.url, self._opener = url, opener
        self._f: IO[bytes] | None = opener()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def _read_once(self, n: int) -> bytes:
        if self._f is None:
            self._f = self._opener()
            self._f.seek(self._pos)
        return self._f.read(n)

    def _drop(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001  closing a broken connection may fail too
                pass

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        for attempt in range(RETRIES + 1):
            try:
                data = self._read_once(len(view))
                break
            except Exception as e:  # noqa: BLE001  s3fs/aiohttp/botocore raise many transient types
                self._drop()
                if isinstance(e, FileNotFoundError):
                    raise InputError(f"{self.url}: no such object (deleted while it was read?)") from None
                if attempt == RETRIES or not _read_transient(e):
                    raise InputError(f"{self.url}: read failed at byte {self._pos} after {attempt + 1} "
                                     f"attempt(s): {e}") from e
                delay = 0.5 * 2**attempt
                log.warning("%s: read failed at byte %d: %s; reopening in %.1fs", self.url, self._pos, e, delay)
                time.sleep(delay)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._drop()
        super().close()


def open_read(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> IO[bytes]:
    """Open an object for streaming reads (webdataset ``gopen`` handler signature): opening is retried on transient
    errors, and so is every read (:class:`_ResumingReader`: a dropped connection reopens the object at the byte
    reached). Timeouts and s3fs's own retries come from fsspec's configuration, e.g. the environment variable
    ``FSSPEC_S3='{"config_kwargs": {"read_timeout": 30, "connect_timeout": 10}}'``; botocore's from
    ``AWS_MAX_ATTEMPTS`` / ``AWS_RETRY_MODE``.

    Raises:
        InputError: the object does not exist or may not be read (names the URL), or it still fails after
            :data:`RETRIES` attempts; reads raise it too (see :class:`_ResumingReader`).
    """
    if mode != "rb":
        raise ValueError(f"{url}: only 'rb' is supported, got {mode!r}")
    fs, path = filesystem(url)

    def opener() -> IO[bytes]:
        try:
            return _retrying(lambda: fs.open(path, "rb", block_size=BLOCK_SIZE, cache_type="readahead"), url)
        except _GaveUp as g:
            if isinstance(g.error, FileNotFoundError):
                raise InputError(f"{url}: no such object") from None
            if isinstance(g.error, PermissionError):
                raise InputError(f"{url}: access denied: {g.error}") from None
            raise InputError(f"{url}: cannot open after {g.attempts} attempt(s): {g.error}") from g.error

    return io.BufferedReader(_ResumingReader(url, opener), buffer_size=max(bufsize, 8192))


def read_text(url: str) -> str:
    """The whole object as UTF-8 text (an index)."""
    with open_read(url) as f:
        return f.read().decode()


def register_schemes() -> None:
    """Make webdataset's ``gopen`` open ``s3://`` (and ``gs://``/``gcs://`` when gcsfs is installed) through
    :func:`open_read`. Idempotent; runs on import of :mod:`facepipe.data.loader`."""
    import importlib
    import importlib.util

    schemes = importlib.import_module("webdataset.gopen").gopen_schemes
    schemes["s3"] = schemes["s3a"] = open_read
    if importlib.util.find_spec("gcsfs") is not None:
        schemes["gs"] = schemes["gcs"] = open_read


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for URLs and local paths alike."""
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


class RemoteSet:
    """Publish a shard set under an object-storage prefix (see the module docstring for the order).

    Args:
        url: ``s3://bucket/prefix`` (the prefix plays the role of the local output folder).
    """

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = filesystem(self.url)

    def put(self, local: Path, name: str) -> None:
        """Upload ``local`` as ``<url>/<name>``, retried on transient errors.

        Raises:
            OSError: the upload still fails after :data:`RETRIES` attempts (names the object).
        """
        def upload() -> None:
            _faults.at_upload(name)
            self.fs.put_file(str(local), f"{self.root}/{name}")

        try:
            _retrying(upload, f"{self.url}/{name}")
        except _GaveUp as g:
            raise OSError(f"{self.url}/{name}: upload failed after {g.attempts} attempt(s): {g.error}") from g.error

    def sets(self) -> list[str]:
        """Names of the ``set-*`` prefixes under the URL."""
        try:
            entries = self.fs.ls(self.root, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries
                      if e.rstrip("/").rsplit("/", 1)[-1].startswith("set-"))

    def read(self, name: str) -> bytes | None:
        """The object ``<url>/<name>``, or ``None`` when there is none."""
        try:
            return self.fs.cat_file(f"{self.root}/{name}")
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Write a small object ``<url>/<name>`` (one PUT)."""
        self.fs.pipe_file(f"{self.root}/{name}", data)

    def delete(self, name: str) -> None:
        """Delete the object ``<url>/<name>`` if it exists."""
        try:
            self.fs.rm_file(f"{self.root}/{name}")
        except FileNotFoundError:
            pass

    def remove_set(self, name: str) -> None:
        """Delete every object under ``<url>/<name>/``."""
        self.fs.rm(f"{self.root}/{name}", recursive=True)


__all__ = ["BLOCK_SIZE", "REMOTE_PROTOCOLS", "RETRIES", "RemoteSet", "filesystem", "is_remote", "join", "open_read",
           "protocol", "read_text", "register_schemes"]
