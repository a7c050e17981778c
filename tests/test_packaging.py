"""A plain (non-editable) install, in a second scratch venv, works without the source tree.

The library reads its config schema and figure captions as package data (``tokenuni/resources``,
through ``importlib.resources``); the workflow sees the same files through the links
``workflow/schemas/config.schema.yaml`` and ``workflow/report``. Before, ``tokenuni check`` from a
``pip install .`` failed with ``No such file or directory: …/workflow/schemas/config.schema.yaml``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: top-level folders of a checkout that are not the project (the package has its own ``resources``)
TOP_LEVEL_IGNORED = {".venv", ".git", "results", "resources", ".snakemake", "build", ".pytest_cache", "mlruns"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    return ignored | (TOP_LEVEL_IGNORED & set(names) if Path(folder) == REPO else set())


def test_links_point_at_the_package_data():
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    captions = REPO / "workflow" / "report"
    assert schema.is_symlink() and schema.resolve() == (REPO / "tokenuni/resources/config.schema.yaml")
    assert captions.is_symlink() and captions.resolve() == (REPO / "tokenuni/resources/captions")
    conda_env = REPO / "workflow" / "envs" / "tokenuni.yaml"  # the catalog's place; the user keeps environment.yml
    assert conda_env.is_symlink() and conda_env.resolve() == (REPO / "environment.yml")
    from tokenuni.config import SCHEMA_PATH
    from tokenuni.report import CAPTIONS_DIR
    assert SCHEMA_PATH.is_file() and (CAPTIONS_DIR / "workflow.rst").is_file()


def test_every_figure_caption_of_the_workflow_exists():
    from tokenuni.report import RULES_DIR, rule_captions
    captions = rule_captions(RULES_DIR)
    assert len(captions) >= 10
    missing = {rule: str(path) for rule, path in captions.items() if not path.is_file()}
    assert not missing


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A second, scratch virtual environment holding a plain (non-editable) ``pip install`` of a copy of the
    checkout: its ``bin/`` (``python``, ``tokenuni``). The scratch venv reaches the test environment's
    dependencies through a ``.pth`` line (offline, and seconds instead of a second torch); a directory named in a
    ``.pth`` file is put on the path without running its own ``.pth`` files, so the test environment's editable
    install of tokenuni stays out of it."""
    import sysconfig

    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignore)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--ignore-installed", str(source)], check=True, env=_env())
    return venv / "bin"


def _env() -> dict:
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_installed_package_carries_its_resources(installed, tmp_path):
    out = subprocess.run(
        [str(installed / "python"), "-c", "import tokenuni, tokenuni.config as c, tokenuni.report as r; "
         "print(tokenuni.__file__); print(c.SCHEMA_PATH); print(sorted(p.name for p in r.CAPTIONS_DIR.iterdir()))"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True).stdout.splitlines()
    venv = installed.parent
    assert out[0].startswith(str(venv)) and "site-packages" in out[0], out  # not the source tree, not editable
    assert out[1].startswith(str(venv)) and Path(out[1]).is_file()
    assert "workflow.rst" in out[2] and "by_layer.rst" in out[2]


def test_check_and_dry_run_from_the_installed_package(installed, tmp_path):
    """The scratch venv's ``tokenuni`` command checks the study, and its Python dry-runs the workflow (the
    Snakefile puts its own checkout's library first, by design: the rules run the code beside them)."""
    check = subprocess.run([str(installed / "tokenuni"), "check", str(REPO / "config" / "config.yaml")],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No such file" not in check.stdout + check.stderr
    dry = subprocess.run([str(installed / "python"), "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules"],
                         cwd=REPO, env=_env(), capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
