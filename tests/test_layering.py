"""The whole project's layering (docs/architecture.md), read from the source: every module of discovery/,
labeling/, viewer/ and service/ imports, no import cycle among them, and every import points down the
table below. Imports inside functions count too (the graph is read with ast, not from sys.modules), and
so does `from package import submodule`.

Units and what each may import besides itself (a module belongs to the longest unit that prefixes it):

    discovery.core          -
    discovery.model         core
    discovery.task_library  core, model
    discovery.engine        core, model
    discovery.methods       core, model, task_library, engine
    discovery.features      core, model, task_library, engine          (beside methods)
    discovery.pipeline      the above
    discovery.io            the above and pipeline
    discovery.toy           core, model, task_library, engine, methods, pipeline
    discovery.cli, discovery (the lazy public API)   any discovery unit
    labeling                discovery
    viewer                  discovery, labeling
    service                 discovery, labeling, viewer; inside it: shared modules -> store -> jobs ->
                            watches -> api/ui -> server/cli (SERVICE_LAYERS)

A private name (`_x`) is used only inside its module: never imported by or read as an attribute of a
module from another one (tests included). PENDING lists what the restructuring (issue 23) has not yet
removed; a pending entry that no longer occurs fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import discovery

PROJECT = Path(discovery.__file__).resolve().parent.parent
PACKAGES = ("discovery", "labeling", "viewer", "service")
TESTS = PROJECT / "tests"

_ENGINE = {"discovery.core", "discovery.model", "discovery.task_library", "discovery.engine"}
_BELOW_PIPELINE = _ENGINE | {"discovery.methods", "discovery.features"}
_DISCOVERY = _BELOW_PIPELINE | {"discovery.pipeline", "discovery.io", "discovery.toy", "discovery.cli", "discovery"}
ALLOWED: dict[str, set[str]] = {
    "discovery.core": set(),
    "discovery.model": {"discovery.core"},
    "discovery.task_library": {"discovery.core", "discovery.model"},
    "discovery.engine": {"discovery.core", "discovery.model"},
    "discovery.methods": set(_ENGINE),
    "discovery.features": set(_ENGINE),
    "discovery.pipeline": set(_BELOW_PIPELINE),
    "discovery.io": _BELOW_PIPELINE | {"discovery.pipeline"},
    "discovery.toy": _ENGINE | {"discovery.methods", "discovery.pipeline"},
    "discovery.cli": _DISCOVERY,
    "discovery": _DISCOVERY,
    "labeling": set(_DISCOVERY),
    "viewer": _DISCOVERY | {"labeling"},
    "service": _DISCOVERY | {"labeling", "viewer"},
}
# inside service/: a module may import modules of its own layer or of layers before it
SERVICE_LAYERS = [
    {"service.config", "service.problems", "service.background"},
    {"service.store"},
    {"service.jobs"},
    {"service.watches"},
    {"service.api", "service.ui", "service.ui_form"},
    {"service.server", "service.cli", "service.demo", "service"},
]

# (importer, imported) edges still to be removed (issue 23): exempt from the cycle and direction checks
PENDING_IMPORTS = {
    # Circuit._repr_html_ shows the viewer's page inline in a notebook: the viewer (above discovery) is
    # imported inside that one function. An entry point would invert it, but needs the package reinstalled.
    ("discovery.core.notebook", "viewer"),
}
# (module using it, module defining it, name) private names still crossing modules (issue 23)
PENDING_PRIVATE: set[tuple[str, str, str]] = set()


def modules(root: Path = PROJECT, packages=PACKAGES) -> dict[str, Path]:
    out = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "migrations" in parts:  # alembic's scripts, run by alembic (they import the tables only)
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _longest(name: str, known) -> str:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name


def imports(name: str, path: Path, known) -> dict[str, set[str]]:
    """Project modules that `name` imports anywhere in its source (each resolved to the longest known
    module), with the names it takes from each."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                t = _longest(a.name, known)
                if t:
                    found.setdefault(t, set())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known:  # from package import submodule
                    found.setdefault(sub, set())
                else:
                    t = _longest(mod, known)
                    if t:
                        found.setdefault(t, set()).add(a.name)
    found.pop(name, None)
    return found


