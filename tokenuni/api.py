"""tokenuni in a notebook: the workflow's own stages on a model and a list of texts, without Snakemake.

``tokenuni.measure(model, texts)`` returns the per-layer tidy metrics table (the columns of the workflow's
``tables/metrics.parquet``), computed by the same code as the workflow's ``corpus``, ``embed`` and
``metric`` jobs (:func:`tokenuni.corpora.import_corpus`, :func:`tokenuni.embed.embed_corpus`,
:func:`tokenuni.metrics.compute_metric`) with the same defaults (the config schema's), on a dump in a
temporary folder — so on the same texts its values are the workflow's. ``tokenuni.sts(model, pairs,
scores)`` is the workflow's unsupervised STS (:func:`tokenuni.sentences.embed_sentences`, a post-hoc
transform fit on the pairs' own sentences, :func:`tokenuni.sts.pair_cosines`,
:func:`tokenuni.sts.sts_correlations`); ``tokenuni.sentence_vectors`` gives the pooled vectors for the
transforms' ``fit`` / ``transform`` on arrays (:func:`tokenuni.transforms.make_transform`).

MLflow is used only when asked (``mlflow=True`` or a ``tracking_uri``): the measurement becomes one run,
written as a run record and imported by the same single writer as the workflow's jobs
(:func:`tokenuni.tracking.sync_records`).

A model is a hub id (``"sentence-transformers/all-MiniLM-L6-v2"``, pinned with ``"<id>@<revision>"``), a
local folder saved by ``save_pretrained``, or a config entry (``{"id": ..., "revision": ..., ...}``); it
resolves like the workflow's (a local path, an installed weight package, the Hugging Face cache, the hub).
"""
from __future__ import annotations

import copy
import logging
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError
from tokenuni.metrics.rows import view

log = logging.getLogger(__name__)

#: the metrics ``measure`` computes unless told otherwise: the exact, streaming ones (one or two passes over
#: the dump, seconds on a CPU); the sampled ones (clusters, lid, ...) on request
DEFAULT_METRICS = ("spectrum", "cosine_family", "isoscore", "token_uniformity")
#: the per-layer headline table: (metric, variant) -> column, in this order (the row catalogue's view)
PER_LAYER_COLUMNS = {(r.name, r.headline_variant): r.column for r in view("measure_table")}
POOLING_SHORTHANDS = {"mean": {"pool": "mean", "layers": [-1]}, "cls": {"pool": "cls", "layers": [-1]},
                      "max": {"pool": "max", "layers": [-1]}, "first_last": {"pool": "mean", "layers": [0, -1]}}
_KEY = re.compile(r"[^A-Za-z0-9_.-]+")


class ApiError(TokenuniError, ValueError):
    """An argument of the notebook API that cannot mean what was asked; the message names it."""


# -- arguments -------------------------------------------------------------------------------------------
def as_key(text: str, fallback: str) -> str:
    """``text`` as a config key (letters, digits, ``_ . -``; starting with a letter or digit)."""
    key = _KEY.sub("-", str(text)).strip("-._")
    return key or fallback


def model_entry(model, **overrides) -> tuple[str, dict]:
    """(key, config entry) of ``model``: a hub id (``id@revision`` pins a revision), a local folder, or an entry.

    ``overrides`` (``batch_size``, ``max_length``, ``dtype``, … ; None = the schema's default) go into the
    entry. The key is the id's last part (``all-MiniLM-L6-v2``), or the folder's name.
    """
    if isinstance(model, dict):
        spec = dict(model)
        if "id" not in spec:
            raise ApiError(f"model {model!r}: a model entry needs an id (and optionally revision, path, ...)")
    elif isinstance(model, (str, Path)):
        text = str(model)
        folder = Path(text).expanduser()
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ApiError(f"model folder {folder} has no config.json: point at a folder saved by "
                               "save_pretrained (or give a hub id)")
            spec = {"id": folder.resolve().name, "path": str(folder.resolve())}
        elif text.count("@") == 1 and not text.startswith("@"):
            model_id, revision = text.split("@")
            spec = {"id": model_id, "revision": revision or None}
        elif "@" in text or not text.strip() or text.startswith(("/", ".", "~")):
            raise ApiError(f"model {text!r} is neither an existing folder nor a hub id (org/name, or "
                           "org/name@revision)")
        else:
            spec = {"id": text}
    else:
        raise ApiError(f"model must be a hub id, a folder or a config entry, not {type(model).__name__}")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    key = as_key(spec["id"].rstrip("/").split("/")[-1], "model")
    return key, spec


