"""The import rules of docs/architecture.md, checked on the source: each package imports only the rooms it may."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "pipelines", "training", "benchmark", "laion_sg")
# package -> the project packages its modules may import (besides itself)
ALLOWED = {
    "schemas": set(),
    "pipelines": {"schemas"},
    "training": {"schemas"},
    "benchmark": {"schemas", "pipelines", "training"},
    "laion_sg": {"schemas", "pipelines", "training", "benchmark"},
}


def project_imports(file: Path) -> set[str]:
    """The top-level project packages `file` imports, at any depth (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    wrong = {
        str(file.relative_to(ROOT)): sorted(extra)
        for file in files
        if (extra := project_imports(file) - ALLOWED[package] - {package})
    }
    assert not wrong, f"imports against docs/architecture.md: {wrong}"


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from laion_sg.offline import make_tiny_models\n    import benchmark.run\n")
    assert project_imports(module) == {"laion_sg", "benchmark"}
