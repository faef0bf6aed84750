"""Print (or check) the code deps of every stage in dvc.yaml: the import closure of its module.

    python scripts/dvc_deps.py            # print the expected deps per stage
    python scripts/dvc_deps.py --check    # exit 1 and show the difference when dvc.yaml disagrees

The same comparison runs in the tests (tests/test_contract.py); paste the printed lists into dvc.yaml
after adding or removing an import.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGE_MODULES = {"example": "facepipe.example", "manifest": "facepipe.stages.manifest",
                 "extract": "facepipe.stages.extract", "freq": "facepipe.stages.freq", "shard": "facepipe.stages.shard",
                 "train": "facepipe.stages.train", "evaluate": "facepipe.stages.evaluate"}


def expected() -> dict[str, list[str]]:
    from facepipe.stages.contract import closure_relpaths

    return {stage: closure_relpaths(mod) for stage, mod in STAGE_MODULES.items()}


def declared(dvc_yaml: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    doc = yaml.safe_load(dvc_yaml.read_text())
    out = {}
    for name, st in doc["stages"].items():
        body = st.get("do", st)
        out[name] = sorted(d for d in body.get("deps", []) if isinstance(d, str) and d.startswith("facepipe"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    want, have = expected(), declared()
    bad = 0
    for stage, deps in want.items():
        if args.check:
            missing, extra = set(deps) - set(have.get(stage, [])), set(have.get(stage, [])) - set(deps)
            if missing or extra:
                bad = 1
                print(f"{stage}: missing {sorted(missing)}, not imported {sorted(extra)}")
        else:
            print(f"{stage}:\n" + "\n".join(f"  - {d}" for d in deps))
    return bad


if __name__ == "__main__":
    raise SystemExit(main())