def validated(models: dict, corpora: dict, metrics: dict | None = None, **sections) -> dict:
    """A config of ``models``, ``corpora`` and ``metrics`` (projection, STS and fine-tuning off unless
    ``sections`` say otherwise) validated by the schema, defaults filled in."""
    from tokenuni.config import validate_config

    sections = {"projection": {"enabled": False}, "sts": {"enabled": False}, "finetune": {"enabled": False},
                **sections}  # geometry only, unless asked
    config = {"models": copy.deepcopy(models), "corpora": copy.deepcopy(corpora), **copy.deepcopy(sections)}
    if metrics is not None:
        config["metrics"] = copy.deepcopy(metrics)
    return validate_config(config)


def metrics_section(metrics) -> dict:
    """The config's ``metrics`` section for ``metrics``: None = :data:`DEFAULT_METRICS`, a list of names, a
    comma-separated string, or ``{name: options}``, in the order given; every other metric disabled, after them."""
    from tokenuni.metrics import METRICS

    if metrics is None:
        metrics = list(DEFAULT_METRICS)
    if isinstance(metrics, str):
        metrics = [name.strip() for name in metrics.split(",") if name.strip()]
    chosen = dict(metrics) if isinstance(metrics, dict) else {name: {} for name in metrics}
    unknown = [name for name in chosen if name not in METRICS]
    if unknown or not chosen:
        raise ApiError(f"metrics: unknown {', '.join(map(repr, unknown))} (known: {', '.join(METRICS)})" if unknown
                       else f"metrics: name at least one (known: {', '.join(METRICS)})")
    return {**{name: dict(options) for name, options in chosen.items()},
            **{name: {"enabled": False} for name in METRICS if name not in chosen}}


def headline_per_layer(table: pd.DataFrame) -> pd.DataFrame:
    """The tidy metrics table of one model and corpus as layers × headline metrics (:data:`PER_LAYER_COLUMNS`:
    the papers' variants; scalar rows only; several rows of a layer, e.g. seeds, averaged)."""
    rows = table[table["component"].isna()].copy()
    rows["variant"] = rows["variant"].fillna("").astype(str)
    rows["column"] = [PER_LAYER_COLUMNS.get((m, v)) for m, v in zip(rows["metric"], rows["variant"])]
    rows = rows[rows["column"].notna()]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="layer", columns="column", values="value", aggfunc="mean")
    return wide[[c for c in PER_LAYER_COLUMNS.values() if c in wide.columns]].rename_axis(columns=None)


def _texts_entry(texts, corpus: str | None, max_sentences, seed: int) -> tuple[str, dict, str | None]:
    """(corpus key, corpus entry, mirror root) for a list of strings, a text file (one text per line) or a
    corpus entry of the config."""
    if isinstance(texts, dict):
        return as_key(corpus or "corpus", "corpus"), {**texts, **_sampling(max_sentences, seed)}, None
    if isinstance(texts, (str, Path)):
        path = Path(texts).expanduser()
        if not path.is_file():
            raise ApiError(f"texts: {path} is not a file (pass a list of strings, a text file with one text per "
                           "line, or a corpus entry of the config)")
        path = path.resolve()
        entry = {"mirror": {"format": "lines", "files": [path.name]}, **_sampling(max_sentences, seed)}
        return as_key(corpus or path.stem, "texts"), entry, str(path.parent)
    if isinstance(texts, np.ndarray) or (isinstance(texts, (list, tuple, pd.Series))):
        texts = list(texts)
        if not all(isinstance(text, str) for text in texts):
            bad = next(i for i, text in enumerate(texts) if not isinstance(text, str))
            raise ApiError(f"texts[{bad}] is a {type(texts[bad]).__name__}, not a string")
        return as_key(corpus or "texts", "texts"), {"texts": texts, **_sampling(max_sentences, seed)}, None
    raise ApiError(f"texts must be a list of strings, a text file or a corpus entry, not {type(texts).__name__}")


