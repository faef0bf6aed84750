"""Print (or check) the code deps of every stage in dvc.yaml: the import closure of its module.

    python scripts/dvc_deps.py            # print the expected deps per stage
    python scripts/dvc_deps.py --check    # exit 1 and show the difference when dvc.yaml disagrees
    python scripts/dvc_deps.py --write    # rewrite the facepipe/ lines of each stage's deps in dvc.yaml

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

from facepipe.stages import STAGE_MODULES  # noqa: E402  (the one list of stages)


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


def write(dvc_yaml: Path = ROOT / "dvc.yaml") -> None:
    """Replace the ``- facepipe/...`` lines of every stage's deps with its closure (other lines kept)."""
    want = expected()
    out, stage = [], None
    lines = dvc_yaml.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if len(line) - len(line.lstrip()) == 2 and line.strip().endswith(":") and not line.strip().startswith("-"):
            stage = line.strip()[:-1]
        if line.strip().startswith("- facepipe/") and stage in want:
            indent = line[: len(line) - len(line.lstrip())]
            while i < len(lines) and lines[i].strip().startswith("- facepipe/"):
                i += 1
            out += [f"{indent}- {d}" for d in want[stage]]
            continue
        out.append(line)
        i += 1
    dvc_yaml.write_text("\n".join(out) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.write:
        write()
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
