"""The layers import one way (docs/design.md, "Layers"): every `import tda...` in the package,
top-level or inside a function, points down the list below, never up or sideways."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# layer -> the layers it may import (besides itself)
ALLOWED = {
    "errors": set(),
    "log": {"errors"},
    "cluster": {"errors"},
    "schemas": {"errors"},
    "engine": {"errors", "schemas"},
    "store": {"errors", "schemas", "engine"},
    "searcher": {"errors", "log", "cluster", "schemas", "engine", "store"},
    "indexer": {"errors", "log", "cluster", "schemas", "engine", "store", "searcher.encoder"},
    "evaluation": {"errors", "log", "cluster", "schemas", "engine", "store", "searcher",
                   "indexer"},
    "cli": {"errors", "log", "schemas", "store", "searcher", "indexer", "evaluation"},
    "__init__": set(),
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tda"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("tda")]
    return [m.removeprefix("tda").lstrip(".") for m in out]


def test_imports_point_down():
    wrong = []
    files = [p for p in ROOT.rglob("*.py") if p.relative_to(ROOT).parts[0] in
             {*ALLOWED, *(f"{k}.py" for k in ALLOWED)}]
    assert len(files) > 40
    for path in files:
        layer = _layer(path)
        for target in _imports(path):
            top = target.split(".")[0] if target else "__init__"
            if top == layer or top == "" or target == "":
                continue
            if top in ALLOWED[layer] or target in ALLOWED[layer]:
                continue
            wrong.append(f"{path.relative_to(ROOT)} imports tda.{target}")
    assert not wrong, "\n".join(wrong)