def _sampling(max_sentences, seed: int) -> dict:
    return {"max_sentences": max_sentences, "seed": seed} if max_sentences is not None else {}


def _device(device) -> str:
    return "auto" if device is None else str(device)


# -- measure ---------------------------------------------------------------------------------------------
def measure(model, texts, metrics=None, *, device=None, corpus: str | None = None, max_sentences: int | None = None,
            seed: int = 0, batch_size: int | None = None, max_length: int | None = None, mlflow: bool = False,
            tracking_uri: str | None = None, experiment: str = "tokenuni-notebook", progress: bool = True
            ) -> pd.DataFrame:
    """The per-layer geometry of ``model`` on ``texts``: the workflow's tidy metrics table, without Snakemake.

    ``texts``: a list of strings (one sentence each), a text file (one per line) or a corpus entry of the
    config (``{"mirror": {"format": "wikitext", "files": [...]}, "max_sentences": 1000}``, read from
    ``$TOKENUNI_DATA``). ``metrics``: names (``["spectrum", "clusters"]``), ``{name: options}`` or None for
    :data:`DEFAULT_METRICS`; options not given take the schema's defaults, as in a study. ``device``:
    ``"cpu"``, ``"cuda"``, or None for CUDA when present. ``max_sentences``: a seeded sample, as a corpus's.

    Returns one row per (layer, metric, variant, component) with the columns of ``tables/metrics.parquet``
    (``model``/``corpus``: the model's key and ``corpus`` or the file's stem). ``headline_per_layer(table)``
    pivots it to layers × headline metrics. With ``mlflow=True`` (the tracking URI of ``MLFLOW_TRACKING_URI``,
    else ``./mlflow.db``) or ``tracking_uri``, it is also one MLflow run in ``experiment``; its run id is
    ``table.attrs["mlflow_run_id"]``.
    """
    from tokenuni.config import data_mirror
    from tokenuni.corpora import import_corpus
    from tokenuni.devices import select_device
    from tokenuni.embed import embed_corpus
    from tokenuni.metrics import compute_metric
    from tokenuni.tables import merge_tables, write_table

    key, spec = model_entry(model, batch_size=batch_size, max_length=max_length)
    corpus_key, entry, mirror = _texts_entry(texts, corpus, max_sentences, seed)
    in_memory = entry.pop("texts", None)
    if in_memory is not None:  # the schema fills in the defaults of a corpus entry (drop_empty, seed, ...)
        entry["mirror"] = {"format": "lines", "files": ["<texts>"]}
    config = validated({key: spec}, {corpus_key: entry}, metrics_section(metrics))
    spec, entry = config["models"][key], config["corpora"][corpus_key]
    if in_memory is not None:
        entry = {**{k: v for k, v in entry.items() if k not in ("mirror", "hub")}, "texts": in_memory}
    options = {name: opts for name, opts in config["metrics"].items() if opts.get("enabled", True)}
    metric_device = select_device(_device(device))
    with tempfile.TemporaryDirectory(prefix="tokenuni-measure-") as tmp:
        folder = Path(tmp)
        corpus_file = folder / f"{corpus_key}.parquet"
        summary = import_corpus({"name": corpus_key, **entry}, mirror or data_mirror(config), corpus_file)
        dump = folder / f"{corpus_key}.arrow"
        embedded = embed_corpus(corpus_file, spec, dump, corpus_name=corpus_key, device=_device(device),
                                progress=progress)
        tables = []
        for name, opts in options.items():
            path = folder / "metrics" / f"{name}.parquet"
            write_table(compute_metric(dump, name, opts, model=key, corpus=corpus_key, device=metric_device,
                                       progress=progress), path)
            tables.append(path)
        table = merge_tables(tables)  # the workflow's metrics_table: the same sort and dtypes
        log.info("measured %s on %s: %d sentences, %d tokens, %d layers, %d metrics", spec["id"], corpus_key,
                 summary["rows_after"], embedded["tokens"], embedded["layers"], len(options))
        if mlflow or tracking_uri:
            table.attrs["mlflow_run_id"] = _log_measurement(table, folder, key, corpus_key, spec, options, embedded,
                                                            tracking_uri, experiment)
    return table


