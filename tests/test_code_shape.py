"""Issue 22's size targets: no function of facepipe/ over 80 lines (ruff's C901 / PLR0915 check complexity and
statements; lines are checked here), except in the files pyproject.toml's ``[tool.ruff.lint.per-file-ignores]``
still lists (the list shrinks to empty as the big functions are split)."""

from __future__ import annotations

import ast
import tomllib

import pytest

from tests.conftest import ROOT

MAX_LINES = 80


def _exempt() -> set[str]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(cfg["tool"]["ruff"]["lint"].get("per-file-ignores", {}))


def _long_functions(path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path.relative_to(ROOT).as_posix()}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > MAX_LINES]


def test_no_function_over_80_lines_outside_the_listed_files():
    exempt = _exempt()
    long = [f for p in sorted((ROOT / "facepipe").rglob("*.py")) if p.relative_to(ROOT).as_posix() not in exempt
            for f in _long_functions(p)]
    assert not long, f"functions over {MAX_LINES} lines (split them into named steps): {long}"


def test_no_file_is_exempt_from_the_size_targets():
    """Issue 22 item 2: the per-file ignore list is empty once the restructure is done; it stays empty."""
    assert not _exempt(), f"files exempt from C901 / PLR0915 / the 80-line check: {sorted(_exempt())}"


@pytest.mark.parametrize("package", ["stages/extract", "explain", "deepfakebench", "cli", "data"])
def test_the_split_packages_are_on_no_exemption_list(package):
    assert not any(f.startswith(f"facepipe/{package}/") for f in _exempt())
    assert not [f for p in sorted((ROOT / "facepipe" / package).glob("*.py")) for f in _long_functions(p)]
