"""The wheel, as a user installs it: one top-level package, every module importable beside a
user's own data/ and settings.py, every third-party import declared."""
import ast
import email
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = pytest.mark.slow


def _checkout_files() -> list[str]:
    """The files a clean clone would have (tracked, plus new files git does not ignore)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                         capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the clean file list comes from git")
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for rel in _checkout_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((REPO / rel).read_bytes())
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
                   check=True, capture_output=True)
    (path,) = dist.glob("alphafuse-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh environment holding only the wheel; its dependencies are seen through a .pth to
    this environment's site-packages (no download), where alphafuse itself is NOT importable."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = next(root.glob("lib/python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    return root


def test_the_wheel_holds_one_package_with_every_subpackage(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"alphafuse", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    source_packages = {Path(f).parent.as_posix() for f in _checkout_files()
                       if f.endswith("__init__.py") and not f.startswith(("tests/", "benchmarks/"))}
    wheel_packages = {n[len("alphafuse/"):-len("/__init__.py")] if n != "alphafuse/__init__.py" else "."
                      for n in names if n.endswith("__init__.py")}
    assert wheel_packages == source_packages
    modules = {n for n in names if n.endswith(".py")}
    expected = {f"alphafuse/{f}" for f in _checkout_files() if f.endswith(".py")
                and not f.startswith(("tests/", "benchmarks/"))}
    assert modules == expected


def test_every_module_imports_beside_a_users_data_and_settings(venv, tmp_path):
    user = tmp_path / "research"
    (user / "data").mkdir(parents=True)
    (user / "data" / "__init__.py").write_text("MINE = True\n")
    (user / "settings.py").write_text("MINE = True\n")
    script = """
import importlib, pkgutil, sys
import data, settings
assert data.MINE and settings.MINE, "the user's own modules"
import alphafuse
assert "site-packages" in alphafuse.__file__, alphafuse.__file__
names = [m.name for m in pkgutil.walk_packages(alphafuse.__path__, "alphafuse.")]
for name in names:
    importlib.import_module(name)
from alphafuse.data import read_manifest
from alphafuse.extract import create_backbone, load_ast, load_cavmae, load_timesformer, load_tsam, load_tsm
print(len(names), alphafuse.__version__)
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", script], cwd=user, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    count, version = out.stdout.split()
    from alphafuse import __version__
    assert int(count) > 40 and version == __version__
    helped = subprocess.run([str(venv / "bin" / "alphafuse"), "--help"], cwd=user, env=env, capture_output=True,
                            text=True)
    assert helped.returncode == 0 and "extract" in helped.stdout, helped.stderr


def _third_party_imports(root: Path) -> dict[str, str]:
    """Top-level modules the package's own files import (at any depth of the code), by module,
    with one file that imports it."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "alphafuse":
                    found.setdefault(top, str(path.relative_to(root)))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_declared(wheel, tmp_path):
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path)
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith("METADATA"))))
    requires = meta.get_all("Requires-Dist") or []
    runtime = {_canonical(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra ==" not in r}
    test_only = {_canonical(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]) for r in requires if "extra == \"test\"" in r}
    distributions = metadata.packages_distributions()
    missing = {}
    for module, where in _third_party_imports(tmp_path / "alphafuse").items():
        dists = {_canonical(d) for d in distributions.get(module, [module])}
        if not dists & runtime:
            missing[module] = where
    assert not missing, f"imported but not declared in install_requires: {missing}"
    assert "pytest" in test_only and "pytest" not in runtime
