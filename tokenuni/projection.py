"""Tokens of a layer projected on the layer's top principal components: the table behind the PCA views.

Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021
(§4, "manifolds"): the tokens of a layer, projected on its first two or three principal components and
coloured by the log frequency of their word type, show where frequent and rare tokens sit (GPT-2: a
"Swiss roll"; BERT: no such shape), and coloured by k-means cluster, how the space falls into clusters.

:func:`token_projection` streams a dump once and returns one tidy row per (layer, sampled token):

* PCA per layer, exact over every token of the layer (special tokens left out unless
  ``special_tokens``): μ = (1/N) Σ x, C = (1/N) Σ (x − μ)(x − μ)ᵀ from the streamed sufficient statistics
  (:class:`~tokenuni.numerics.MomentSums`, float64), eigenpairs C v_k = λ_k v_k in descending λ by
  :func:`~tokenuni.numerics.descending_eigh`, each v_k signed so that its largest-|loading| coordinate is
  positive (the first on ties; the convention of every eigendecomposition in tokenuni).
  ``explained_variance_ratio_pc<k>`` = λ_k / Σ_j λ_j (= λ_k / tr C, over all d components).
* The projected tokens: a seeded :class:`~tokenuni.numerics.ReservoirSample` of ``sample_size`` tokens
  (bottom-k of a hash of (sentence_id, position)), the same tokens for every layer and the same tokens
  that the ``clusters``, ``lid`` and ``alignment_uniformity`` metrics draw with the same ``seed``,
  ``sample_size`` and ``special_tokens``; ``pc<k>`` = (x − μ) · v_k.
* ``frequency``: the dump's ``frequency`` column — occurrences of the token id in the tokenised corpus,
  counted once by the embed step (:func:`tokenuni.embed.embed_corpus`, special tokens included in the
  count): the frequency notion of :mod:`tokenuni.metrics.word_frequency`, not a pre-training frequency.
* ``cluster``: k-means labels of the sampled tokens in the layer's full d-dimensional space, by
  :func:`tokenuni.numerics.kmeans` (seeded k-means++ / Lloyd, best of ``n_init``), k per layer from
  ``clusters``: an integer (every layer), a mapping layer → k, or ``None`` (no clustering: ``cluster`` is
  missing). :func:`mms_k_by_layer` reads the k chosen by maximum mean silhouette (``mms_k``) from a
  ``clusters`` metric table; with that metric's ``seed``, ``sample_size``, ``n_init``, ``max_iter``, ``tol``
  the labels are exactly those of its first repeat (the clusterings it scored). k = 1: every label 0.

Layer convention: layer 0 = embedding output (``hidden_states[0]``), layer L = output of block L.
Memory: one d × d scatter matrix per layer and the sampled vectors (layers × sample_size × d floats).
"""
from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError
from tokenuni.numerics import descending_eigh, kmeans
from tokenuni.store import DumpError


class ProjectionError(TokenuniError, ValueError):
    """Projection options, layers or a clusters table that cannot give what was asked."""


log = logging.getLogger(__name__)

#: defaults of :func:`tokenuni.numerics.kmeans` that the ``clusters`` metric also uses
KMEANS_DEFAULTS = {"n_init": 5, "max_iter": 300, "tol": 1e-4}


def resolve_layers(layers, n_layers: int, path) -> list[int]:
    """Layer indices to project (``None``: all; negative indices count from the last layer), checked."""
    if layers is None:
        return list(range(n_layers))
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
            raise ProjectionError(f"{path}: layer {layer!r} is not an integer layer index")
        index = int(layer) + n_layers if layer < 0 else int(layer)
        if not 0 <= index < n_layers:
            raise ProjectionError(f"{path}: layer {layer} does not exist; the dump has layers 0..{n_layers - 1} "
                                  f"(layer 0 = embedding output; negative indices count from the last layer)")
        if index not in resolved:
            resolved.append(index)
    return sorted(resolved)


def mms_k_by_layer(clusters_table) -> dict[int, int]:
    """k chosen by maximum mean silhouette per layer (rows ``mms_k``) of a ``clusters`` metric table (path or frame)."""
    table = clusters_table if isinstance(clusters_table, pd.DataFrame) else pd.read_parquet(clusters_table)
    rows = table[table["metric"] == "mms_k"]
    if rows.empty:
        name = "" if isinstance(clusters_table, pd.DataFrame) else clusters_table
        raise ProjectionError(f"clusters table {name} has no mms_k rows (is it the table of the clusters metric?)")
    return {int(layer): int(round(value)) for layer, value in zip(rows["layer"], rows["value"])}


