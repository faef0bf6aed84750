"""The declared dependency floors are the versions CI tests (ci/min-constraints.txt), and nothing needs newer APIs
than they have (checked by running the smoke subset on exactly those versions in .ci/run)."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT


def _floors() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=|==)\s*([^,;\s]+)", d)
        assert m, f"dependency without a floor: {d}"
        out[m.group(1).lower()] = m.group(3)
    return out


def test_every_floor_is_pinned_in_the_ci_constraints_and_nothing_else():
    pins = {}
    for line in (ROOT / "ci" / "min-constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    assert pins == _floors()
