"""``facepipe quickstart``: the DVC pipeline on the bundled example, in a sandbox project beside the checkout.

DVC writes ``dvc.lock`` beside ``dvc.yaml`` and refuses to run when that file is git-ignored ("'dvc.lock' is
git-ignored"); the lock of a run holds the hashes of its outputs, which differ from machine to machine (training is
not bit-reproducible across CPUs). So the quick start does not run in the checkout itself: it makes ``example/`` (git-
ignored by the checkout) a project of its own — ``dvc.yaml``, ``params.yaml`` and DVC's offline plots page copied from
the checkout, ``facepipe/`` a symbolic link to the checkout's package (the stages' code dependencies), its own git and
DVC repository with one commit — and runs ``dvc repro`` there. The checkout's ``git status`` stays clean; in the
sandbox, ``dvc repro``, ``dvc metrics show``, ``dvc plots show`` and ``dvc exp run`` work as in any DVC project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from facepipe.errors import InputError

PROJECT_FILES = ("dvc.yaml", "params.yaml")


def _git(args: list[str], cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=facepipe", "-c", "user.email=quickstart@facepipe.invalid", *args],
                   cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def make_sandbox(checkout: str | os.PathLike, folder: str | os.PathLike = "example",
                 params: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Create (or reuse) the sandbox project ``checkout/folder`` (see the module docstring).

    Args:
        checkout: the facepipe checkout (holds ``dvc.yaml``, ``params.yaml``, ``facepipe/``, ``.dvc/``).
        folder: the sandbox, relative to ``checkout`` (git-ignored there: ``/example/`` is in its ``.gitignore``).
        params: a params.yaml to copy instead of the checkout's.

    Returns:
        ``(sandbox, created)``: ``created`` is False when an earlier quick start made it (its ``params.yaml``, maybe
        edited since, is kept; ``dvc.yaml`` is refreshed from the checkout).

    Raises:
        InputError: ``checkout`` is not a facepipe checkout, or ``git`` is missing.
    """
    root = Path(checkout).resolve()
    missing = [n for n in (*PROJECT_FILES, "facepipe") if not (root / n).exists()]
    if missing:
        raise InputError(f"{root}: not a facepipe checkout (no {', '.join(missing)}); run the quick start from the "
                         "repository's root")
    if shutil.which("git") is None:
        raise InputError("quickstart: git is not installed (DVC keeps its experiments in git)")
    box = root / folder
    created = not (box / ".dvc").is_dir()
    box.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "dvc.yaml", box / "dvc.yaml")
    if created or params is not None:
        shutil.copy(Path(params) if params is not None else root / "params.yaml", box / "params.yaml")
    link = box / "facepipe"
    if not link.is_symlink():
        link.symlink_to(os.path.relpath(root / "facepipe", box), target_is_directory=True)
    if created:
        if not (box / ".git").exists():
            _git(["init", "-q"], box)
        subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=box, check=True)
        for name in ("config",):
            if (root / ".dvc" / name).is_file():
                shutil.copy(root / ".dvc" / name, box / ".dvc" / name)
        if (root / ".dvc" / "plots").is_dir():
            shutil.copytree(root / ".dvc" / "plots", box / ".dvc" / "plots", dirs_exist_ok=True)
        (box / ".gitignore").write_text("/facepipe\n/dvc_plots/\n")
        _git(["add", "-A"], box)
        _git(["commit", "-qm", "facepipe quickstart: the pipeline on the bundled example"], box)
    return box, created


def run(checkout: str | os.PathLike = ".", folder: str | os.PathLike = "example",
        params: str | os.PathLike | None = None) -> Path:
    """Make the sandbox (:func:`make_sandbox`) and run ``dvc repro`` in it (DVC's output streamed).

    Returns:
        The sandbox folder.

    Raises:
        InputError: see :func:`make_sandbox`; ``dvc repro`` failed (its exit status).
    """
    box, _ = make_sandbox(checkout, folder, params)
    env = dict(os.environ)  # the stages run `facepipe ...`: this interpreter's scripts first on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    r = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=box, env=env)
    if r.returncode:
        raise InputError(f"quickstart: 'dvc repro' in {box} failed (exit {r.returncode}); its output is above")
    return box


__all__ = ["PROJECT_FILES", "make_sandbox", "run"]
