"""The documentation: the site builds strictly with its generated reference pages, and every snippet in the README
and docs/ runs — ``python`` blocks are executed (in tmp_path, with the example's shards at ``data/shards``), every
``facepipe`` command line in a ``bash`` block is checked against the CLI's click tree (an option or command that
does not exist fails), and ``yaml`` blocks of params validate against the stages' models. A block that cannot run
in a test is marked ``<!-- snippet: skip (why) -->`` on the line before it, and EXPECTED_SKIPS lists every such
mark, so a new untested snippet has to be declared here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))

EXPECTED_SKIPS = {
    ("docs/concepts/loader.md", "needs a GPU"),
}
"""(file, reason) of every block marked ``<!-- snippet: skip (reason) -->``."""

SKIP_MARK = re.compile(r"^<!--\s*snippet:\s*skip\s*\((?P<why>[^)]+)\)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    def __str__(self) -> str:
        return f"{self.rel}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one markdown file, each with the skip mark on the line before it, if any."""
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```+\s*([\w+-]*)", lines[i])
        if not m:
            assert not SKIP_MARK.match(lines[i].strip()) or (i + 1 < len(lines) and lines[i + 1].lstrip().startswith(
                "```")), f"{path}:{i + 1}: a snippet skip mark must stand on the line right before a code block"
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        prev = lines[start - 1].strip() if start > 0 else ""
        mark = SKIP_MARK.match(prev)
        out.append(Block(path, start + 1, lang, "\n".join(body) + "\n", mark.group("why") if mark else None))
        i += 1
    return out


ALL_BLOCKS = [b for p in DOC_FILES for b in blocks(p)]
PYTHON = [b for b in ALL_BLOCKS if b.lang in ("python", "py")]
BASH = [b for b in ALL_BLOCKS if b.lang in ("bash", "sh", "shell", "console")]
YAML = [b for b in ALL_BLOCKS if b.lang in ("yaml", "yml")]


def test_the_docs_have_snippets_and_only_the_declared_skips():
    assert len(PYTHON) >= 3 and len(BASH) >= 8, (len(PYTHON), len(BASH))
    skips = {(b.rel, b.skip) for b in ALL_BLOCKS if b.skip}
    assert skips == EXPECTED_SKIPS, ("snippets marked skip differ from tests/test_docs.py EXPECTED_SKIPS: "
                                     f"marked {sorted(skips)}")
    assert sum(1 for b in ALL_BLOCKS if b.skip) == len(EXPECTED_SKIPS)


# ---------------------------------------------------------------------------------------------------------------
# python blocks


@pytest.fixture()
def docs_workdir(tmp_path, example_shards, example_clip_shards, example_checkpoint, monkeypatch):
    """A working directory like the repository's after ``dvc repro``: ``data/shards`` is the example's shard set,
    ``data/clip_shards`` its clip set (the pipeline's clip variant), ``data/example/videos`` its videos,
    ``data/train/best.pt`` a checkpoint trained on it."""
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "example").mkdir()
    (tmp_path / "data" / "example" / "videos").symlink_to(example_shards.parent / "videos", target_is_directory=True)
    (tmp_path / "data" / "train" / "best.pt").symlink_to(example_checkpoint)
    (tmp_path / "data" / "shards").symlink_to(example_shards, target_is_directory=True)
    (tmp_path / "data" / "clip_shards").symlink_to(example_clip_shards, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    if "datasets" in sys.modules:  # already imported by another test: its cache path was read at import
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_DATASETS_CACHE", tmp_path / "hf", raising=False)
    return tmp_path


@pytest.mark.slow
@pytest.mark.parametrize("block", [b for b in PYTHON if not b.skip], ids=str)
def test_python_snippet_runs(block, docs_workdir):
    code = compile(block.code, str(block), "exec")
    namespace = {"__name__": "__docs_snippet__"}
    exec(code, namespace)  # noqa: S102 - the snippet is the repository's own documentation


# ---------------------------------------------------------------------------------------------------------------
# bash blocks: facepipe command lines against the click tree


def _cli():
    import typer

    from facepipe.cli import app

    return typer.main.get_command(app)


def _option_names(cmd) -> set[str]:
    names = {"--help"}
    for p in cmd.params:
        if p.param_type_name == "option":
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def _commands(code: str) -> list[list[str]]:
    """Shell commands of a block as token lists: comments dropped, backslash continuations and synopsis lines
    (indented lines starting with ``[`` or ``-``) joined, split on newlines, ``;``, ``&&``, ``&`` and on ``|`` /
    ``||`` between spaces (``main|all`` in a synopsis is one token)."""
    lines = []
    for raw in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw)
        if lines and re.match(r"^\s+[\[-]", line):
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
    lex = shlex.shlex("\n".join(lines), posix=True, punctuation_chars=";&\n")
    lex.whitespace = " \t\r"
    lex.whitespace_split = True
    lex.commenters = ""
    out, cur = [], []
    for tok in lex:
        if tok and (set(tok) <= set(";&\n") or tok in ("|", "||")):
            if cur:
                out.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        out.append(cur)
    return out


