"""The soak's short variant (scripts/soak_extract.py; issue 27, item 5): 12 videos from the shared real clips (3 of
them broken) extracted while the whole run is killed with SIGKILL 3 times at random moments and restarted; the end
result must equal an uninterrupted run's, with no temporary file, no unlisted crop and no face listed twice."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REAL, ROOT


@pytest.mark.slow
@pytest.mark.real_data
def test_the_short_soak_passes(tmp_path):
    work = tmp_path / "soak"
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak_extract.py"), "--videos", "12", "--kills", "3",
                        "--num-frames", "4", "--min-delay", "0", "--max-delay", "1", "--work", str(work),
                        "--media", str(REAL)],
                       capture_output=True, text=True, timeout=900)
    report = json.loads((work / "soak.json").read_text())
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert report["kills"] == 3 and report["corpus"] == {"linked": 9, "truncated": 1, "empty": 1, "text": 1}
    checks = report["checks"]
    assert checks["faces.parquet equal"] and checks["videos.parquet equal"] and checks["crops equal"]
    assert checks["duplicated faces"] == 0 and checks["unlisted crop files"] == 0 and checks["temporary files"] == []
    assert checks["faces"] > 0 and checks["statuses"]["ok"] >= 6 and "error" not in checks["statuses"]
    assert sum(checks["statuses"].values()) == 12
