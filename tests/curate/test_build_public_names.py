"""The curate stage has a public face: no module imports another's underscored (private) name, and
no package exports one. Read from the source with `ast` (the oracle is the import statements
themselves, not what the modules say about them)."""

from __future__ import annotations

import ast
from pathlib import Path

import scale_alibi.curate

CURATE = Path(scale_alibi.curate.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_curate_module_imports_a_private_name_of_another_module():
    found = []
    for path in sorted(CURATE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("scale_alibi"):
                found += [f"{path.relative_to(CURATE)}: {node.module}.{a.name}" for a in node.names if _private(a.name)]
    assert found == []


def test_no_curate_package_exports_a_private_name():
    exported = []
    for init in sorted(CURATE.rglob("__init__.py")):
        for node in ast.walk(ast.parse(init.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                exported += [f"{init.relative_to(CURATE)}: {e.value}" for e in node.value.elts  # type: ignore[attr-defined]
                             if isinstance(e, ast.Constant) and _private(e.value)]
    assert exported == []
