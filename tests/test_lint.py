"""The code's habits, checked in CI: ruff with the project's rule set (pyproject ``[tool.ruff.lint]``) and
the import-linter contract that holds the library's floors (pyproject ``[tool.importlinter]``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    result = _run(sys.executable, "-m", "ruff", "check", "--no-cache", "tokenuni", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_floors_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = _run(str(lint_imports), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_import_floors_catch_a_sideways_import(tmp_path):
    """The contract is not vacuous: in a copy of the package, a metric importing a transform (siblings on
    one floor) breaks it."""
    shutil.copytree(REPO / "tokenuni", tmp_path / "tokenuni", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "tokenuni" / "metrics" / "lint_probe.py").write_text("import tokenuni.transforms\n")
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "tokenuni.metrics.lint_probe -> tokenuni.transforms" in result.stdout
