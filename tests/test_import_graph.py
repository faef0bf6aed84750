"""No import circle among facepipe's modules (issue 22, item 2).

The graph is built from every import statement of every module, in any scope: a circle closed by an import inside
a function (``_registry`` importing ``baselines`` lazily while ``baselines`` imports ``_registry``, as before the
registry split) is still a circle, only one that fails later and in fewer places. Imports under
``if TYPE_CHECKING:`` never run and are left out. An edge goes to the module named (``from a.b import c`` names
``a.b.c`` when that is a module, else ``a.b``), not to the parents whose ``__init__`` Python also runs, as
import-linter's graph does.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "facepipe"


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module):
    """Import statements in any scope except under ``if TYPE_CHECKING:`` and in a module-level ``__getattr__`` (PEP 562
    lazy exports such as ``facepipe.predict`` and ``facepipe.data.make_loader``: they run on first access of that
    attribute, after every module is loaded, and code that needs the target imports it by name; the stage contract's
    code closures skip them by the same rule)."""
    todo = []
    for n in tree.body:
        if isinstance(n, ast.FunctionDef) and n.name == "__getattr__":
            continue
        todo.extend(n.orelse if isinstance(n, ast.If) and _is_type_checking(n) else [n])
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)  # the body never runs
            else:
                todo.append(child)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports (any scope but ``TYPE_CHECKING``)."""
    mods = _modules(root)
    pkg_name = root.name
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t.split(".")[0] != pkg_name:
                    continue
                while t and t not in mods:  # an attribute of a module: the module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (``[a, b, ..., a]``), or ``None``."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        return list(e.args[1])
    return None


def test_facepipe_has_no_import_circle():
    graph = import_graph()
    assert "facepipe.models._registry" in graph and "facepipe.models._factory" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_registry_is_imported_by_the_zoo_and_imports_none_of_it():
    graph = import_graph()
    reg = graph["facepipe.models._registry"]
    assert not {m for m in reg if m.startswith("facepipe.models")}, reg
    assert "facepipe.models._registry" in graph["facepipe.models.baselines"]
    assert "facepipe.models.baselines" in graph["facepipe.models._factory"]


@pytest.mark.parametrize("lazy", [False, True])
def test_a_circle_is_found_also_when_one_side_imports_inside_a_function(tmp_path, lazy):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub import a  # noqa\n")
    (pkg / "sub" / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                                      "from .b import thing\n")
    back = "def f():\n    from pkg.sub.a import x\n" if lazy else "from . import a\n"
    (pkg / "sub" / "b.py").write_text(back)
    (pkg / "c.py").write_text("import pkg.sub.a\n")  # only a TYPE_CHECKING import of c points back: no circle
    graph = import_graph(pkg)
    assert graph["pkg.sub.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.sub.a"}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.sub.a", "pkg.sub.b"}
    (pkg / "sub" / "b.py").write_text("import os\n")
    assert find_cycle(import_graph(pkg)) is None


TOP_LAYERS = ("facepipe.stages", "facepipe.cli", "facepipe.deepfakebench", "facepipe.inference", "facepipe.__main__")
"""The stages, and what drives them (the command line; the DeepfakeBench import, which hands its tables to the
shard stage; ``facepipe predict``, which runs the extract stage on new inputs). Every other module is a lower layer."""


def test_dependencies_point_one_way_no_lower_layer_imports_the_stages():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                    if d.startswith("facepipe.stages") and not m.startswith(TOP_LAYERS))
    assert upward == []
    assert not any(d.startswith(("facepipe.cli", "facepipe.deepfakebench")) for m, deps in graph.items()
                   if m.startswith("facepipe.stages") for d in deps)  # and the stages never import their drivers
