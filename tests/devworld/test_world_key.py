"""The world's cache key changes with its content: the config, RENDER_VERSION and the source of
every module that decides pixels or items (a cached world from older code is never reused)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from scale_alibi.devworld import config
from scale_alibi.devworld.config import CONTENT_MODULES, DEFAULT_WORLD

PACKAGE = Path(config.__file__).parent


def _imports(module: str) -> set[str]:
    """The scale_alibi.devworld modules `module` imports (directly)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
            [a.name for a in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if name.startswith("scale_alibi.devworld."):
                out.add(name.split(".")[2])
            elif name == "scale_alibi.devworld" and isinstance(node, ast.ImportFrom):
                out.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file())
    return out


def test_every_module_the_renderer_uses_is_hashed_into_the_key():
    seen, todo = set(), ["build"]  # build_world renders and writes the catalog
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m))
    assert seen <= set(CONTENT_MODULES), seen - set(CONTENT_MODULES)
    assert {"scenes", "raster", "stac", "truth", "field"} <= seen


def test_the_key_follows_the_source_the_config_and_the_version(monkeypatch):
    key = DEFAULT_WORLD.key()
    assert key == DEFAULT_WORLD.key() and len(key) == 12
    assert dataclasses.replace(DEFAULT_WORLD, s1_zero_border=0.2).key() != key
    monkeypatch.setattr(config, "RENDER_VERSION", config.RENDER_VERSION + 1)
    assert DEFAULT_WORLD.key() != key
    monkeypatch.undo()
    real = config.source_digest()
    monkeypatch.setattr(config, "source_digest", lambda: "0" * 64)  # a renderer with other source
    assert DEFAULT_WORLD.key() != key
    monkeypatch.setattr(config, "source_digest", lambda: real)
    assert DEFAULT_WORLD.key() == key
