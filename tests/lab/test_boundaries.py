"""Who may import whom: the lab and the benchmarks never import the tests, and the runtime
package never imports the lab (only its operations CLI does, on the paths that need it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (function-level imports included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def first_part(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("folder", ["bench", "lambda_db_lab"])
def test_lab_and_bench_never_import_the_tests(folder: str) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if first_part(m) == "tests"
        )
        for path in sources(folder)
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_runtime_package_never_imports_the_lab() -> None:
    runtime = [path for path in sources("lambda_db") if "cli" not in path.relative_to(ROOT).parts]
    assert runtime, "no runtime modules found"
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if first_part(m) in ("lambda_db_lab", "tests")
        )
        for path in runtime
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}
