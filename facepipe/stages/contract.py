"""The stage contract: code fingerprints from a stage's import closure, per-item cache keys, output locks,
and the end-of-stage status summary.

A stage's *code closure* is every ``facepipe`` module it can import (module-level and function-level
imports alike, found by parsing the source, nothing is imported) plus the package ``__init__`` files
that importing them runs. The command line (``facepipe/cli/``) is not part of any closure: it only turns
options into the stage's parameter model, which the fingerprint covers. ``dvc.yaml`` lists exactly these
files as the stage's code ``deps`` (a test compares the two), and :func:`fingerprint` hashes their bytes
together with the stage's parameters and version, so a change DVC sees is a change the stage's per-item
caches see.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
from collections import Counter
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

from facepipe.errors import FacepipeError, InputError

log = logging.getLogger(__name__)

PACKAGE = "facepipe"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
"""The ``facepipe`` package folder whose sources are hashed."""

PACKAGE_DATA = ("*.yaml", "templates/*.j2")
"""Non-Python files of a package that its code reads, relative to its ``__init__.py`` (pyproject.toml's
package-data): the evaluation protocols, the explain gallery's Jinja2 template."""

LOCK_NAME = ".lock"
"""The lock file inside a stage's output folder (listed in ``.dvcignore``)."""


class StageBusy(FacepipeError):
    """Another run of a stage holds the lock on the same output folder."""


EXTRACT_SETTINGS = "extract.json"
"""The settings file the extract stage writes in its ``OUT``: what the crops were made with (``params``: the parameters
that change results, ``detector``: ``name@version``, ``stage_fingerprint``). Shard copies it per dataset into its
index (``extract``) and training into every checkpoint, so ``facepipe predict`` makes crops of new videos exactly as
the model's training crops were made."""


def read_extract_settings(extract_dir: str | Path) -> dict | None:
    """The :data:`EXTRACT_SETTINGS` document of an extract output, or ``None`` when it has none (an older facepipe).

    Raises:
        InputError: the file exists but is not JSON (names it).
    """
    p = Path(extract_dir) / EXTRACT_SETTINGS
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{p}: unreadable extract settings ({e}); rerun 'facepipe extract'") from None


def module_path(module: str) -> Path | None:
    """Source file of a ``facepipe`` module (``facepipe.a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _nodes(tree: ast.Module):
    """Every node of a module except the bodies of a module-level ``__getattr__`` (PEP 562 lazy re-exports,
    e.g. ``facepipe.data.make_loader``: they run only when that attribute is asked for, and code that needs
    the target imports it by name, which the closure then follows)."""
    skip = {id(n) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"}
    todo = [n for n in tree.body if id(n) not in skip]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(ast.iter_child_nodes(node))


def _imports(module: str, path: Path) -> set[str]:
    """``facepipe`` modules named by the import statements of one source file (all scopes)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != PACKAGE:
                continue
            found.add(target)
            for a in node.names:  # "from facepipe.faces import mtcnn" names a submodule
                sub = f"{target}.{a.name}"
                if module_path(sub) is not None:
                    found.add(sub)
    return found


@lru_cache(maxsize=None)
def code_closure(module: str) -> tuple[Path, ...]:
    """Every facepipe source file that importing ``module`` (and calling its functions) can execute, and the
    data files a package ships beside its ``__init__.py`` (:data:`PACKAGE_DATA`).

    Returns:
        Sorted absolute paths.

    Raises:
        ValueError: ``module`` is not a facepipe module.
    """
    if module_path(module) is None:
        raise ValueError(f"{module} is not a module of the {PACKAGE} package")
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages' __init__
        p = module_path(m)
        if p is not None:
            todo.extend(_imports(m, p) - seen)
    files = {p for m in seen if (p := module_path(m)) is not None}
    files |= {d for p in list(files) if p.name == "__init__.py" for pat in PACKAGE_DATA for d in p.parent.glob(pat)}
    return tuple(sorted(files))


def closure_relpaths(module: str) -> list[str]:
    """:func:`code_closure` as ``facepipe/...`` paths relative to the project root (as ``dvc.yaml`` lists them)."""
    root = PACKAGE_ROOT.parent
    return [p.relative_to(root).as_posix() for p in code_closure(module)]


