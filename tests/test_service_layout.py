"""service/'s layout: every module imports, no import cycles among them (imports inside functions
count too), and dependencies point one way: shared modules -> store/ -> jobs/ -> watches/ -> api/ ->
server, cli."""

import ast
import importlib
import pkgutil
from pathlib import Path

import service

ROOT = Path(service.__file__).parent
# a module may import modules of its own layer or of layers before it
LAYERS = [
    {"service.config", "service.problems", "service.background"},
    {"service.store"},
    {"service.jobs"},
    {"service.watches"},
    {"service.api", "service.ui"},
    {"service.server", "service.cli"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if "migrations" in parts:  # alembic's scripts, run by alembic (they import the tables only)
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """service modules that `name` imports anywhere in its source (resolved to the longest known module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("service"):
                found.add(t)
    return found - {"service"}


def _graph():
    mods = _modules()
    return {n: _imports(n, p, set(mods)) for n, p in mods.items()}


def _layer(name: str) -> int:
    for i, layer in enumerate(LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{name} belongs to no layer; add it to LAYERS")


def test_every_service_module_imports():
    for info in pkgutil.walk_packages([str(ROOT)], prefix="service."):
        if ".migrations" in info.name:
            continue
        importlib.import_module(info.name)


def test_no_import_cycles():
    graph = _graph()
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_dependencies_point_one_way():
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, deps in _graph().items() for b in deps if _layer(b) > _layer(a)]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_cycles(tmp_path):
    """The graph is read from the source, function-level imports included (a cycle hidden in a
    function body is still found)."""
    pkg = tmp_path / "service"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    known = {"service", "service.a", "service.b"}
    assert _imports("service.a", pkg / "a.py", known) == {"service.b"}
    assert _imports("service.b", pkg / "b.py", known) == {"service.a"}