def _log_measurement(table, folder: Path, model: str, corpus: str, spec: dict, options: dict, embedded: dict,
                     tracking_uri: str | None, experiment: str) -> str:
    """One MLflow run of a notebook measurement, through a run record and the single-writer sync."""
    from tokenuni.results import StageResult
    from tokenuni.tables import write_table
    from tokenuni.tracking import record as record_result
    from tokenuni.tracking import resolve_tracking_uri, sqlite_store, sync_records

    uri = tracking_uri or resolve_tracking_uri(None, Path.cwd())
    record = folder / "runs" / "measure" / f"{model}__{corpus}.json"
    tsv = folder / f"{model}__{corpus}.tsv"
    write_table(table, tsv)
    result = StageResult(
        outputs={"table": tsv},
        metrics={k: v for k, v in embedded.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        tags={"tokenuni.device": embedded["device"], "tokenuni.model_source": embedded["model_source"]},
        artifacts=[(tsv, "metrics")])
    result.add_tidy(table)
    record_result(result, record_path=record, rule="measure", wildcards={"model": model, "corpus": corpus},
                  params={"model": spec, "metrics": options})
    store = sqlite_store(uri)
    artifacts = str(store.parent / "mlartifacts") if store is not None else None
    result = sync_records([record], tracking_uri=uri, experiment=experiment, artifact_location=artifacts)
    run_id = next(iter(result["runs"].values()))
    log.info("MLflow run %s in experiment %s (%s)", run_id, experiment, uri)
    return run_id


# -- sentence embeddings and STS -------------------------------------------------------------------------
def _pooling(pooling) -> tuple[str, dict]:
    if isinstance(pooling, str):
        if pooling not in POOLING_SHORTHANDS:
            raise ApiError(f"pooling {pooling!r}: use one of {', '.join(POOLING_SHORTHANDS)} or a mapping "
                           '{"pool": "mean"|"cls"|"max", "layers": [...]}')
        return pooling, dict(POOLING_SHORTHANDS[pooling])
    if isinstance(pooling, dict):
        return "pooling", dict(pooling)
    raise ApiError(f"pooling must be a name or a mapping, not {type(pooling).__name__}")


def _sentence_file(model, examples, folder: Path, pooling, device, batch_size, max_length, progress):
    """Write ``examples`` as a corpus and its pooled sentence embeddings; returns (model key, spec, file,
    pooling name)."""
    from tokenuni.corpora import examples_to_table, write_corpus
    from tokenuni.sentences import embed_sentences

    key, spec = model_entry(model, batch_size=batch_size, max_length=max_length)
    spec = validated({key: spec}, {"texts": {"mirror": {"format": "lines", "files": ["<texts>"]}}})["models"][key]
    name, pooling_spec = _pooling(pooling)
    corpus_file = folder / "corpus.parquet"
    write_corpus(examples_to_table(examples), corpus_file, {"name": "texts", "source": "texts"})
    out = folder / "sentences.arrow"
    embed_sentences(corpus_file, spec, {name: pooling_spec}, out, corpus_name="texts", device=_device(device),
                    progress=progress)
    return key, spec, out, name


def sentence_vectors(model, texts, pooling="mean", *, device=None, batch_size: int | None = None,
                     max_length: int | None = None, progress: bool = True) -> np.ndarray:
    """Pooled sentence embeddings (n, d) float64 of ``texts`` (a list of strings), as the workflow's
    ``sentence_embed`` job pools them. ``pooling``: ``mean`` (last layer, special tokens included:
    sentence-transformers' pooling), ``cls``, ``max``, ``first_last`` (embedding output and last layer), or
    ``{"pool": ..., "layers": [...], "special_tokens": ...}``."""
    from tokenuni.corpora import Example, has_visible_text
    from tokenuni.sentences import read_sentences

    texts = list(texts)
    empty = [i for i, text in enumerate(texts) if not isinstance(text, str) or not has_visible_text(text)]
    if empty:
        raise ApiError(f"texts{empty[:5]}: not a string, or no visible character (an empty text has no embedding)")
    examples = [Example((text,), subset="texts", where=f"texts[{i}]") for i, text in enumerate(texts)]
    with tempfile.TemporaryDirectory(prefix="tokenuni-sentences-") as tmp:
        _, _, out, name = _sentence_file(model, examples, Path(tmp), pooling, device, batch_size, max_length,
                                         progress)
        return read_sentences(out, name)[1]


def _pairs(pairs, scores) -> list:
    from tokenuni.corpora import Example, has_visible_text

    if isinstance(pairs, tuple) and len(pairs) == 2 and not isinstance(pairs[0], str):
        first, second = list(pairs[0]), list(pairs[1])
        if len(first) != len(second):
            raise ApiError(f"pairs: {len(first)} first and {len(second)} second sentences")
        pairs = list(zip(first, second))
    pairs, scores = list(pairs), [float(s) for s in scores]
    if len(pairs) != len(scores):
        raise ApiError(f"pairs and scores: {len(pairs)} pairs but {len(scores)} scores")
    if len(pairs) < 3:
        raise ApiError(f"pairs: {len(pairs)} pair(s); a rank correlation needs at least 3")
    examples = []
    for i, (pair, score) in enumerate(zip(pairs, scores)):
        if len(pair) != 2 or not all(isinstance(t, str) and has_visible_text(t) for t in pair):
            raise ApiError(f"pairs[{i}]: expected two non-empty strings, got {pair!r}")
        if not np.isfinite(score):
            raise ApiError(f"scores[{i}]: {score} is not a finite number")
        examples.append(Example(tuple(pair), score=score, subset="pairs", where=f"pairs[{i}]"))
    return examples


def _transforms(transform) -> list:
    """(name, spec or fitted Transform) for each transform asked for."""
    from tokenuni.transforms import Transform

    items = transform if isinstance(transform, list) else [transform]
    out = []
    for item in items:
        if isinstance(item, str):
            out.append((item, {"type": "identity" if item == "none" else item}))
        elif isinstance(item, dict):
            if "type" not in item:
                raise ApiError(f"transform {item!r}: a mapping needs a type (and optionally params)")
            out.append((item.get("name") or item["type"], item))
        elif isinstance(item, Transform):
            out.append((item.name, item))
        else:
            raise ApiError(f"transform must be a name, a mapping, a Transform or a list of them, not {item!r}")
    return out


def sts(model, pairs, scores, pooling="mean", transform="none", *, device=None, batch_size: int | None = None,
        max_length: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Unsupervised STS of ``model``: Spearman and Pearson × 100 between the cosine of the pooled embeddings
    of each pair and its gold score, after a post-hoc ``transform`` (the workflow's ``sts`` job on one dataset).

    ``pairs``: a list of ``(a, b)`` or a tuple ``(texts_a, texts_b)``; ``scores``: one gold score per pair.
    ``pooling`` as in :func:`sentence_vectors`. ``transform``: ``"none"`` (identity), a transform name
    (``"whitening"``, ``"softdecay"``, …), ``{"type": ..., "params": {...}}``, a fitted
    :class:`~tokenuni.transforms.Transform` (applied as it is), or a list of them: one row each. A transform
    not yet fitted is fit on the pairs' own sentences (``fit_on`` pool, as the papers do).
    """
    from tokenuni.sentences import read_sentences
    from tokenuni.sts import pair_cosines, sts_correlations
    from tokenuni.transforms import make_transform

    examples = _pairs(pairs, scores)
    asked = _transforms(transform)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokenuni-sts-") as tmp:
        key, _, out, name = _sentence_file(model, examples, Path(tmp), pooling, device, batch_size, max_length,
                                           progress)
        table, vectors = read_sentences(out, name)
        frame = table.to_pandas()
    for label, item in asked:
        if isinstance(item, dict):
            fitted = make_transform(item["type"], item.get("params") or {}).fit(vectors)
            fitted.fitted_on = "pool:pairs"
        else:
            fitted = item if item.fitted else item.fit(vectors)
            fitted.fitted_on = fitted.fitted_on or "pool:pairs"
        cosines = pair_cosines(frame, np.asarray(fitted.transform(vectors), dtype=np.float64), dataset="pairs")
        result = sts_correlations(cosines, "pairs").iloc[-1]
        rows.append({"model": key, "pooling": name, "transform": label, "fit_on": fitted.fitted_on,
                     "spearman": result["spearman"], "pearson": result["pearson"], "n": int(result["n"])})
    return pd.DataFrame(rows)
