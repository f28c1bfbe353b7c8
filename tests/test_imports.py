"""The package's shape: one import root, layers that import one way, no import cycles, no side effects."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"unlearn": "unlearn", "attacks": "unlearn.attacks", "auditors": "unlearn.auditors", "cli": "unlearn.cli"}
# lower layers never import higher ones: core (data, model I/O, log-probs, losses, curvature, ledger, splits)
# < methods < attacks < auditors < workflows < cli
LAYERS = ["unlearn.cli", "unlearn.workflows", "unlearn.auditors", "unlearn.attacks", "unlearn.methods", "unlearn"]


def module_files() -> dict[str, Path]:
    mods = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, function-level imports included (not those under
    ``if TYPE_CHECKING:``, which never run)."""
    mods = module_files()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        # imports under `if TYPE_CHECKING:` never run (the facade's eager names for type checkers)
        typing_only = {id(n) for top in ast.walk(tree) if isinstance(top, ast.If)
                       and getattr(top.test, "id", "") == "TYPE_CHECKING" for b in top.body for n in ast.walk(b)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer(mod: str) -> int:
    return next(i for i, prefix in enumerate(LAYERS) if mod == prefix or mod.startswith(prefix + "."))


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert cycles(graph) == []


def test_imports_flow_one_way() -> None:
    bad = [f"{m} -> {t}" for m, ts in import_graph().items() for t in ts
           if m != "unlearn" and layer(t) < layer(m)]  # unlearn/__init__ re-exports lazily, by name only
    assert bad == []


def test_the_layer_test_sees_a_core_module_importing_a_method() -> None:
    """Methods are a layer of their own: core importing one (as UnTrac did from unlearn/) is a violation."""
    assert layer("unlearn.methods.npo") < layer("unlearn.splits") and layer("unlearn.attacks.runner") < layer(
        "unlearn.methods") and layer("unlearn.methods") > layer("unlearn.auditors.battery")


MAX_LINES = 80  # a workflow's or an auditor's function reads in one screen


def test_no_function_of_the_workflows_or_auditors_is_longer_than_a_screen() -> None:
    long = []
    for folder in (ROOT / "auditors", ROOT / "unlearn" / "workflows"):
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.slow  # starts processes
def test_importing_changes_no_environment_and_loads_nothing_heavy(tmp_path: Path) -> None:
    code = ("import os, sys; before = dict(os.environ); import unlearn; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "import unlearn.cli.main; assert dict(os.environ) == before; "
            "assert 'torch' not in sys.modules; print('ok')")  # a light start: signals are handled early
    proc = _python(code, tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow  # starts processes
def test_no_top_level_cli_attacks_auditors_from_outside_the_checkout(tmp_path: Path) -> None:
    for name in ("cli", "attacks", "auditors"):
        proc = _python(f"import {name}", tmp_path)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (name, proc.stdout)
    proc = _python("import unlearn.cli.main, unlearn.attacks.scores, unlearn.auditors.metrics, unlearn.configs; "
                   "print('ok')", tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # starts processes
def test_checkout_shadowing_an_install_still_maps_the_subpackages() -> None:
    # Run from the repository root: `unlearn` comes from ./unlearn, whatever is installed.
    proc = _python("import unlearn, unlearn.cli.main as m; print(unlearn.__file__, m.__file__)", ROOT,
                   PYTHONPATH=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    first, second = proc.stdout.split()
    assert first == str(ROOT / "unlearn" / "__init__.py") and second == str(ROOT / "cli" / "main.py")


def _third_party_imports(folders: list[str]) -> dict[str, set[str]]:
    """Top-level module -> the files that import it (function-level imports included), stdlib and ours left out."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    local = (path.parent / f"{top}.py").exists()  # a benchmark script's sibling
                    if top not in sys.stdlib_module_names and top not in ("unlearn", "tests", "__future__") \
                            and not local:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> tuple[set[str], set[str]]:
    """(base requirements, every extra's requirements) of pyproject.toml, as normalised distribution names."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", r).group()).lower() for r in reqs}

    return names(project["dependencies"]), names([r for e in project["optional-dependencies"].values() for r in e])


def test_every_import_is_a_declared_dependency() -> None:
    """A module the code imports but pyproject.toml does not declare works on the developer's machine and fails
    on a fresh install (rouge_score did): library code needs it in the base requirements or an extra, tests in
    an extra (dev)."""
    import importlib.metadata as md
    import re

    base, extras = _declared()
    dists = md.packages_distributions()

    def dist_of(module: str) -> set[str]:
        return {re.sub(r"[-_.]+", "-", d).lower() for d in dists.get(module, [module])}

    library = _third_party_imports(["unlearn", "attacks", "auditors", "cli"])
    tests = _third_party_imports(["tests"])
    assert {"torch", "rouge_score", "yaml"} <= set(library)  # the walk sees lazy imports too
    missing = {m: sorted(f) for m, f in library.items() if not dist_of(m) & (base | extras)}
    missing |= {m: sorted(f) for m, f in tests.items() if m not in library and not dist_of(m) & (base | extras)}
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def test_every_module_of_the_installed_package_imports() -> None:
    """Each module imports on its own in this environment (the README's install): a missing dependency or a
    broken module-level import fails here, not at a user's first command."""
    import importlib

    failed = {}
    for mod in sorted(module_files()):
        try:
            importlib.import_module(mod)
        except Exception as e:
            failed[mod] = f"{type(e).__name__}: {e}"
    assert failed == {}


def test_every_name_a_benchmark_script_imports_from_the_package_exists() -> None:
    """The benchmark scripts are not run by pytest: a name moved to another module (split_by_group left the
    battery) would break one unseen. Every `from unlearn... import name` in them resolves."""
    import importlib

    missing = []
    for path in sorted((ROOT / "tests" / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("unlearn"):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}: {node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
    assert missing == []
