"""The package tree tells the pipeline, and its modules import each other without cycles (issue 15)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adnify"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """adnify modules that ``path`` imports anywhere (functions too), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    here = _module(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only or not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package[: len(package) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
        for alias in node.names:  # `from . import x` may name a module
            candidate = f"{target}.{alias.name}"
            found.add(candidate if _exists(candidate) else target)
    return {m for m in found if m != _module(path) and m != "adnify"}


def _exists(module: str) -> bool:
    rel = Path(*module.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def test_no_module_imports_itself_through_others():
    graph = {_module(p): _imports(p) for p in PACKAGE.rglob("*.py")}
    cycles = []

    done: set[str] = set()

    def visit(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    real = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".")
                                         for a, b in zip(c.split(" -> "), c.split(" -> ")[1:]))]
    assert not real, "import cycles:\n" + "\n".join(real)


@pytest.mark.parametrize("folder", ["conversion", "io", "report", "train", "export", "cli"])
def test_each_stage_of_the_pipeline_is_a_folder(folder):
    assert (PACKAGE / folder / "__init__.py").is_file()


def test_tests_mirror_the_package_tree():
    tests = Path(__file__).resolve().parent
    for folder in ("conversion", "io", "report", "train", "export", "cli"):
        assert any((tests / folder).glob("test_*.py")), f"tests/{folder}/ has no tests"
