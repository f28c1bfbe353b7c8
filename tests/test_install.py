"""A wheel, installed into a fresh virtual environment, behaves like the editable install: same resolved
method configurations, same shipped presets, one import root."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["grad_ascent", "graddiff", "npo", "simnpo", "newton", "iau", "soul"]
RESOLVE = ("import json, sys; from unlearn.methods import load_method_args; "
           "names = sys.argv[1:]; print(json.dumps({n: load_method_args(n).to_dict() for n in names}))")


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (cmd, proc.stdout[-2000:], proc.stderr[-2000:])
    return proc


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a clean copy of the source files (no stale build/), installed into a new venv
    that sees this environment's dependencies (torch, rich, ...) but not its editable `unlearn`."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = _source_copy(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)], tmp)
    wheel = next((tmp / "dist").glob("unlearn-*.whl"))
    env_dir = _new_env(tmp / "venv")
    _run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp)
    return env_dir


def _source_copy(src: Path) -> Path:
    """The repository's source files (tracked and new, not ignored) copied to ``src``: no stale build/."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    return src


def _new_env(env_dir: Path) -> Path:
    """A new venv that sees this environment's dependencies (torch, rich, ...) but not its editable `unlearn`:
    a path line in a .pth file adds that directory only (its own .pth files, the editable install's finder
    among them, are not processed)."""
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "_outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return env_dir


@pytest.mark.slow
def test_a_strict_editable_install_materialises_the_package_tree_for_tools(tmp_path: Path) -> None:
    """What the README tells IDE and type-checker users: a strict editable install lays the installed package
    out as a tree of links (unlearn/attacks/... -> attacks/...), so a tool that reads files finds every module
    of `unlearn` where its import name says, and the links point at the checkout (edits show at once)."""
    from tests.test_imports import module_files

    src = _source_copy(tmp_path / "src")
    py = _new_env(tmp_path / "venv") / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(src),
          "--config-settings", "editable_mode=strict"], tmp_path)
    tree = next((src / "build").glob("__editable__.unlearn-*"))
    missing = []
    for module, path in module_files().items():
        parts = module.split(".")
        linked = tree.joinpath(*parts, "__init__.py") if path.name == "__init__.py" else tree.joinpath(
            *parts[:-1], parts[-1] + ".py")
        if not linked.is_file() or linked.resolve() != (src / path.relative_to(ROOT)).resolve():
            missing.append(module)
    assert missing == [] and len(module_files()) > 40
    where = _run([str(py), "-c", "import unlearn.attacks.runner as m; print(m.__file__)"], tmp_path).stdout
    assert where.strip().startswith(str(src)) or where.strip().startswith(str(tree))


def _console_script(bin_dir: Path) -> str:
    script = bin_dir / "unlearn"
    assert script.is_file(), f"no console script in {bin_dir}"
    return str(script)


@pytest.mark.slow
def test_wheel_resolves_the_same_configurations_as_the_editable_install(wheel_env: Path, tmp_path: Path) -> None:
    py = wheel_env / "bin" / "python"
    where = _run([str(py), "-c", "import unlearn, unlearn.cli.main as m; print(unlearn.__file__, m.__file__)"],
                 tmp_path).stdout.split()
    assert all(str(wheel_env) in w for w in where), where  # the wheel's copy, not the checkout
    installed = json.loads(_run([str(py), "-c", RESOLVE, *METHODS], tmp_path).stdout)
    editable = json.loads(_run([sys.executable, "-c", RESOLVE, *METHODS], tmp_path).stdout)
    assert installed == editable and set(installed) == set(METHODS)
    # the console scripts, as a user runs them, from a directory that is not the checkout
    for config in ([], ["--config", "newton_exact"]):
        argv = ["forget", "--method", "newton", "--dry-run", "--json", *config]
        a = json.loads(_run([_console_script(wheel_env / "bin"), *argv], tmp_path).stdout)
        b = json.loads(_run([_console_script(Path(sys.executable).parent), *argv], tmp_path).stdout)
        assert a == b and a["config"]["curvature"] == ("ggn" if config else "ekfac")
    presets = "from unlearn.config import presets; print(presets('compare'), presets('methods'))"
    assert _run([str(py), "-c", presets], tmp_path).stdout == _run([sys.executable, "-c", presets], tmp_path).stdout


@pytest.mark.slow
def test_wheel_installs_no_top_level_cli_attacks_auditors(wheel_env: Path, tmp_path: Path) -> None:
    py = wheel_env / "bin" / "python"
    for name in ("cli", "attacks", "auditors"):
        proc = subprocess.run([str(py), "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name
    site = next((wheel_env / "lib").glob("python*/site-packages"))
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info") and p.name != "__pycache__"
                  and not p.name.startswith(("_", "pip"))) == ["unlearn"]