def _facepipe_args(tokens: list[str]) -> list[str] | None:
    """The arguments after ``facepipe`` (``facepipe``, ``.venv/bin/facepipe``, ``python -m facepipe``,
    ``torchrun … -m facepipe``; ``VAR=value`` prefixes skipped), or None for any other command."""
    i = 0
    while i < len(tokens) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[i]):
        i += 1
    if i < len(tokens) and os.path.basename(tokens[i]) == "facepipe":
        return tokens[i + 1:]
    for j in range(i, len(tokens) - 1):
        if tokens[j] == "-m" and tokens[j + 1] == "facepipe":
            return tokens[j + 2:]
    return None


def check_command_line(root, args: list[str]) -> list[str]:
    """Problems of one facepipe command line: unknown sub-commands or options (placeholders like ``DIR`` are
    arguments; ``[--opt VALUE]`` synopsis brackets are read through)."""
    problems, cmd, path = [], root, ["facepipe"]
    for i, raw in enumerate(args):
        tok = raw.strip("[]()")
        if not tok or tok in ("…", "..."):
            continue
        if i and args[i - 1].strip("[") in ("-S", "--set") and len(path) == 2 and "=" in tok:
            key = tok.split("=", 1)[0].removeprefix("params.yaml:")
            key = key if key.split(".", 1)[0] in _params_models() else f"{path[1]}.{key}"
            problem = params_key_problem(key)
            if problem:
                problems.append(f"{' '.join(path)} -S: {problem}")
            continue
        if tok.startswith("-") and len(tok) > 1 and not re.match(r"^-\d", tok):
            name = tok.split("=", 1)[0]
            if name not in _option_names(cmd):
                problems.append(f"{' '.join(path)}: no option {name}")
            continue
        sub = getattr(cmd, "commands", None)
        if sub is not None and tok in sub and raw == tok:
            cmd, path = sub[tok], path + [tok]
        elif sub is not None and path == ["facepipe"] and re.fullmatch(r"[a-z][a-z-]*", tok):
            problems.append(f"facepipe: no command {tok}")
            break
    return problems


@pytest.mark.parametrize("block", BASH, ids=str)
def test_bash_snippet_uses_real_commands_and_options(block):
    root = _cli()
    lines = [a for a in map(_facepipe_args, _commands(block.code)) if a is not None]
    problems = [p for a in lines for p in check_command_line(root, a)]
    assert not problems, f"{block}: " + "; ".join(problems)


def test_the_cli_check_fails_on_a_wrong_option():
    root = _cli()
    assert check_command_line(root, ["extract", "--video-dir", "D", "[--num-frames", "32]"]) == []
    assert check_command_line(root, ["extract", "--no-such-option", "1"]) == ["facepipe extract: no option "
                                                                              "--no-such-option"]
    assert check_command_line(root, ["exctract", "--out", "x"]) == ["facepipe: no command exctract"]
    assert check_command_line(root, ["export", "deepfakebench", "--out", "x"]) == []
    assert check_command_line(root, ["extract", "-S", "labels.min_score=0.01", "--set", "extract.align.size=9"]) == []
    assert "min_scor" in check_command_line(root, ["extract", "-S", "labels.min_scor=0.01"])[0]
    cmds = _commands("facepipe --help; facepipe models\n.venv/bin/facepipe shard --out s3://b \\\n  --max-samples 9 "
                     "# tail\nfacepipe extract --out O\n    [--select main|all] [--strict]\n")
    assert [_facepipe_args(c) for c in cmds] == [["--help"], ["models"], ["shard", "--out", "s3://b", "--max-samples",
                                                 "9"], ["extract", "--out", "O", "[--select", "main|all]", "[--strict]"]]
    assert _facepipe_args(["PATH=x", "dvc", "repro"]) is None


# ---------------------------------------------------------------------------------------------------------------
# yaml blocks: params sections


