"""Study configuration: schema validation with defaults, and the config subtrees each stage depends on.

The schema lives in ``tokenuni/resources/config.schema.yaml`` (one place, linked from ``workflow/schemas/``), and each
metric's entry in its own module (``options_schema``, joined by :func:`load_schema`); this module validates a
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
from tokenuni.resources import resource_path

#: package data (``tokenuni/resources``); ``workflow/schemas/config.schema.yaml`` links to it for the workflow
SCHEMA_PATH = resource_path("config.schema.yaml")


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


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error.

    PyYAML (like most YAML loaders) silently keeps the last of two equal keys, so a second
    ``metrics:`` or ``corpora:`` block would replace the first without a word. Keys brought in by a
    merge (``<<: *anchor``) may still be overridden, as YAML intends.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    seen = first_line.setdefault(key, line)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if seen != line:
                    where = f"{key_node.start_mark.name}:{line}"
                    raise ConfigError(f"{where}: the key {key!r} appears twice in one mapping (first at line {seen}); "
                                      "YAML would keep only the last one and drop the first without a word: merge "
                                      "the two entries or rename one")
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path):
    """Read a YAML (or JSON) file with :class:`StrictLoader`; a syntax error names the file and line."""
    with open(path, encoding="utf-8") as handle:
        try:
            return yaml.load(handle, Loader=StrictLoader)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({error})") from None


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config schema: the YAML file, with ``metrics.properties`` filled from every registered metric's own
    entry (:meth:`tokenuni.metrics.base.Metric.config_schema`, in :data:`tokenuni.metrics.METRICS` order)."""
    schema = load_yaml(path)
    metrics = schema.get("properties", {}).get("metrics")
    if isinstance(metrics, dict) and not metrics.get("properties"):
        from tokenuni.metrics import METRICS

        metrics["properties"] = {name: cls.config_schema() for name, cls in METRICS.items()}
    return schema


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
    problems = [_describe(e, schema) for e in errors] if errors else config_problems(config)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"invalid configuration ({len(problems)} problem(s)):\n{lines}")
    return config


#: mirror formats whose rows are scored sentence pairs (what unsupervised STS evaluates on)
SCORED_PAIR_FORMATS = ("stsb", "sick", "sts_semeval")
#: mirror formats whose rows are sentence pairs
PAIR_FORMATS = SCORED_PAIR_FORMATS + ("mrpc", "rte")


def corpus_shape(corpus: dict) -> dict[str, bool | None]:
    """Whether a corpus entry is ``paired`` and ``scored``, from its mirror format or its hub columns (None:
    the two disagree, or nothing says)."""
    answers = []
    if corpus.get("mirror"):
        fmt = corpus["mirror"]["format"]
        answers.append({"paired": fmt in PAIR_FORMATS, "scored": fmt in SCORED_PAIR_FORMATS})
    if corpus.get("hub"):
        columns = corpus["hub"].get("columns") or {}
        answers.append({"paired": "text_a" in columns and "text_b" in columns, "scored": "score" in columns})
    return {key: (answers[0][key] if all(a[key] == answers[0][key] for a in answers) else None) if answers else None
            for key in ("paired", "scored")}


def _describe_corpus(corpus: dict) -> str:
    parts = []
    if corpus.get("mirror"):
        parts.append(f"mirror format {corpus['mirror']['format']}")
    if corpus.get("hub"):
        parts.append(f"hub columns {', '.join(sorted(corpus['hub'].get('columns') or {}))}")
    return " and ".join(parts)