def graph() -> dict[str, dict[str, set[str]]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def unit(name: str) -> str:
    u = _longest(name, set(ALLOWED))
    if not u:
        raise AssertionError(f"{name} belongs to no unit; add it to ALLOWED in tests/test_layering.py")
    return u


def service_layer(name: str) -> int:
    for i, layer in enumerate(SERVICE_LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer):
            return i
    raise AssertionError(f"{name} belongs to no service layer; add it to SERVICE_LAYERS")


def upward(a: str, b: str) -> str | None:
    """Why a's import of b points the wrong way (None when it is allowed)."""
    ua, ub = unit(a), unit(b)
    if ua != ub:
        return None if ub in ALLOWED[ua] else f"{a} ({ua}) imports {b} ({ub})"
    if ua == "service" and service_layer(b) > service_layer(a):
        return f"{a} (service layer {service_layer(a)}) imports {b} (service layer {service_layer(b)})"
    return None


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def test_every_module_imports():
    for package in PACKAGES:
        root = importlib.import_module(package)
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if ".migrations" in info.name or info.name.endswith("__main__"):
                continue
            importlib.import_module(info.name)


def test_no_import_cycles():
    g = {a: {b for b in deps if (a, b) not in PENDING_IMPORTS} for a, deps in graph().items()}
    cycle = find_cycle(g)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_dependencies_point_down():
    bad = [why for a, deps in graph().items() for b in deps
           if (a, b) not in PENDING_IMPORTS and (why := upward(a, b))]
    assert not bad, "\n".join(bad)


def test_pending_imports_still_exist():
    g = graph()
    gone = sorted(e for e in PENDING_IMPORTS if e[1] not in g.get(e[0], {}))
    assert not gone, f"remove these from PENDING_IMPORTS (they no longer occur): {gone}"


def _private_uses() -> set[tuple[str, str, str]]:
    mods = modules()
    mods.update(modules(PROJECT, ("tests",)))
    known = set(mods)
    uses = set()
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> project module, for attribute reads (module._x)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in known:
                        aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                for target, names in imports(name, path, known).items():
                    for n in names:
                        if n.startswith("_") and not n.startswith("__"):
                            uses.add((name, target, n))
                package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    if f"{mod}.{a.name}" in known:
                        aliases[a.asname or a.name] = f"{mod}.{a.name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                chain, v = [node.attr], node.value
                while isinstance(v, ast.Attribute):
                    chain.append(v.attr)
                    v = v.value
                if isinstance(v, ast.Name) and v.id in aliases:
                    target = ".".join([aliases[v.id]] + chain[:0:-1])
                    target = _longest(target, known)
                    if target and target != name:
                        uses.add((name, target, node.attr))
    return uses


def test_no_private_name_crosses_modules():
    bad = sorted(u for u in _private_uses() if u not in PENDING_PRIVATE)
    assert not bad, "\n".join(f"{a} uses {b}.{n}" for a, b, n in bad)


def test_pending_private_names_still_used():
    gone = sorted(PENDING_PRIVATE - _private_uses())
    assert not gone, f"remove these from PENDING_PRIVATE (they no longer occur): {gone}"


LONG_FILE = 520  # lines (DEVELOPERS.md: files under ~500 lines, or the reason in the module docstring)


def test_long_modules_say_why():
    """A module over ~500 lines states why in its docstring ("Over 500 lines: ...")."""
    mods = modules()
    mods.update(modules(PROJECT, ("tests", "benchmarks")))
    long = [name for name, path in mods.items() if len(path.read_text().splitlines()) > LONG_FILE
            and "Over 500 lines:" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not long, f"over {LONG_FILE} lines without 'Over 500 lines: <why>' in the docstring: {sorted(long)}"


def test_the_checker_sees_nested_imports_cycles_and_private_names(tmp_path):
    """Function-level imports, `from . import module` and a cycle hidden in a function body are found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    from .c import _hidden\n")
    (pkg / "c.py").write_text("_hidden = 1\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imports("pkg.a", pkg / "a.py", known) == {"pkg.b": {"x"}}
    found = imports("pkg.b", pkg / "b.py", known)
    assert found == {"pkg.a": set(), "pkg.c": {"_hidden"}}
    assert find_cycle({"pkg.a": {"pkg.b"}, "pkg.b": set(found)}) == ["pkg.a", "pkg.b", "pkg.a"]


@pytest.mark.parametrize("a,b,ok", [
    ("discovery.methods.eap", "discovery.engine.patching", True),
    ("discovery.engine.patching", "discovery.methods.eap", False),
    ("discovery.features.transcoders", "discovery.engine.patching", True),
    ("discovery.features.transcoders", "discovery.pipeline.discover", False),
    ("discovery.pipeline.discover", "discovery.features.graph", True),
    ("discovery.core.graph", "discovery.model.adapters", False),
    ("discovery.io.diff", "labeling.schema", False),
    ("service.store.db", "service.jobs.spec", False),
    ("service.api.app", "service.store.db", True),
])
def test_the_table_reads_as_documented(a, b, ok):
    assert (upward(a, b) is None) is ok
