"""The packages import only downwards: core ← jobqueue ← analysis ← service, the worker
beside the service, and the command line a client of the API that reads only the settings.
The queue knows nothing of studies' analysis, its lifecycle store nothing of the modules built
on it, the serving layer nothing of HTTP, the worker nothing of the service; routes share
their helpers through service.deps, never through one another. No class runs over 300 lines
and no function over 60."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PACKAGES = ("core", "jobqueue", "analysis", "search", "service", "worker", "cli")
MAY_IMPORT = {
    "core": {"core"},
    "jobqueue": {"core", "jobqueue"},
    "analysis": {"core", "jobqueue", "analysis"},
    "search": {"core", "jobqueue", "analysis", "search"},
    "service": {"core", "jobqueue", "analysis", "search", "service"},
    # the worker advances the searches whose jobs it settles
    "worker": {"core", "jobqueue", "search", "worker"},
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


def test_the_lifecycle_store_knows_nothing_of_what_is_built_on_it():
    above = {"accounts", "counts", "reads", "retention", "searches", "studies", "sweeper"}
    imported = {
        m.split(".")[1]
        for m in imported_modules(ROOT / "jobqueue/store.py")
        if m.startswith("jobqueue.")
    }
    assert imported & above == set()


def test_the_serving_layer_knows_nothing_of_http():
    imported = {m.split(".")[0] for m in imported_modules(ROOT / "service/serving.py")}
    assert imported & {"fastapi", "starlette", "uvicorn", "httpx"} == set()


def test_no_class_runs_over_300_lines_and_no_function_over_60():
    long = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                limit = {ast.ClassDef: 300, ast.FunctionDef: 60, ast.AsyncFunctionDef: 60}
                lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
                if lines > limit.get(type(node), lines):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert long == []
