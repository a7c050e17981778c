"""Geometry metrics, one module per metric (``tokenuni/metrics/<name>.py``), and the runner.

:data:`METRICS` maps a config name to its accumulator class: every module of the package is imported here, and a
``Metric`` subclass with a ``name`` registers itself (:data:`tokenuni.metrics.base.REGISTRY`), so adding a metric is
its file (with its rows and its config entry, ``options_schema``) and its test. :func:`compute_metric` streams a dump
(once per pass the metric needs), feeding every layer's accumulator, and returns the tidy rows.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import replace

import pandas as pd

from tokenuni.metrics.base import REGISTRY, Metric, MetricError, MetricValue, TokenBatch, new_job_warnings

log = logging.getLogger(__name__)

#: modules of the package that are not metrics
_NOT_METRICS = frozenset({"base", "rows", "suite"})
for _module in sorted(info.name for info in pkgutil.iter_modules(__path__)):
    if _module not in _NOT_METRICS:
        importlib.import_module(f"{__name__}.{_module}")

#: config name -> accumulator class: every ``Metric`` subclass with a ``name`` in a module of this package
#: (:data:`tokenuni.metrics.base.REGISTRY`), in module order
METRICS: dict[str, type[Metric]] = dict(REGISTRY)

TIDY_COLUMNS = ["model", "training_step", "corpus", "layer", "metric", "variant", "component", "value", "spread",
                "n", "sample_size", "seed"]


def make_metric(name: str | type[Metric], options: dict, device) -> Metric:
    """An accumulator for metric ``name`` (a config name, or a :class:`Metric` subclass) with ``options``."""
    cls = name if isinstance(name, type) else METRICS.get(name)
    if cls is None:
        raise MetricError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    try:
        return cls(device=device, **options)
    except TypeError as error:
        raise MetricError(f"metric {cls.name}: bad options {sorted(options)}: {error}") from None


def compute_metric(dump_path, name: str | type[Metric], options: dict, *, model: str, corpus: str,
                   device="cpu", progress: bool = True, expected: dict | None = None) -> pd.DataFrame:
    """Stream the dump (once per pass the metric needs) and return its tidy table for every layer.

    ``expected``: what the dump must have been written for (:func:`tokenuni.sources.expected_provenance`),
    checked before anything is computed (:func:`tokenuni.store.check_provenance`).
    """
    from tqdm.auto import tqdm

    from tokenuni.store import check_provenance, layer_column, open_dump, vector_tensor

    dump = open_dump(dump_path)
    check_provenance(dump.path, dump.metadata, expected)
    new_job_warnings()  # an option lowered for every layer is said once per job
    layers = list(range(dump.n_layers))
    accumulators = {layer: make_metric(name, options, device).bind(layer, dump.metadata) for layer in layers}
    label = accumulators[0].name
    passes = accumulators[0].passes
    total = dump.reader.num_record_batches
    torch_device = accumulators[0].device
    for index in range(passes):
        for accumulator in accumulators.values():
            accumulator.begin_pass(index)
        desc = f"{label} {model}/{corpus}" + (f" pass {index + 1}/{passes}" if passes > 1 else "")
        for batch in tqdm(dump.batches(), total=total, desc=desc, unit="batch", disable=not progress):
            tokens = TokenBatch.from_record_batch(batch, torch_device, vector_column=layer_column(0))
            for layer in layers:
                if layer:
                    tokens = replace(tokens, x=vector_tensor(batch.column(layer_column(layer)), torch_device))
                accumulators[layer].update(tokens)
    step = dump.metadata.get("training_step") or None
    rows = []
    for layer in layers:
        for value in accumulators[layer].compute():
            rows.append({"model": model, "training_step": step, "corpus": corpus, "layer": layer, **value.__dict__})
    table = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return normalise_tidy(table)


def metric_on_matrix(name: str | type[Metric], options: dict, x, *, device="cpu", sentence_id=None,
                     chunk_size: int = 4096) -> list[MetricValue]:
    """Run a metric over an in-memory (n, d) matrix (e.g. pooled sentence embeddings), in chunks.

    Each row is its own "sentence" and "type" unless ``sentence_id`` is given; positions are 0.
    """
    import numpy as np
    import torch

    metric = make_metric(name, options, device)
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=metric.device)
    n = len(x)
    ids = torch.arange(n, device=metric.device) if sentence_id is None else torch.as_tensor(sentence_id, device=metric.device)
    zeros = torch.zeros(n, dtype=torch.int64, device=metric.device)
    for index in range(metric.passes):
        metric.begin_pass(index)
        for start in range(0, n, chunk_size):
            part = slice(start, start + chunk_size)
            metric.update(TokenBatch(x[part], ids[part], ids[part], zeros[part].bool(), zeros[part] + 1, zeros[part]))
    return metric.compute()


def normalise_tidy(table: pd.DataFrame) -> pd.DataFrame:
    """Fix the dtypes of a tidy metrics table (nullable integers for component/sample_size/seed)."""
    table = table.reindex(columns=TIDY_COLUMNS)
    table["layer"] = table["layer"].astype("int64")
    table["n"] = table["n"].astype("int64")
    table["training_step"] = pd.to_numeric(table["training_step"]).astype("Int64")
    for column in ("component", "sample_size", "seed"):
        table[column] = table[column].astype("Int64")
    table["value"] = table["value"].astype("float64")
    table["spread"] = table["spread"].astype("float64")
    table["variant"] = table["variant"].fillna("").astype(str)
    return table
