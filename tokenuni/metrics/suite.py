"""Every metric of a dump from one read: the shared pass (sufficient statistics) and the per-metric derivations.

The design (README, "One read per dump"):

* **Moments where the data is made.** The embed stage feeds every layer's rows z = (x, f, log f, ‖x‖)
  (:func:`moment_rows`; f the token's in-corpus frequency) into :class:`LayerMoments`, one
  :class:`~tokenuni.numerics.MomentSums` per layer for the regular tokens and one for the special tokens,
  and saves them beside the dump (``<dump>.moments.npz``). Spectrum, IsoScore (Σ_D), word frequency,
  partition isotropy (its directions U) and the projection's PCA are blocks of these moments; the mean μ
  centres the cosine family.
* **One read for the rest.** :func:`collect_statistics` streams the dump once: each record batch is
  converted to float64 once per layer, special tokens are dropped once per token set, the moments are
  given to the metrics that need them *before* the read (:meth:`~tokenuni.metrics.base.Metric.prime`), so
  the work that needs U or μ -- Z(u) = Σ exp(uᵀv) for partition isotropy (Mu & Viswanath, ICLR 2018), the
  centred unit sums of the cosine family -- happens in the same read as everything else. Without the
  moments file (a dump from elsewhere) the moments are accumulated in the read and the metrics that need
  them first take a second read, which the statistics record (``reads``).
* **One seeded sample per seed.** Sampled metrics (clusters, LID, alignment/uniformity, IsoScore*) and the
  projection draw bottom-k samples of one hash of (sentence_id, position): for one (seed, token set) the
  sample of size m is the m smallest hashes of the largest one, so one reservoir of the largest size
  serves every metric (:meth:`~tokenuni.numerics.ReservoirSample.bottom`), the same tokens as each
  metric's own sample.
* **Rerun granularity.** The statistics depend only on the *pass options* of the enabled metrics
  (:func:`pass_plan`: every option but a metric's :attr:`~tokenuni.metrics.base.Metric.derived_options`)
  and the sample sizes; the statistics file holds the moments, the samples, each metric's own state
  (:meth:`~tokenuni.metrics.base.Metric.state_dict`: per-length sums of token uniformity, log Z of every
  direction of both partition-isotropy variants) and, for metrics without derived options, their rows.
  :func:`derive_metric` turns it into one metric's table: milliseconds for the exact metrics, k-means and
  kNN for the sampled ones. Changing e.g. ``token_uniformity.min_tokens``, ``spectrum.explained_variance_k``
  or ``clusters.k_max`` re-derives one table; changing a pass option (a seed, a sample size, the cosine
  family's variants) redoes the read.
* **Without a dump.** The same :class:`Suite` takes batches from the embed stage itself
  (:func:`tokenuni.embed.embed_corpus` with ``out_path=None``): the statistics are the same (same seeds),
  the moments come from the first forward pass, and metrics that need them first get a second forward pass.

The moments, the samples, the streaming and the file are :mod:`tokenuni.statistics`; this module adds the metrics'
accumulators (``state/<metric>/<layer>/*``, ``rows/<metric>.json``) and the derivations.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tokenuni.metrics.base import Metric, MetricError, TokenBatch, new_job_warnings
from tokenuni.statistics import (
    LayerMoments,
    StatisticsError,
    StatisticsPass,
    check_statistics_provenance,
    json_array,
    json_value,
    sample_for_layer,
    stream_dump,
)

log = logging.getLogger(__name__)

# -- the plan ------------------------------------------------------------------------------------------

def _metric_class(name: str) -> type[Metric]:
    from tokenuni.metrics import METRICS

    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def pass_options(name: str, options: dict) -> dict:
    """The options of metric ``name`` that shape the pass (all but its derived options and ``enabled``)."""
    derived = set(_metric_class(name).derived_options) | {"enabled"}
    return {key: value for key, value in sorted(options.items()) if key not in derived}


def pass_plan(metrics: dict[str, dict], projection: dict | None = None) -> dict:
    """What the pass computes, as JSON: the pass options of every enabled metric and the size of every shared
    sample (key "<seed>_<token set>"). Equal plans give equal statistics; it is the stats job's params."""
    from tokenuni.metrics import make_metric

    chosen = {name: options for name, options in metrics.items() if options.get("enabled", True)}
    samples: dict[str, int] = {}

    def need(seed, special, size):
        key = f"{int(seed)}_{'all' if special else 'regular'}"
        samples[key] = max(samples.get(key, 0), int(size))

    for name, options in chosen.items():
        metric = make_metric(name, options, "cpu")
        if "sample" in metric.shared:
            need(metric.seed, metric.special_tokens, metric.sample_size)
    if projection:
        need(projection.get("seed", 0), projection.get("special_tokens", False), projection.get("sample_size", 5000))
    return {"metrics": {name: pass_options(name, options) for name, options in chosen.items()},
            "samples": dict(sorted(samples.items()))}


