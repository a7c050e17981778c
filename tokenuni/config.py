"""Study configuration: schema validation with defaults, and the config subtrees each stage depends on.

The schema lives in ``workflow/schemas/config.schema.yaml`` (one place); this module validates a
config against it, fills in defaults, and turns jsonschema's errors into one message that names the
offending key by its dotted path.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from tokenuni.errors import TokenuniError

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(TokenuniError, ValueError):
    """A configuration problem; the message names the key (dotted path) at fault."""


def _with_defaults(validator_class):
    """Extend a jsonschema validator so that ``default`` values are filled in while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(Draft202012Validator)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _dotted(path) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _describe(error, schema: dict) -> str:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if error.absolute_path else k for k in extra)
        close = [f"'{match}'" for k in extra for match in difflib.get_close_matches(str(k), allowed, n=1)]
        suggestion = f"; did you mean {', '.join(close)}?" if close else ""
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        return f"unknown config key {keys}{suggestion}{hint}"
    if error.validator == "required":
        return f"config key {where}: {error.message}"
    return f"config key {where}: {error.message}"


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place, fill in defaults, and return it.

    Raises :class:`ConfigError` listing every problem, each with the dotted key path.
    """
    schema = schema or load_schema()
    validator = _DefaultingValidator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e, schema)}" for e in errors)
        raise ConfigError(f"invalid configuration ({len(errors)} problem(s)):\n{lines}")
    return config


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it (see :func:`validate_config`)."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle) or {}
    try:
        return validate_config(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def data_mirror(config: dict) -> str | None:
    """The local data mirror: ``$TOKENUNI_DATA`` if set, else the config key ``data_mirror``."""
    return os.environ.get("TOKENUNI_DATA") or config.get("data_mirror")


def digest(subtree: Any) -> str:
    """A stable short digest of a JSON-serialisable config subtree (recorded as an MLflow tag)."""
    blob = json.dumps(subtree, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def model_specs(config: dict) -> dict[str, dict]:
    """The study's models with checkpoints expanded: ``<key>@step<step>`` per training-step checkpoint.

    A model without ``checkpoints`` is itself (no ``training_step``); with them, each checkpoint is
    the same spec at its revision with ``training_step`` set (``checkpoints`` removed).
    """
    models = {}
    for key, spec in config["models"].items():
        base = {k: v for k, v in spec.items() if k != "checkpoints"}
        if not spec.get("checkpoints"):
            models[key] = base
            continue
        for checkpoint in spec["checkpoints"]:
            models[f"{key}@step{checkpoint['step']}"] = {**base, "revision": checkpoint["revision"],
                                                          "training_step": checkpoint["step"]}
    return models


def enabled_metrics(config: dict) -> list[str]:
    """Names of the metrics whose ``enabled`` flag is true, in schema order."""
    return [name for name, options in config["metrics"].items() if options.get("enabled", True)]
