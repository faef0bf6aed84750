"""Build `.dvc/plots/offline.html`: DVC's plots page with vega, vega-lite and vega-embed inlined, so `dvc plots show`
renders without a network (DVC's own page loads them from a CDN: blank offline).

The scripts come from the packages' npm tarballs (`npm pack vega@5 vega-lite@5 vega-embed@6`; their `build/*.min.js`),
each inlined with its package name, version and licence (all BSD-3-Clause) in a comment. `.dvc/config` points DVC at
the page (`plots.html_template = plots/offline.html`, relative to `.dvc/`); tests/test_plots.py opens what
`dvc plots show` writes in headless Chromium with the network off.

    python scripts/build_plots_template.py                 # runs `npm pack` in a temporary folder
    python scripts/build_plots_template.py --packs DIR     # or: the three .tgz files already in DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots" / "offline.html"
PACKAGES = {"vega": ("vega@5", "build/vega.min.js"), "vega-lite": ("vega-lite@5", "build/vega-lite.min.js"),
            "vega-embed": ("vega-embed@6", "build/vega-embed.min.js")}
# dvc-render's page (dvc_render/html.py PAGE_HTML) with the CDN <script> tags ({scripts}) replaced by the inlined ones
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- facepipe: vega, vega-lite and vega-embed inlined (scripts/build_plots_template.py): renders offline.
    vega, vega-lite, vega-embed: Copyright (c) University of Washington Interactive Data Lab. All rights reserved.
    Redistribution and use in source and binary forms, with or without modification, are permitted provided that the
    following conditions are met: 1. Redistributions of source code must retain the above copyright notice, this list of
    conditions and the following disclaimer. 2. Redistributions in binary form must reproduce the above copyright
    notice, this list of conditions and the following disclaimer in the documentation and/or other materials provided
    with the distribution. 3. Neither the name of the copyright holder nor the names of its contributors may be used to
    endorse or promote products derived from this software without specific prior written permission.
    THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES,
    INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
    DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
    SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
    SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
    WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
    OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE. -->
%s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def _member(tgz: Path, name: str, required: bool = True) -> str | None:
    with tarfile.open(tgz) as t:
        try:
            f = t.extractfile(f"package/{name}")
        except KeyError:
            f = None
        if f is None:
            if required:
                raise SystemExit(f"{tgz}: no package/{name}")
            return None
        return f.read().decode("utf-8")


def build(packs: Path) -> str:
    scripts = []
    for name, (_, path) in PACKAGES.items():
        tgz = sorted(packs.glob(f"{name}-[0-9]*.tgz"))
        if not tgz:
            raise SystemExit(f"{packs}: no {name}-<version>.tgz (npm pack {PACKAGES[name][0]})")
        meta = json.loads(_member(tgz[-1], "package.json"))
        code = _member(tgz[-1], path)
        for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
            if bad in code:
                raise SystemExit(f"{tgz[-1]}: {path} contains {bad!r}, which this page cannot inline")
        licence = (_member(tgz[-1], "LICENSE", required=False) or "").strip().replace("--", "- -")
        repo = meta.get("repository")
        repo = repo.get("url") if isinstance(repo, dict) else repo
        scripts.append(f"    <!-- {meta['name']} {meta['version']}, licence {meta['license']} "
                       f"(above; {repo}); {path} of its npm package"
                       + (f"\n{licence}" if licence else "") + "\n    -->\n    <script>" + code + "</script>")
    return PAGE % "\n".join(scripts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packs", type=Path, help="folder with the npm tarballs (default: npm pack into a temp folder)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        packs = args.packs
        if packs is None:
            packs = Path(tmp)
            subprocess.run(["npm", "pack", *(spec for spec, _ in PACKAGES.values())], cwd=packs, check=True,
                           capture_output=True)
        page = build(packs)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page, encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}: {len(page) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