# -- the pass ------------------------------------------------------------------------------------------

class Suite(StatisticsPass):
    """The accumulators of every enabled metric for every layer, with the shared moments and samples of
    :class:`~tokenuni.statistics.StatisticsPass`, fed batch by batch (from a dump or from the embed stage).

    ``moments``: a :class:`LayerMoments` known before the stream (from the embed stage), or None: then they are
    accumulated in the first read and :attr:`reads` is 2 when a metric needs them first.
    """

    def __init__(self, plan: dict, n_layers: int, metadata: dict | None = None, *, moments: LayerMoments | None = None,
                 device="cpu"):
        from tokenuni.metrics import make_metric

        super().__init__(plan, n_layers, metadata, moments=moments, device=device)
        self.metrics = {name: [make_metric(name, options, device).bind(layer, self.metadata)
                               for layer in range(self.n_layers)]
                        for name, options in plan["metrics"].items()}
        self.token_sets |= {metrics[0].token_set() for metrics in self.metrics.values()}
        if self.given_moments:
            self._prime()

    def _needs_moments_first(self) -> bool:
        return any(metrics[0].needs_moments_first() for metrics in self.metrics.values())

    def _prime(self) -> None:
        for metrics in self.metrics.values():
            for layer, metric in enumerate(metrics):
                if metric.needs_moments_first():
                    moments = self.moments.of(layer, metric.token_set())
                    if moments.count:
                        metric.prime(moments.select(range(moments.dim - 3)))

    def begin_read(self, index: int) -> None:
        self.read = index
        self.rows = 0
        if index == 1:
            self._prime()

    def _stream_layer(self, layer: int, x, index: dict, regular, stages: tuple[str, ...]) -> None:
        tokens = TokenBatch(x, index["sentence_id"], index["token_id"], index["special"].bool(), index["frequency"],
                            index["position"])
        by_set = {"all": tokens}
        if "regular" in self.token_sets:
            by_set["regular"] = tokens.select(regular)  # special tokens dropped once for every metric
        for metrics in self.metrics.values():
            metric = metrics[layer]
            batch = by_set[metric.token_set()]
            if len(batch):
                for stage in stages:
                    metric.stream(batch, stage)

    def statistics(self) -> dict:
        """The shared statistics, each metric's own state, and the final rows of metrics without derived options."""
        state = super().statistics()
        hidden_size = self.moments.hidden_size()
        for name, metrics in self.metrics.items():
            if type(metrics[0]).derived_options:
                for layer, metric in enumerate(metrics):
                    for field, value in metric.state_dict().items():
                        state[f"state/{name}/{layer}/{field}"] = np.asarray(value)
            else:  # nothing to re-derive: the rows are final
                rows = []
                for layer, metric in enumerate(metrics):
                    _attach(metric, state, self.moments, layer, hidden_size, self.device)
                    rows += [{"layer": layer, **value.__dict__} for value in metric.compute()]
                state[f"rows/{name}.json"] = json_array(rows)
        return state


