"""Imports point downwards only, and no file imports itself through others (see stabledub_core/layers.py).

Every ``.py`` file of ``stabledub_core`` and ``nodes`` is parsed with ``ast``; every import counts, at module top or
inside a function, absolute or relative, under ``if TYPE_CHECKING:`` too. The checks:

- no import from a lower layer of ``stabledub_core`` to a higher one (``stabledub_core.layers.LAYERS``);
- no cycle between files (the strongly connected components of the file import graph);
- ``stabledub_core`` never imports ComfyUI (``comfy``, ``folder_paths``, ``server``, ``nodes``, ...);
- ``nodes/`` imports only downwards: ``stabledub_core`` and itself, not the repository's entry module, tests or bench.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from stabledub_core.layers import LAYERS, layer_index

REPO = Path(__file__).resolve().parents[1]
COMFYUI_MODULES = {"comfy", "comfy_extras", "comfy_execution", "comfyui", "folder_paths", "server", "execution",
                   "nodes", "latent_preview", "node_helpers"}
NOT_FOR_NODES = {"tests", "bench", "web", "workflows"}  # beside nodes/ in the repository, never imported by it


# ------------------------------------------------------------------------------------------------------ the checker

def module_files(package_dir: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir`` (``__init__`` = the package)."""
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (package, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, int]]:
    """``(absolute dotted name, line)`` of everything a module imports, anywhere in its body.

    ``from a.b import c`` yields ``a.b.c`` (which the graph resolves to module ``a.b.c`` if it exists, else to
    ``a.b``); relative imports are resolved against ``module``.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package) - 1:
                    base = ["<beyond the top package>"]
                else:
                    base = package[:len(package) - (node.level - 1)]
            else:
                base = []
            prefix = ".".join(base + (node.module.split(".") if node.module else []))
            found += [(f"{prefix}.{alias.name}" if alias.name != "*" else prefix, node.lineno) for alias in node.names]
    return found


def resolve(name: str, modules: set[str]) -> str | None:
    """The deepest module of ``modules`` that ``name`` is or lies in (``a.b.c`` -> ``a.b`` if no module ``a.b.c``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph(files: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, list[tuple[str, int]]]]:
    """The file import graph among ``files`` and, per module, its imports of anything outside them (with lines)."""
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in files}
    external: dict[str, list[tuple[str, int]]] = {m: [] for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, line in imported_names(tree, module, path.name == "__init__.py"):
            target = resolve(name, modules)
            if target is None:
                external[module].append((name, line))
            elif target != module:
                graph[module].add(target)
    return graph, external


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one file (Tarjan), each sorted, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative, so deep graphs cannot hit the recursion limit
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found, key=lambda c: (-len(c), c))


def layer_of(module: str, package: str = "stabledub_core") -> int:
    """The layer of a module of ``package`` (its first name below the package; the package itself: ``__init__``)."""
    parts = module.split(".")
    return layer_index(parts[1] if len(parts) > 1 else "__init__")


def upward_imports(graph: dict[str, set[str]], layer=layer_of) -> list[str]:
    """``"a (layer) -> b (layer)"`` for every import of a module from a higher layer."""
    return [f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
            for source in sorted(graph) for target in sorted(graph[source]) if layer(target) > layer(source)]


def describe_cycles(components: list[list[str]], graph: dict[str, set[str]]) -> list[str]:
    """One line per cycle: its files and the imports between them."""
    lines = []
    for component in components:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in members]
        lines.append(f"{len(component)} files: " + "; ".join(edges))
    return lines


# ------------------------------------------------------------------------------------------------ the real package

@pytest.fixture(scope="module")
def core():
    return import_graph(module_files(REPO / "stabledub_core", "stabledub_core"))


@pytest.fixture(scope="module")
def node_pack():
    return import_graph(module_files(REPO / "nodes", "nodes"))


