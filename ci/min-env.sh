#!/usr/bin/env bash
# Build .venv-min with every direct dependency at its declared floor (ci/min-constraints.txt) and run the smoke
# subset there. Packages come from PyPI itself: this machine's local wheel folder (PIP_FIND_LINKS, pip.conf)
# holds a CPU-only torch build that PyPI's torchvision cannot load.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .venv-min
python3 -m venv .venv-min
env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null .venv-min/bin/pip install -q -c ci/min-constraints.txt -e ".[dev]"
.venv-min/bin/python - <<'PY'
import importlib.metadata as md, re
pins = dict(l.split("==") for l in open("ci/min-constraints.txt").read().splitlines() if "==" in l and not l.startswith("#"))
bad = {k: (v, md.version(k)) for k, v in pins.items() if md.version(k).split("+")[0] != v}
assert not bad, f"not installed at the floor: {bad}"
print(f"floors installed: {len(pins)} packages")
PY
# the fast set of these files plus their real-media tests (decoding real clips is where old av/decord differ)
.venv-min/bin/python -m pytest -q -p no:cacheprovider -m "not slow and not integration and not gpu" tests/test_video.py tests/test_extract.py tests/test_labels.py \
    tests/test_datasets.py tests/test_protocols.py tests/test_data.py tests/test_train.py tests/test_metrics.py \
    tests/test_freq.py tests/test_cli.py tests/test_contract.py tests/test_explain.py tests/test_storage.py \
    tests/test_stills.py