@lru_cache(maxsize=None)
def code_hash(module: str) -> str:
    """sha256 over the relative paths and bytes of :func:`code_closure` (64 hex characters)."""
    h = hashlib.sha256()
    for p in code_closure(module):
        h.update(p.relative_to(PACKAGE_ROOT).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def fingerprint(stage: str, version: int, params: Any, module: str) -> str:
    """A stage's fingerprint: hash of its name, ``STAGE_VERSION``, parameters and code.

    Args:
        stage: stage name.
        version: the module's ``STAGE_VERSION``.
        params: JSON-able parameters that change results (runtime knobs such as worker counts left out).
        module: the stage module whose closure is hashed.

    Returns:
        16 hex characters.
    """
    blob = json.dumps({"stage": stage, "version": version, "params": params, "code": code_hash(module)},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def item_key(*parts: Any) -> str:
    """Cache key of one item (a video, a crop set): hash of the stage fingerprint and the item's inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def make_output_folder(out: Path, stage: str) -> None:
    """Create ``out`` (and its parents) for a stage's output, or say in one line why it cannot be.

    Raises:
        InputError: naming ``out`` and the cause.
    """
    import errno
    import os

    for p in [out, *out.parents]:
        if p.exists() and not p.is_dir():
            what = "exists and is a file" if p == out else f"cannot be created: {p} is a file, not a folder"
            raise InputError(f"{out}: the {stage} output folder {what}; give another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        cause = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
                 errno.ENOSPC: "no space left on device"}.get(e.errno, e.strerror or type(e).__name__)
        where = "" if not e.filename or Path(e.filename) == out else f": {e.filename}"
        raise InputError(f"{out}: the {stage} output folder cannot be created ({cause}{where})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"{out}: the {stage} output folder is not writable (permission denied)")


@contextmanager
def stage_lock(out_dir: str | Path, stage: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``out_dir`` (``OUT/.lock``, via ``filelock``) for one stage run.

    The lock is an OS lock: a killed run releases it. A second concurrent run on the same folder fails
    at once.

    Raises:
        StageBusy: another process holds the lock (names the folder and the lock file).
        InputError: ``out_dir`` cannot be the output folder (a file is in the way, a parent is not a folder, it cannot
            be created or written): one line naming the path and the cause.
    """
    from filelock import FileLock, Timeout

    out = Path(out_dir)
    make_output_folder(out, stage)
    path = out / LOCK_NAME
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise StageBusy(f"{out}: another 'facepipe {stage}' run is writing this folder (lock {path} is held); "
                        "wait for it to finish or stop it") from None
    try:
        yield out
    finally:
        lock.release()


STATUSES = ("ok", "no_face", "decode_error", "unsupported", "error")
"""Per-item statuses. ``error`` (an unexpected failure: a bug, a full disk, a crashed or hung worker) is
never cached: the item is retried on the next run."""


STATUS_HINTS = {
    "no_face": "no face found: check the file, or lower extract.face_detector.min_score / min_face_px",
    "decode_error": "damaged or truncated file (an interrupted download?): faces of its decodable frames are kept; "
                    "re-download it",
    "unsupported": "not a video or photo FFmpeg / Pillow reads, or no video stream",
    "error": "unexpected failure: rerunning the command retries it; -v shows the traceback",
}
"""What each problem status means for the user, printed once per status in a run's summary."""


def short_message(message: str | None, path: str | None) -> str:
    """``message`` without a leading copy of its file's path (``/abs/dir/a.mp4: no video stream`` -> ``no video
    stream``), so a line that names the file once stays readable."""
    msg = message or ""
    if path:
        name = Path(path).name + ": "
        head, sep, tail = msg.partition(name)
        if sep and (not head or head.endswith("/") or head.endswith("\\")):
            return tail
    return msg


def status_summary(rows: Iterable[dict], first: int = 3) -> tuple[dict[str, int], list[str]]:
    """Counts per status (every status present, zeros included) and the first messages of problems.

    Args:
        rows: dicts with ``status``, ``message`` and ``path`` (or ``video_id``).
        first: messages kept per problem status.

    Returns:
        (counts, lines like ``"a/b.mp4: error: message"``: the file named once).
    """
    counts: Counter = Counter({s: 0 for s in STATUSES})
    lines: list[str] = []
    per: Counter = Counter()
    for r in rows:
        counts[r["status"]] += 1
        if r["status"] not in ("ok", "no_face") and per[r["status"]] < first:
            per[r["status"]] += 1
            where = r.get("path") or r.get("video_id")
            lines.append(f"{where}: {r['status']}: {short_message(r.get('message'), where)}")
    return dict(counts), lines


__all__ = ["LOCK_NAME", "STATUSES", "STATUS_HINTS", "StageBusy", "closure_relpaths", "code_closure", "code_hash",
           "fingerprint", "item_key", "make_output_folder", "module_path", "short_message", "stage_lock",
           "status_summary"]
