"""The import rules of docs/architecture.md, checked on the source: each package imports only the rooms it may."""

from __future__ import annotations

import ast
import subprocess
import sys
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


# What the Ray actors of `benchmark.chunks.map_chunks` import (and the light half of the metrics): torchmetrics
# costs ~10 s per import (it imports all its domains), so it must come only with a metric class, in the driver.
WORKER_MODULES = (
    "benchmark.judge",
    "benchmark.generate",
    "benchmark.features",
    "benchmark.dataset",
    "benchmark.chunks",
    "benchmark.metrics",
    "benchmark.metrics.graph_match",
    "benchmark.metrics.clip_embedding",
    "benchmark.metrics.inception",
)
# What the feature actors and the driver's provenance take from the package
WORKER_NAMES = ("CLIPEmbedder", "InceptionFeatureExtractor", "clip_provenance", "inception_provenance", "graph_iou")


def test_worker_modules_do_not_import_torchmetrics() -> None:
    check = (
        "import importlib, sys\n"
        f"for name in {WORKER_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "    assert 'torchmetrics' not in sys.modules, f'importing {name} imports torchmetrics'\n"
        f"for name in {WORKER_NAMES!r}:\n"
        "    getattr(sys.modules['benchmark.metrics'], name)\n"
        "    assert 'torchmetrics' not in sys.modules, f'benchmark.metrics.{name} imports torchmetrics'\n"
    )
    result = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
