"""Files the library reads at run time, shipped as package data so that a plain ``pip install .`` works
without the source tree: the config schema (``config.schema.yaml``) and the figure captions
(``captions/*.rst``). The workflow sees the same files through the links ``workflow/schemas/config.schema.yaml``
and ``workflow/report`` (the Snakemake catalog's layout), so each file has one place."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource_path(name: str) -> Path:
    """The path of the package resource ``name`` (e.g. ``"config.schema.yaml"`` or ``"captions"``).

    Packages installed from a wheel or in editable mode are plain folders, so this is a real path."""
    return Path(str(files(__name__).joinpath(name)))
