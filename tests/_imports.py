"""The absolute imports of a piece of Python source, read with ``ast`` (never run)."""

from __future__ import annotations

import ast


def absolute_imports(source: str) -> set[str]:
    """Every module named by ``import a.b`` or ``from a.b import c`` (relative imports left out)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names