def _attach(metric: Metric, state: dict, moments: LayerMoments, layer: int, hidden_size: int, device) -> None:
    """Give a metric the shared statistics it reads in compute()."""
    if "moments" in metric.shared:
        sums = moments.of(layer, metric.token_set())
        if sums.count:
            metric.use_moments(sums, hidden_size)
    if "sample" in metric.shared:
        key = f"{metric.seed}_{metric.token_set()}"
        metric.use_sample(sample_for_layer(state, key, layer, device))


def collect_statistics(dump_path, plan: dict, *, device="cpu", progress: bool = True, model: str = "",
                       corpus: str = "", expected: dict | None = None) -> dict:
    """The suite's statistics of a dump: one read with the dump's moments file, else two when a metric needs the
    moments first (see :func:`tokenuni.statistics.stream_dump`). ``expected``: what the dump must have been
    written for (:func:`tokenuni.sources.expected_provenance`), checked before the read; the statistics carry the
    dump's metadata, so that the jobs reading them check it in turn."""
    return stream_dump(dump_path, lambda n_layers, metadata, moments: Suite(plan, n_layers, metadata, moments=moments,
                                                                            device=device),
                       device=device, progress=progress, desc=f"metrics {model}/{corpus}", expected=expected)


# -- derivations ---------------------------------------------------------------------------------------

def derive_metric(statistics: dict, name: str, options: dict, *, model: str, corpus: str, device="cpu",
                  expected: dict | None = None, path="statistics") -> pd.DataFrame:
    """Metric ``name``'s tidy table (every layer) from the statistics, with ``options`` (its full options).

    ``expected``: what the statistics must have been computed for (:func:`tokenuni.sources.expected_provenance`),
    checked first against their metadata (:func:`tokenuni.statistics.check_statistics_provenance`); ``path``: the
    statistics file, for the message.
    """
    from tokenuni.metrics import TIDY_COLUMNS, make_metric, normalise_tidy

    check_statistics_provenance(path, statistics, expected)
    new_job_warnings()  # an option lowered for every layer (k_max, sample_size) is said once per job
    plan = json_value(statistics["plan.json"])
    expected = pass_options(name, options)
    if plan["metrics"].get(name) != expected:
        raise StatisticsError(
            f"metric {name}: the statistics were computed with pass options {plan['metrics'].get(name)}, the job "
            f"asks for {expected}; rerun the metrics pass (tokenuni stats) for {model}/{corpus}")
    metadata = json_value(statistics["metadata.json"])
    n_layers = int(statistics["n_layers"])
    step = metadata.get("training_step") or None
    rows = []
    if f"rows/{name}.json" in statistics:
        values = json_value(statistics[f"rows/{name}.json"])
    else:
        moments = LayerMoments.from_state_dict(statistics, n_layers, device)
        hidden_size = int(statistics["hidden_size"])
        values = []
        for layer in range(n_layers):
            metric = make_metric(name, options, device).bind(layer, metadata)
            prefix = f"state/{name}/{layer}/"
            metric.load_state_dict({key[len(prefix):]: statistics[key] for key in statistics if key.startswith(prefix)})
            _attach(metric, statistics, moments, layer, hidden_size, device)
            values += [{"layer": layer, **value.__dict__} for value in metric.compute()]
    for value in values:
        rows.append({"model": model, "training_step": step, "corpus": corpus, **value})
    return normalise_tidy(pd.DataFrame(rows, columns=TIDY_COLUMNS))


def metric_tables(dump_path, metrics: dict[str, dict], *, model: str, corpus: str, device="cpu",
                  progress: bool = False) -> dict[str, pd.DataFrame]:
    """Every metric of ``metrics`` (name -> options) on a dump from one read: {name: tidy table}."""
    statistics = collect_statistics(dump_path, pass_plan(metrics), device=device, progress=progress, model=model,
                                    corpus=corpus)
    return {name: derive_metric(statistics, name, options, model=model, corpus=corpus, device=device)
            for name, options in metrics.items() if options.get("enabled", True)}


__all__ = ["Suite", "StatisticsError", "collect_statistics", "derive_metric", "metric_tables", "pass_options",
           "pass_plan"]
