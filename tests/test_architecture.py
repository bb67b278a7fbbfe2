"""The package's import structure (shared ARCHITECTURE.md): typer/rich only in the CLI, the directions that must never
exist, no import cycles, and the public API importable without torch. Read from the source with ast (nothing runs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mambaesr_edge"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute names of what ``path`` imports (relative imports resolved; ``from . import x`` gives pkg.x)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_typer_and_rich_only_in_the_cli_package():
    offenders = sorted(
        name for name, path in _modules().items()
        if not name.startswith("mambaesr_edge.cli")
        and any(i.split(".")[0] in ("typer", "rich", "click") for i in _imports(path, top_level_only=False))
    )  # fmt: skip
    assert offenders == []


def test_directions_that_must_never_exist():
    forbidden = {  # importer prefix -> prefixes it must not import (ARCHITECTURE.md)
        "mambaesr_edge.model": ("mambaesr_edge.runtime", "mambaesr_edge.export", "mambaesr_edge.train", "mambaesr_edge.cli"),
        "mambaesr_edge.scan": ("mambaesr_edge.runtime", "mambaesr_edge.export", "mambaesr_edge.train", "mambaesr_edge.cli"),
        "mambaesr_edge.runtime": ("mambaesr_edge.train", "mambaesr_edge.cli", "mambaesr_edge.export"),
        "mambaesr_edge.power": ("mambaesr_edge.model", "mambaesr_edge.cli"),
        "mambaesr_edge.bundle": ("mambaesr_edge.runtime", "mambaesr_edge.export", "mambaesr_edge.cli", "torch"),
        "mambaesr_edge.engine_manifest": ("mambaesr_edge.runtime", "mambaesr_edge.export", "mambaesr_edge.cli", "torch"),
        "mambaesr_edge.export": ("mambaesr_edge.runtime", "mambaesr_edge.cli"),
    }
    found = []
    for name, path in _modules().items():
        for importer, banned in forbidden.items():
            if name == importer or name.startswith(importer + "."):
                found += [(name, i) for i in _imports(path, top_level_only=False) if i.startswith(banned)]
    library = [(n, i) for n, p in _modules().items() if not n.startswith(("mambaesr_edge.cli", "mambaesr_edge.__main__"))
               for i in _imports(p, top_level_only=False) if i.startswith("mambaesr_edge.cli")]  # fmt: skip
    assert found == [] and library == []


def test_no_import_cycles():
    """Function-level imports count too: a lazy import hides a cycle from Python, not from the design."""
    modules = _modules()
    graph = {
        name: {i for i in _imports(path, top_level_only=False) if i in modules and i != name}
        for name, path in modules.items()
    }
    for name in graph:  # a package's __init__ importing its own submodules is not a cycle of concern
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_public_api_imports_lazily_without_torch():
    code = ("import sys, mambaesr_edge as m; m.Upscaler; m.open_backend; m.BackendInfo; m.read_bundle; m.MambaESRError; "
            "m.get_preset; m.PRESETS; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == "False", out.stderr