def config_problems(config: dict) -> list[str]:
    """What a schema-valid config cannot mean, each naming the dotted key and the fix.

    Ranges that depend on each other (k-means ``k_min`` <= ``k_max`` < ``sample_size``, LID ``k`` <
    ``sample_size``, a projection's k below its sample), corpus keys that ``sts`` and ``fit_on`` name,
    STS datasets that are not paired and scored, ``max_sentences`` below one pair, metric names in
    ``geometry_metrics``. What needs the model (its depth and width) or the data is checked by
    ``tokenuni check`` (:mod:`tokenuni.check`).
    """
    from tokenuni.metrics import METRICS

    problems: list[str] = []
    metrics = config.get("metrics", {})
    enabled = set(enabled_metrics(config))
    clusters = metrics.get("clusters", {})
    if "clusters" in enabled:
        k_min, k_max, sample = clusters["k_min"], clusters["k_max"], clusters["sample_size"]
        if k_min > k_max:
            problems.append(f"config key metrics.clusters.k_min: {k_min} is above k_max {k_max}, so no k would be "
                            "tried; lower k_min or raise k_max")
        if k_max >= sample:
            problems.append(f"config key metrics.clusters.k_max: {k_max} clusters need a sample of more than {k_max} "
                            f"tokens, and metrics.clusters.sample_size is {sample}; lower k_max below {sample} (Cai et "
                            "al. use up to 15) or raise sample_size")
        silhouette = clusters.get("silhouette_sample_size")
        if silhouette is not None and silhouette > sample:
            problems.append(f"config key metrics.clusters.silhouette_sample_size: {silhouette} is above sample_size "
                            f"{sample} (the silhouette is scored on a subset of the sample); lower it, or set it to "
                            "null to score the whole sample")
    lid = metrics.get("lid", {})
    if "lid" in enabled and lid["k"] >= lid["sample_size"]:
        problems.append(f"config key metrics.lid.k: {lid['k']} neighbours need a sample of more than {lid['k']} "
                        f"tokens, and metrics.lid.sample_size is {lid['sample_size']}; lower k or raise sample_size")
    projection = config.get("projection", {})
    if projection.get("enabled", True):
        k = projection.get("clusters", "mms")
        if k == "mms" and "clusters" not in enabled:
            problems.append('config key projection.clusters: "mms" takes k per layer from the clusters metric, but '
                            "metrics.clusters is disabled; enable it, or set projection.clusters to an integer k "
                            "or null")
        if isinstance(k, int) and not isinstance(k, bool) and k >= projection.get("sample_size", 5000):
            problems.append(f"config key projection.clusters: {k} clusters need a sample of more than {k} tokens, and "
                            f"projection.sample_size is {projection.get('sample_size', 5000)}; lower clusters or "
                            "raise sample_size")
    corpora = config.get("corpora", {})
    for key, corpus in corpora.items():
        max_sentences = corpus.get("max_sentences")
        if max_sentences is not None and max_sentences < 2 and corpus_shape(corpus)["paired"]:
            problems.append(f"config key corpora.{key}.max_sentences: {max_sentences} keeps no pair (each pair is 2 "
                            "sentences and pairs are kept whole); set it to at least 2, or null for every pair")
    sts = config.get("sts", {})
    if sts.get("enabled", True) and sts.get("datasets"):
        for dataset in sts["datasets"]:
            if dataset not in corpora:
                problems.append(f"config key sts.datasets: {dataset!r} is not a key of the corpora section (known: "
                                f"{', '.join(corpora)}); add the corpus or remove it from sts.datasets")
                continue
            shape = corpus_shape(corpora[dataset])
            if not (shape["paired"] and shape["scored"]):
                problems.append(f"config key sts.datasets: corpus '{dataset}' is not a paired, scored STS dataset "
                                f"({_describe_corpus(corpora[dataset])}); list corpora in the formats "
                                f"{', '.join(SCORED_PAIR_FORMATS)} (or hub corpora mapping text_a, text_b and score)")
        for name, transform in (sts.get("transforms") or {}).items():
            fit_on = transform.get("fit_on", "pool")
            if fit_on != "pool" and fit_on not in corpora:
                problems.append(f"config key sts.transforms.{name}.fit_on: {fit_on!r} is neither \"pool\" nor a key "
                                f"of the corpora section (known: {', '.join(corpora)})")
        problems += _unknown_metrics("sts.geometry_metrics", sts.get("geometry_metrics", []), METRICS)
    finetune = config.get("finetune", {})
    if finetune.get("enabled", True) and finetune.get("tasks"):
        problems += _unknown_metrics("finetune.geometry_metrics", finetune.get("geometry_metrics", []), METRICS)
        baseline, variants = finetune.get("baseline", "baseline"), list(finetune.get("variants") or {})
        if baseline not in variants:
            problems.append(f"config key finetune.baseline: {baseline!r} is not among finetune.variants "
                            f"({', '.join(variants)}); every variant is compared with the baseline on the same seeds")
        models = config.get("models") or {}
        unknown = [name for name in finetune.get("models") or [] if name not in models
                   and name.split("@step")[0] not in models]
        if unknown:
            problems.append(f"config key finetune.models: {', '.join(map(repr, unknown))} not in the models section "
                            f"(known: {', '.join(models)}); a key with checkpoints stands for all of them")
    return problems


def _unknown_metrics(key: str, names: list[str], known) -> list[str]:
    unknown = [name for name in names if name not in known]
    if not unknown:
        return []
    close = [f"'{m}'" for name in unknown for m in difflib.get_close_matches(name, list(known), n=1)]
    return [f"config key {key}: unknown metric(s) {', '.join(unknown)}"
            + (f"; did you mean {', '.join(close)}?" if close else "") + f" (known: {', '.join(known)})"]


def load_config(path: str | Path) -> dict:
    """Read a YAML config file (repeated keys refused, see :class:`StrictLoader`) and validate it
    (see :func:`validate_config`)."""
    config = load_yaml(path) or {}
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
