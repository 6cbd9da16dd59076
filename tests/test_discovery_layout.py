"""discovery/'s one-way rule: the methods (discovery/methods/) work over the patching core and are
handed workers; they never import the distributed runtime, the pipeline or the CLI above them (imports
inside functions count too)."""

import ast
from pathlib import Path

import discovery

ROOT = Path(discovery.__file__).parent
ABOVE = {"distributed", "discover", "auto", "cli", "export", "options"}  # modules the methods sit below


def _imported(path: Path) -> set[str]:
    """discovery modules a file under discovery/methods/ imports (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 and node.module:  # from ..x import y
                found.add(node.module.split(".")[0])
            elif node.level == 2:  # from .. import x
                found.update(a.name for a in node.names)
            elif node.level == 0 and (node.module or "").startswith("discovery."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("discovery."))
    return found


def test_methods_do_not_import_what_sits_above_them():
    bad = {p.name: sorted(_imported(p) & ABOVE) for p in (ROOT / "methods").glob("*.py")}
    assert {k: v for k, v in bad.items() if v} == {}


def test_the_check_sees_a_nested_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from ..distributed import RemoteShards\n")
    assert "distributed" in _imported(f)
