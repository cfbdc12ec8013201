"""The packages import only downwards: core ← jobqueue ← analysis ← service, the worker
beside the service, and the command line a client of the API that reads only the settings. The queue knows nothing of studies, the worker nothing of the service, and
routes share their helpers through service.deps, never through one another."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("core", "jobqueue", "analysis", "service", "worker", "cli")
MAY_IMPORT = {
    "core": {"core"},
    "jobqueue": {"core", "jobqueue"},
    "analysis": {"core", "jobqueue", "analysis"},
    "service": {"core", "jobqueue", "analysis", "service"},
    "worker": {"core", "jobqueue", "worker"},
    "cli": {"core", "cli"},
}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def imported_packages(path: Path) -> set[str]:
    return {module.split(".")[0] for module in imported_modules(path)} & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_packages_below_it(package):
    crossing = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) - MAY_IMPORT[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {path: names for path, names in crossing.items() if names} == {}


def test_routes_share_helpers_through_deps_not_through_each_other():
    routes = sorted((ROOT / "service" / "routes").glob("*.py"))
    crossing = {
        path.name: sorted(m for m in imported_modules(path) if m.startswith("service.routes."))
        for path in routes
    }
    assert {name: modules for name, modules in crossing.items() if modules} == {}
