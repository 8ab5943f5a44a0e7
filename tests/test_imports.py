"""
The layers of xrelay point one way, read from the source with C{ast} (nothing is
imported): value types at the bottom, the interfaces above them, the stages above, the
operator modules above the stages, the C{xrelay} command on top.

Every import counts: module level, inside C{if TYPE_CHECKING:}, and inside functions (a
function-level import is a cycle deferred, not removed).  A failure names the modules
and the lines, so the fix is to move a name down a layer, not to hide the import.
"""

from __future__ import annotations

import ast
import pathlib

import attrs
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "xrelay"

#: The bottom layer: values, errors, the entry lifecycle, the configuration's values and
#: the state-machine mechanism.  Each imports only from this set; L{xrelay.interfaces}
#: imports nothing else of xrelay.
BOTTOM = frozenset({
    "xrelay.addresses", "xrelay.clouds", "xrelay.config", "xrelay.config.accounts",
    "xrelay.config.sandbox", "xrelay.config.validators", "xrelay.config.values",
    "xrelay.config.warnings", "xrelay.config.whole", "xrelay.envelope",
    "xrelay.history.records", "xrelay.inbound.headers", "xrelay.lifecycle",
    "xrelay.passwords", "xrelay.records", "xrelay.statemachine",
})

#: The stages: they report through the interfaces and L{xrelay.events}, never through
#: the operator package above them.
STAGES = ("xrelay.inbound", "xrelay.delivery", "xrelay.transport", "xrelay.tokens",
          "xrelay.spool", "xrelay.history")


@attrs.frozen
class Edge:
    source: str
    target: str
    line: int


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str, path: pathlib.Path, node: ast.AST,
             known: dict[str, pathlib.Path]) -> set[str]:
    """The xrelay modules one import statement names (a submodule where it is one)."""
    found: set[str] = set()
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            full = f"{base}.{alias.name}"
            found.add(full if full in known else base)
    resolved = set()
    for name in found:
        # "import xrelay.a.b" names xrelay.a.b; an unknown tail is an attribute.
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("xrelay"):
            resolved.add(name)
    return resolved


def import_graph() -> dict[str, list[Edge]]:
    """Module -> its imports of other xrelay modules, every kind counted."""
    known = _modules()
    graph: dict[str, list[Edge]] = {}
    for module, path in known.items():
        edges = []
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges += [Edge(module, target, node.lineno)
                          for target in _targets(module, path, node, known)
                          if target != module]
        graph[module] = edges
    return graph


def cycles(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph[v]:
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Edge]]:
    return import_graph()


def test_the_graph_sees_every_kind_of_import() -> None:
    """The reader itself: a cycle hidden in TYPE_CHECKING or a function is found."""
    source = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from xrelay.config import Config\n"
        "def f():\n    from xrelay import records\n    import xrelay.spool\n")
    known = _modules()
    path = PACKAGE / "lifecycle.py"
    seen = set()
    for node in ast.walk(source):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            seen |= _targets("xrelay.lifecycle", path, node, known)
    assert seen == {"xrelay.config", "xrelay.records", "xrelay.spool"}
    looped = {"a": [Edge("a", "b", 1)], "b": [Edge("b", "c", 1)], "c": [Edge("c", "a", 9)]}
    assert cycles(looped) == [["a", "b", "c"]]


def test_no_import_cycle(graph: dict[str, list[Edge]]) -> None:
    found = cycles(graph)
    described = []
    for component in found:
        members = set(component)
        described.append("\n".join(
            f"  {e.source} -> {e.target} (line {e.line})"
            for m in component for e in graph[m] if e.target in members))
    assert not found, "import cycles (move the shared name down a layer):\n" + \
        "\n\n".join(described)


def test_bottom_layer_imports_only_the_bottom_layer(graph: dict[str, list[Edge]]) -> None:
    assert BOTTOM <= set(graph), BOTTOM - set(graph)
    upward = [f"{e.source} -> {e.target} (line {e.line})"
              for m in sorted(BOTTOM) for e in graph[m] if e.target not in BOTTOM]
    assert not upward, "the bottom layer imports above itself:\n" + "\n".join(upward)


def test_interfaces_import_no_implementation(graph: dict[str, list[Edge]]) -> None:
    implementations = [f"xrelay.interfaces -> {e.target} (line {e.line})"
                       for e in graph["xrelay.interfaces"] if e.target not in BOTTOM]
    assert not implementations, "\n".join(implementations)


def test_stages_do_not_import_the_operator_package(graph: dict[str, list[Edge]]) -> None:
    upward = [f"{e.source} -> {e.target} (line {e.line})"
              for m, edges in graph.items() if any(_within(m, s) for s in STAGES)
              for e in edges if _within(e.target, "xrelay.operations")]
    assert not upward, "\n".join(upward)


def test_operations_do_not_import_the_command(graph: dict[str, list[Edge]]) -> None:
    upward = [f"{e.source} -> {e.target} (line {e.line})"
              for m, edges in graph.items() if _within(m, "xrelay.operations")
              for e in edges if e.target == "xrelay.cli"]
    assert not upward, "\n".join(upward)


def _engine_private_names() -> set[str]:
    """The underscore names of L{xrelay.delivery.engine.DeliveryEngine}."""
    tree = ast.parse((PACKAGE / "delivery" / "engine.py").read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "DeliveryEngine":
            for inner in ast.walk(node):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(inner.name)
                elif (isinstance(inner, ast.Attribute) and isinstance(inner.value, ast.Name)
                      and inner.value.id == "self"):
                    names.add(inner.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(module: str, tree: ast.AST, private: set[str]) -> list[str]:
    """Where C{tree} reaches for one of C{private} on another object than itself."""
    uses = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in private
                and not (isinstance(node.value, ast.Name)
                         and node.value.id in ("self", "cls"))):
            uses.append(f"{module} line {node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.ImportFrom) and node.module == "xrelay.delivery.engine"
              and any(a.name.startswith("_") for a in node.names)):
            uses.append(f"{module} line {node.lineno}: imports a private name")
    return uses


def test_the_private_name_check_finds_a_use() -> None:
    private = _engine_private_names()
    assert private and all(n.startswith("_") for n in private)
    name = sorted(private)[0]
    reaching = ast.parse(f"def f(engine):\n    return engine.{name}\n")
    assert _private_uses("m", reaching, private) == [f"m line 2: engine.{name}"]
    assert _private_uses("m", ast.parse(f"self.{name}()"), private) == []


def test_only_delivery_uses_the_engines_private_names() -> None:
    private = _engine_private_names()
    uses = []
    for module, path in _modules().items():
        if not _within(module, "xrelay.delivery"):
            uses += _private_uses(module, ast.parse(path.read_text(encoding="utf-8")),
                                  private)
    assert not uses, ("use the engine's IQueueControl, not its internals:\n"
                      + "\n".join(uses))
