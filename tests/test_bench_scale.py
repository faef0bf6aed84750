"""``scripts/bench_scale.py`` (issue 26) runs end to end on small synthetic sets: every stage asked for has a cell per
size and a growth exponent, the report and JSON agree, and a read-only stage shorter than 0.2 s is repeated and its
median run reported (a single 10 ms run had given the loader a noise exponent of 1.16)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_scale_benchmark_reports_every_stage_and_size(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--sizes", "60,120",
                           "--stages", "leakage,shard-tables,loader", "--out", str(out), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "bench_scale.json").read_text())["results"]
    assert set(res) == {"leakage", "shard-tables", "loader"}
    for stage, per in res.items():
        assert set(per) == {"60", "120"}, stage
        for r in per.values():
            assert r["seconds"] > 0 and r["peak_mb"] > 0, (stage, r)
    assert res["shard-tables"]["120"]["info"]["rows_read"] == 120 * 32  # every face read back in write order
    assert res["loader"]["120"]["info"]["runs"] > 1  # milliseconds: repeated, the median reported
    assert "runs" not in res["shard-tables"]["120"]["info"]  # writes files: never repeated
    table = (out / "bench_scale.md").read_text()
    for stage in res:
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| {stage} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "60->120" and float(cells[3]) == float(cells[3])  # an exponent, not '-'