def test_every_part_of_the_package_has_a_layer():
    names = {p.stem if p.is_file() else p.name for p in (REPO / "stabledub_core").iterdir()
             if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()}
    declared = {name for layer in LAYERS for name in layer}
    assert not names - declared, f"add these to stabledub_core/layers.py: {sorted(names - declared)}"


def test_imports_point_downwards(core):
    graph, _ = core
    bad = upward_imports(graph)
    assert not bad, "imports from a lower layer to a higher one (stabledub_core/layers.py):\n  " + "\n  ".join(bad)


def test_no_import_cycles(core):
    graph, _ = core
    found = describe_cycles(cycles(graph), graph)
    assert not found, "files that import each other (directly or through others):\n  " + "\n  ".join(found)


def test_the_package_never_imports_comfyui(core):
    _, external = core
    bad = [f"{module}:{line} imports {name}" for module, names in sorted(external.items()) for name, line in names
           if name.split(".")[0] in COMFYUI_MODULES or name.startswith("<beyond")]
    assert not bad, "stabledub_core must run without ComfyUI:\n  " + "\n  ".join(bad)


def test_nodes_import_only_downwards(node_pack):
    graph, external = node_pack
    bad = [f"{module}:{line} imports {name}" for module, names in sorted(external.items()) for name, line in names
           if name.startswith("<beyond") or name.split(".")[0] in NOT_FOR_NODES]
    assert not bad, "nodes/ may import stabledub_core and itself, not what sits above or beside it:\n  " + \
        "\n  ".join(bad)
    found = describe_cycles(cycles(graph), graph)
    assert not found, "node files that import each other:\n  " + "\n  ".join(found)


# ---------------------------------------------------------------------------------------- the checker can fail

def test_cycles_are_found_in_a_synthetic_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"g"}}
    assert cycles(graph) == [["a", "b", "c"], ["e", "f"]]  # a self-import is not a cycle between files
    assert cycles({"a": {"b"}, "b": set()}) == []
    chain = {str(i): {str(i + 1)} for i in range(5000)} | {"5000": {"0"}}  # deep: no recursion limit
    assert [len(c) for c in cycles(chain)] == [5001]


def test_upward_imports_are_found_in_a_synthetic_graph():
    graph = {"stabledub_core.masks.a": {"stabledub_core.pipeline.b", "stabledub_core.errors"},
             "stabledub_core.pipeline.b": {"stabledub_core.masks.a"}, "stabledub_core.errors": set()}
    assert upward_imports(graph) == ["stabledub_core.masks.a (layer 4) imports stabledub_core.pipeline.b (layer 6)"]
    with pytest.raises(KeyError):
        layer_of("stabledub_core.nowhere.x")


def test_the_parser_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "stabledub_core"
    (pkg / "masks").mkdir(parents=True)
    (pkg / "pipeline").mkdir()
    for init in (pkg, pkg / "masks", pkg / "pipeline"):
        (init / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "masks" / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import b\n"                                     # relative, a sibling module
        "from ..errors import X\n"                              # relative, two levels
        "if TYPE_CHECKING:\n    from stabledub_core.pipeline.c import C\n"
        "def f():\n    import folder_paths\n    from stabledub_core.pipeline import c\n")  # function-local
    (pkg / "masks" / "b.py").write_text("import stabledub_core.masks.a\n")
    (pkg / "pipeline" / "c.py").write_text("from ... import beyond\n")
    graph, external = import_graph(module_files(pkg, "stabledub_core"))
    assert graph["stabledub_core.masks.a"] == {"stabledub_core.masks.b", "stabledub_core.errors",
                                               "stabledub_core.pipeline.c"}
    assert cycles(graph) == [["stabledub_core.masks.a", "stabledub_core.masks.b"]]
    assert len(upward_imports(graph)) == 1
    assert [n for n, _ in external["stabledub_core.masks.a"]] == ["typing.TYPE_CHECKING", "folder_paths"]
    assert external["stabledub_core.pipeline.c"][0][0].startswith("<beyond")
