"""Layers import downwards only (STYLE.md section 2): parsed with ast, so no import side effects."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlmserve"

# layer → the vlmserve layers it may import (itself always allowed)
ALLOWED: dict[str, set[str]] = {
    # the CLI is a composition root for its tools too (dummy models, inspect-image)
    "cli": {
        "api",
        "settings",
        "dummy",
        "engine.local.counter",
        "engine.local.describe",
        "engine.types",
        "media",
        "catalog",
        "errors",
        "__init__",
        "cli_chat",
    },
    "cli_chat": set(),  # `vlmserve chat`: an HTTP client of the API, nothing of the server
    "__main__": {"cli"},
    "__init__": {"api", "settings"},
    "api": {"serving", "protocol", "storage", "errors", "settings", "catalog", "engine", "media"},
    "serving": {"protocol", "media", "engine", "catalog", "storage", "errors", "settings"},
    "media": {"errors", "settings"},
    "engine": {"catalog.spec", "errors", "settings"},
    "catalog": {"errors", "settings"},
    "storage": {"errors", "settings"},
    "protocol": set(),
    "errors": set(),
    "settings": set(),
    "dummy": set(),  # builds model directories with transformers alone
}


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return top


def _allowed(source_layer: str, target: str) -> bool:
    if _layer(target) == source_layer:
        return True
    return any(target == a or target.startswith(a + ".") for a in ALLOWED[source_layer])


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m.removeprefix("vlmserve.") for m in found if m.startswith("vlmserve.")]


def test_no_layer_imports_upwards() -> None:
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        layer = rel.parts[0]
        for target in _imports(path):
            if not _allowed(layer, target):
                violations.append(f"{rel}: imports vlmserve.{target}")
    assert violations == []


def test_wire_models_never_travel_below_serving() -> None:
    lower = ("media", "engine", "catalog", "storage")
    offenders = [
        f"{path.relative_to(PACKAGE)}"
        for layer in lower
        for path in (PACKAGE / layer).rglob("*.py")
        if any(t.startswith("protocol") for t in _imports(path))
    ]
    assert offenders == []


def test_torch_is_imported_only_by_engine_local_media_and_dummy() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("media", "dummy") or rel.parts[:2] == ("engine", "local"):
            continue
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] in ("torch", "transformers") for n in names):
                offenders.append(str(rel))
    assert offenders == []