def _params_models() -> dict:
    from facepipe.datasets import ManifestConfig
    from facepipe.freq.config import FreqConfig
    from facepipe.stages.benchmark import BenchmarkConfig
    from facepipe.stages.evaluate import EvaluateConfig
    from facepipe.stages.explain import ExplainConfig
    from facepipe.stages.extract import ExtractConfig
    from facepipe.stages.shard import ShardConfig
    from facepipe.stages.train import TrainConfig

    return {"manifest": ManifestConfig, "extract": ExtractConfig, "freq": FreqConfig, "shard": ShardConfig,
            "train": TrainConfig, "evaluate": EvaluateConfig, "benchmark": BenchmarkConfig, "explain": ExplainConfig}


def params_key_problem(key: str) -> str | None:
    """Why a dotted params key (``dvc exp run -S train.seed=1``) names no parameter, or None."""
    from pydantic import BaseModel

    section, *rest = key.split(".")
    model = _params_models().get(section)
    if model is None:
        return f"no params section {section!r}"
    for part in rest:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None  # a mapping or list value (loss_weights.<name>, …): its keys are free
        fields = {}
        for n, f in model.model_fields.items():
            choices = getattr(f.validation_alias, "choices", None) or [f.validation_alias or f.alias or n]
            fields.update({c: f for c in [n, *choices] if isinstance(c, str)})
        if part not in fields:
            return f"no parameter {key!r} ({part!r} is not a key of {model.__name__})"
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) else next(
            (a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return None


@pytest.mark.parametrize("block", BASH, ids=str)
def test_bash_snippet_dvc_exp_keys_are_params(block):
    problems = []
    for cmd in _commands(block.code):
        if cmd[:3] != ["dvc", "exp", "run"]:
            continue
        for flag, value in zip(cmd, cmd[1:]):
            if flag in ("-S", "--set-param"):
                problem = params_key_problem(value.split("=", 1)[0])
                if problem:
                    problems.append(problem)
    assert not problems, f"{block}: " + "; ".join(problems)


def test_params_key_check_fails_on_a_wrong_key():
    assert params_key_problem("train.seed") is None
    assert params_key_problem("extract.labels.min_score") is None
    assert "min_scor" in params_key_problem("extract.labels.min_scor")
    assert "section" in params_key_problem("trian.seed")


@pytest.mark.parametrize("block", YAML, ids=str)
def test_yaml_snippet_validates_as_params(block):
    from facepipe.config import DatasetEntry

    models = _params_models()
    doc = yaml.safe_load(block.code)
    assert isinstance(doc, dict) and doc, f"{block}: not a params mapping"
    for section, value in doc.items():
        if section == "datasets":
            for entry in value.values():
                DatasetEntry.model_validate(entry)
        else:
            assert section in models, f"{block}: unknown params section {section!r}"
            models[section].model_validate(value)


# ---------------------------------------------------------------------------------------------------------------
# the site


@pytest.mark.slow
def test_mkdocs_build_strict_generates_the_reference(tmp_path):
    from facepipe.models import list_models

    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    assert "--video-dir" in cli and "facepipe export deepfakebench" in cli
    params = (site / "reference" / "params" / "index.html").read_text()
    row = re.search(r"<code>extract\.labels\.min_score</code></td>(.*?)</tr>", params, re.S)
    assert row and "0.002" in row.group(1)
    zoo = (site / "reference" / "models" / "index.html").read_text()
    assert all(f'id="{name}"' in zoo for name in list_models())
    api = (site / "reference" / "api" / "data" / "index.html").read_text()
    assert "make_loader" in api and "epoch_samples" in api


def _inline_commands(path: Path) -> list[tuple[int, list[str]]]:
    """``facepipe …`` command lines written as inline code in the prose (outside code blocks)."""
    out, fence = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            fence = not fence
            continue
        if fence:
            continue
        for span in re.findall(r"`([^`]+)`", line):
            for cmd in _commands(span):
                args = _facepipe_args(cmd)
                if args is not None and args:
                    out.append((n, args))
    return out


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_inline_facepipe_commands_use_real_options(path):
    root = _cli()
    problems = [f"{path.name}:{n}: {p}" for n, args in _inline_commands(path) for p in check_command_line(root, args)]
    assert not problems, "; ".join(problems)


def test_readme_links_resolve():
    """The README's relative links (to the docs pages) name files that exist; mkdocs checks the site's own."""
    text = (ROOT / "README.md").read_text()
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"^[a-z]+:", t)]
    assert len(links) >= 10
    missing = [t for t in links if not (ROOT / t.split("#", 1)[0]).exists()]
    assert not missing, missing