def projection_options(options: Mapping, clusters_table=None) -> dict:
    """Keyword arguments of :func:`token_projection` from the config's ``projection`` section.

    ``clusters``: ``"mms"`` = the k per layer chosen by the clusters metric (``clusters_table`` required),
    an integer k, or ``None``; ``kmeans``: k-means options (``n_init``, ``max_iter``, ``tol``). ``enabled``
    is ignored.
    """
    known = {"enabled", "layers", "sample_size", "seed", "components", "clusters", "special_tokens", "kmeans"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ProjectionError(f"projection: unknown option(s) {unknown}; known: {sorted(known)}")
    clusters = options.get("clusters")
    if clusters == "mms":
        if clusters_table is None:
            raise ProjectionError('projection: clusters "mms" takes k per layer from the clusters metric; '
                                  "pass its table (--clusters-table) or set clusters to an integer k or null")
        clusters = mms_k_by_layer(clusters_table)
    elif isinstance(clusters, str):
        raise ProjectionError(f'projection: clusters must be "mms", an integer k or null, got {clusters!r}')
    return {"layers": options.get("layers"), "sample_size": int(options.get("sample_size", 5000)),
            "seed": int(options.get("seed", 0)), "components": int(options.get("components", 3)),
            "clusters": clusters, "special_tokens": bool(options.get("special_tokens", False)),
            "kmeans_options": dict(options.get("kmeans") or {})}


def _clusters_per_layer(clusters, layers: list[int], path) -> dict[int, int]:
    if clusters is None:
        return {}
    if isinstance(clusters, Mapping):
        missing = [layer for layer in layers if layer not in clusters]
        if missing:
            raise ProjectionError(f"{path}: no number of clusters for layer(s) {missing} "
                                  f"(clusters given for layers {sorted(clusters)})")
        ks = {layer: int(clusters[layer]) for layer in layers}
    elif isinstance(clusters, (int, np.integer)) and not isinstance(clusters, bool):
        ks = {layer: int(clusters) for layer in layers}
    else:
        raise ProjectionError(f"clusters must be None, an integer k or a mapping layer -> k, got {clusters!r}")
    bad = {layer: k for layer, k in ks.items() if k < 1}
    if bad:
        raise ProjectionError(f"{path}: the number of clusters must be >= 1, got {bad} (layer: k)")
    return ks


def token_projection(dump_path, *, layers=None, sample_size: int = 5000, seed: int = 0, components: int = 3,
                     clusters: int | Mapping[int, int] | None = None, special_tokens: bool = False,
                     kmeans_options: Mapping | None = None, model: str | None = None, corpus: str | None = None,
                     device="cpu", progress: bool = True, statistics_path=None,
                     expected: dict | None = None) -> pd.DataFrame:
    """Project a seeded token sample on each layer's top principal components (exact PCA over all tokens).

    ``dump_path``: a dump (one read: moments and the sample), the metrics suite's statistics file (``.npz``: no
    dump needed, the moments and the shared sample it holds), or such statistics already loaded (a dict).

    Returns one row per (layer, sampled token) with columns ``model, training_step, corpus, layer,
    token_index`` (row in the dump), ``sentence_id, position, token_id, token, special, frequency,
    pc1 … pc<components>, explained_variance_ratio_pc1 …, n_tokens`` (tokens in the PCA), ``cluster,
    cluster_k`` (nullable; ``None`` when ``clusters`` is None), ``seed, sample_size``. ``model`` and
    ``corpus`` default to the dump's metadata; ``expected``: what the dump or the statistics must have been written
    for (:func:`tokenuni.store.check_provenance`, before anything is read or computed). See the module docstring
    for the formulas.
    """
    import torch

    from tokenuni.statistics import (
        LayerMoments,
        StatisticsPass,
        check_statistics_provenance,
        json_value,
        load_statistics,
        sample_for_layer,
        stream_dump,
    )

    if int(sample_size) < 1:
        raise ProjectionError(f"projection: sample_size must be at least 1, got {sample_size}")
    if int(components) < 1:
        raise ProjectionError(f"projection: components must be at least 1, got {components}")
    kmeans_options = {**KMEANS_DEFAULTS, **(kmeans_options or {})}
    unknown = sorted(set(kmeans_options) - set(KMEANS_DEFAULTS))
    if unknown:
        raise ProjectionError(f"projection: unknown k-means option(s) {unknown}; known: {sorted(KMEANS_DEFAULTS)}")
    device = torch.device(device)
    token_set = "all" if special_tokens else "regular"
    key = f"{int(seed)}_{token_set}"
    if isinstance(dump_path, dict):  # statistics already in memory
        statistics, path = dump_path, Path(statistics_path or "statistics")
        check_statistics_provenance(path, statistics, expected)
    elif str(dump_path).endswith(".npz"):  # the metrics suite's statistics file (no dump needed)
        statistics, path = load_statistics(dump_path), Path(dump_path)
        check_statistics_provenance(path, statistics, expected)
    else:  # a dump: one read for the moments and the sample (its metadata checked first)
        path = Path(dump_path)
        plan = {"samples": {key: int(sample_size)}}
        statistics = stream_dump(path, lambda n_layers, metadata, moments: StatisticsPass(
            plan, n_layers, metadata, moments=moments, device=device), device=device, progress=progress,
            desc=f"projection {model or ''}/{corpus or ''}", expected=expected)
    if f"sample/{key}/size" not in statistics or int(statistics[f"sample/{key}/size"]) < int(sample_size):
        raise DumpError(f"{path}: holds no token sample of seed {seed} ({token_set} tokens) with {sample_size} tokens; "
                        "rerun its metrics pass with the projection's options")
    meta = json_value(statistics["metadata.json"])
    n_layers, hidden_size = int(statistics["n_layers"]), int(statistics["hidden_size"])
    model = model or meta.get("model_id", path.parent.name)
    corpus = corpus or meta.get("corpus", path.stem)
    layer_list = resolve_layers(layers, n_layers, path)
    ks = _clusters_per_layer(clusters, layer_list, path)
    if int(components) > hidden_size:
        raise ProjectionError(f"{path}: components={components} exceeds the hidden size {hidden_size}")
    all_moments = LayerMoments.from_state_dict(statistics, n_layers, device)
    n_tokens = all_moments.of(layer_list[0], token_set).count
    if n_tokens < 2:
        raise DumpError(f"{path}: {n_tokens} token(s) to project (special tokens "
                        f"{'included' if special_tokens else 'excluded'}); need at least 2")

    # the sample's smallest `sample_size` hashes, in (sentence_id, position) order: the shared sample's rows
    prefix = f"sample/{key}"
    keys = np.asarray(statistics[f"{prefix}/keys"])
    chosen = np.sort(np.argsort(keys, kind="stable")[:int(sample_size)])  # the stored order is (sentence, position)
    rows = np.asarray(statistics[f"{prefix}/row"])[chosen].astype(np.int64)
    if 1 < len(rows) < int(sample_size):  # every token is in the sample: record the size used, say so once
        log.warning("projection %s/%s: sample_size %d lowered to %d, the number of tokens in the dump (special "
                    "tokens %s); the table records %d", model, corpus, int(sample_size), len(rows),
                    "included" if special_tokens else "excluded", len(rows))
    base = pd.DataFrame({
        "model": model,
        "training_step": pd.array([int(meta["training_step"]) if meta.get("training_step") else pd.NA] * len(rows),
                                  dtype="Int64"),
        "corpus": corpus,
        "token_index": rows,
        "sentence_id": np.asarray(statistics[f"{prefix}/sentence_id"])[chosen].astype(np.int64),
        "position": np.asarray(statistics[f"{prefix}/position"])[chosen].astype(np.int64),
        "token_id": np.asarray(statistics[f"{prefix}/token_id"])[chosen].astype(np.int64),
        "token": np.asarray(statistics[f"{prefix}/token"])[chosen].astype(str),
        "special": np.asarray(statistics[f"{prefix}/special"])[chosen].astype(bool),
        "frequency": np.asarray(statistics[f"{prefix}/frequency"])[chosen].astype(np.int64),
    })
    frames = []
    for layer in layer_list:
        moment = all_moments.of(layer, token_set).select(range(hidden_size))
        sampled = sample_for_layer(statistics, key, layer, device).bottom(int(sample_size)).rows()["x"]
        mean = moment.mean()
        eigenvalues, eigenvectors = descending_eigh(moment.covariance(ddof=0))
        top = eigenvectors[:, :int(components)]
        total = float(eigenvalues.clamp_min(0).sum())
        projected = ((sampled - mean) @ top).cpu().numpy()
        frame = base.copy()
        frame.insert(3, "layer", layer)
        for k in range(int(components)):
            frame[f"pc{k + 1}"] = projected[:, k]
        for k in range(int(components)):
            ratio = float(eigenvalues[k]) / total if total > 0 else float("nan")
            frame[f"explained_variance_ratio_pc{k + 1}"] = ratio
        frame["n_tokens"] = int(moment.count)
        if layer in ks:
            k = min(ks[layer], len(rows))
            if k != ks[layer]:
                log.warning("projection %s/%s layer %d: k lowered from %d to the %d sampled tokens",
                            model, corpus, layer, ks[layer], len(rows))
            if k == 1:
                labels = np.zeros(len(rows), dtype=np.int64)
            else:
                labels = kmeans(sampled, k, seed=int(seed), key=(0,), **kmeans_options)[0].cpu().numpy()
            frame["cluster"] = pd.array(labels, dtype="Int64")
            frame["cluster_k"] = pd.array([k] * len(rows), dtype="Int64")
        else:
            frame["cluster"] = pd.array([pd.NA] * len(rows), dtype="Int64")
            frame["cluster_k"] = pd.array([pd.NA] * len(rows), dtype="Int64")
        frame["seed"] = int(seed)
        frame["sample_size"] = len(rows)  # the sample drawn: sample_size, or every token when there are fewer
        frames.append(frame)
        log.info("projection %s/%s layer %d: %d tokens, PC1-%d explain %s of the variance%s", model, corpus, layer,
                 moment.count, int(components),
                 ", ".join(f"{100 * frame[f'explained_variance_ratio_pc{k + 1}'].iat[0]:.1f} %"
                           for k in range(int(components))),
                 f", k = {ks[layer]}" if layer in ks else "")
    return pd.concat(frames, ignore_index=True)
