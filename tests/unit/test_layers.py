"""The import graph: product modules never import development support, no module import
cycles (lazy imports included), every import points to the same or a lower layer, and every
product folder imports only from its own and lower folders (a picture of the folders has no
arrow running back up).

The layers are drawn in docs/architecture.md; this test is their enforcement.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("courier", "workflows", "activities", "ingest", "worker")
DEVELOPMENT = ("courier_devtools", "benchmarks", "tests")
PLACES = {"courier_devtools": ROOT / "dev"}
"""Where a top-level package lives, when not at the repository's root."""

# Lowest first. A module's layer is that of the longest prefix listed; imports may only go to
# the same or a lower layer.
LAYERS: list[tuple[str, ...]] = [
    ("courier.core", "workflows.types"),
    (
        "workflows.export_record",
        "workflows.export_range",
        "workflows.export_key",
        # Rate control's contracts: its config section, outcome counts, controller and workflow.
        "courier.rate_control",
        "activities.errors",
        "activities.encoding",
        "activities.base",
        "activities.source",
    ),
    ("activities",),
    ("courier.config", "courier.temporal"),
    ("ingest", "courier.serving", "courier.rate_control.client"),
    ("worker",),
    ("courier.app", "courier.ops"),
    ("courier.cli",),
    DEVELOPMENT,
]


# The product's folders, lowest first. A folder may import from its own and lower folders only.
FOLDERS: list[str] = [
    "courier.core",
    "workflows",
    "courier.rate_control",
    "activities",
    "courier.config",
    "courier.temporal",
    "ingest",
    "courier.serving",
    "worker",
    "courier.app",
    "courier.ops",
    "courier.cli",
]


def module_name(path: Path, base: Path = ROOT) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    found = {}
    for top in (*PRODUCT, *DEVELOPMENT):
        place = PLACES.get(top, ROOT)
        base = place / top
        paths = [base.with_suffix(".py")] if not base.is_dir() else sorted(base.rglob("*.py"))
        for path in paths:
            if path.exists():
                found[module_name(path, place)] = path
    return found


SOURCES = sources()


def imports_of(name: str) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (lazy imports included)."""
    tree = ast.parse(SOURCES[name].read_text())
    package = name if SOURCES[name].name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in SOURCES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: imports_of(name) for name in SOURCES}


def layer_of(name: str) -> int:
    if SOURCES[name].name == "__init__.py" and not GRAPH[name]:
        return 0  # a package that only holds a docstring
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return best


def test_every_module_has_a_layer() -> None:
    assert "courier.cli" in SOURCES and "ingest.consumer" in SOURCES
    for name in SOURCES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(n for n in SOURCES if n.split(".")[0] in PRODUCT))
def test_product_never_imports_development_support(name: str) -> None:
    leaked = {m for m in GRAPH[name] if m.split(".")[0] in DEVELOPMENT}
    assert not leaked, f"{name} imports {sorted(leaked)}"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_imports_point_down(name: str) -> None:
    upward = {m for m in GRAPH[name] if layer_of(m) > layer_of(name)}
    assert not upward, f"{name} (layer {layer_of(name)}) imports higher layers: {sorted(upward)}"


def test_no_import_cycles() -> None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == "open":
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = "done"

    for name in sorted(SOURCES):
        if name not in state:
            visit(name)


def folder_of(name: str) -> str | None:
    """The product folder ``name`` lives in (the longest listed prefix), if any."""
    found = [f for f in FOLDERS if name == f or name.startswith(f + ".")]
    return max(found, key=len) if found else None


def test_every_product_module_is_in_a_folder() -> None:
    product = [n for n in SOURCES if n.split(".")[0] in PRODUCT and n != "courier"]
    outside = sorted(n for n in product if folder_of(n) is None)
    assert not outside, f"in no folder of FOLDERS (add it, and to docs/architecture.md): {outside}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_folders_import_only_their_own_and_lower_folders(folder: str) -> None:
    rank = FOLDERS.index(folder)
    upward = sorted(
        f"{name} → {target}"
        for name in SOURCES
        if folder_of(name) == folder
        for target in GRAPH[name]
        if (other := folder_of(target)) is not None and FOLDERS.index(other) > rank
    )
    assert not upward, f"{folder} imports from higher folders: {upward}"
