"""`pip install ./edge_client` into a fresh virtualenv: the client stands on its own, without Django."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest

EDGE_CLIENT = Path(__file__).resolve().parent.parent
IMPORT_EVERYTHING = """
import importlib, pkgutil, sys
import edge_client
names = [m.name for m in pkgutil.walk_packages(edge_client.__path__, "edge_client.")
         if m.name not in ("edge_client.__main__",) and ".tests" not in m.name]
for name in names:
    importlib.import_module(name)
import edge_client.cli, edge_client.pipeline
leaked = sorted(m for m in sys.modules if m == "django" or m.startswith(("django.", "rest_framework")))
assert not leaked, leaked
assert "/site-packages/edge_client/" in edge_client.__file__, edge_client.__file__
print("imported", len(names), "modules")
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv holding only the edge client and numpy (the same numpy as this one)."""
    root = tmp_path_factory.mktemp("packaging")
    # pip builds in the source tree: build from a copy so the checkout stays clean.
    source = root / "edge_client"
    shutil.copytree(EDGE_CLIENT, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    venv.create(root / "venv", with_pip=True)
    python = root / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(source), f"numpy=={np.__version__}"]
    result = subprocess.run(pip, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "venv" / "bin"


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # cwd away from the checkout, so `import edge_client` can only find the installed copy.
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_every_module_imports_without_django(installed, tmp_path):
    result = run([str(installed / "python"), "-c", IMPORT_EVERYTHING], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "imported" in result.stdout


def test_the_console_script_prints_its_help(installed, tmp_path):
    result = run([str(installed / "sphere-edge"), "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("enroll", "run", "simulate", "status"):
        assert command in result.stdout


def test_python_dash_m_runs_the_same_command(installed, tmp_path):
    result = run([str(installed / "python"), "-m", "edge_client", "config", "--describe"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sync.prediction_batch_size" in result.stdout


def test_the_shipped_model_files_are_installed(installed, tmp_path):
    code = (
        "from edge_client.extractors import shipped_model_paths as p; from edge_client import pipeline as q; "
        "from edge_client.datagen import SAMPLE_PATH as s; "
        "r = q.SHIPPED_REFERENCE; "
        "print(all(x.exists() for x in [*p(), s, r / q.BUNDLE_KNN, r / q.BUNDLE_TRANSFORM]))"
    )
    result = run([str(installed / "python"), "-c", code], tmp_path)
    assert result.stdout.strip() == "True", result.stderr
