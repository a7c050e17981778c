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

File: one ``.npz`` (no pickles) with ``plan.json``, ``metadata.json``, ``reads``, ``moments/<set>/<layer>/*``,
``sample/<seed>_<set>/*`` (vectors as float32: dump values are float32, bfloat16 or float16, exact in
float32), ``state/<metric>/<layer>/*`` and ``rows/<metric>.json``.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path
from tokenuni.metrics.base import Metric, MetricValue, TokenBatch
from tokenuni.numerics import MomentSums, ReservoirSample, token_hash

log = logging.getLogger(__name__)

TOKEN_SETS = ("regular", "special")
#: pass options of the projection (the rest are derivation options)
PROJECTION_PASS_OPTIONS = ("sample_size", "seed", "special_tokens")


class StatisticsError(TokenuniError, ValueError):
    """Statistics that do not match what a derivation expects (stale file, other plan): rerun the pass."""


# -- moments -----------------------------------------------------------------------------------------

def moment_rows(x, frequency):
    """z = (x, f, log f, ‖x‖) per token (float64): every second moment a metric or the projection uses is a
    block of z's moments (f = in-corpus frequency, log f with f clamped at 1)."""
    import torch

    f = frequency.to(torch.float64)[:, None]
    return torch.cat([x, f, f.clamp_min(1.0).log(), torch.linalg.vector_norm(x, dim=1, keepdim=True)], dim=1)


class LayerMoments:
    """Per layer, the moments of z (:func:`moment_rows`) of the regular and of the special tokens."""

    def __init__(self, n_layers: int, device="cpu"):
        self.n_layers = int(n_layers)
        self.device = device
        self.sums = {group: [MomentSums(device) for _ in range(self.n_layers)] for group in TOKEN_SETS}

    def update(self, layer: int, x, frequency, special) -> None:
        """Add one batch of a layer: ``x`` (n, d) float64, ``frequency`` (n,), ``special`` (n,) bool tensors."""
        z = moment_rows(x, frequency)
        regular = ~special
        if bool(regular.all()):
            self.sums["regular"][layer].update(z)
            return
        self.sums["regular"][layer].update(z[regular])
        if bool(special.any()):
            self.sums["special"][layer].update(z[special])

    def of(self, layer: int, token_set: str) -> MomentSums:
        """The moments of z over the regular tokens, or over all tokens (regular merged with special)."""
        regular = self.sums["regular"][layer]
        if token_set == "regular":
            return regular
        merged = MomentSums.from_state_dict(regular.state_dict(), regular.device) if regular.count else MomentSums()
        return merged.merge(self.sums["special"][layer])

    def hidden_size(self) -> int:
        dim = self.sums["regular"][0].dim
        return 0 if dim is None else dim - 3

    def state_dict(self) -> dict:
        return {f"moments/{group}/{layer}/{key}": value
                for group, layers in self.sums.items() for layer, sums in enumerate(layers) if sums.count
                for key, value in sums.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state, n_layers: int, device="cpu") -> "LayerMoments":
        moments = cls(n_layers, device)
        for group in TOKEN_SETS:
            for layer in range(n_layers):
                prefix = f"moments/{group}/{layer}/"
                if prefix + "count" in state:
                    moments.sums[group][layer] = MomentSums.from_state_dict(
                        {k: state[prefix + k] for k in ("count", "shift", "mean", "scatter")}, device)
        return moments

    def save(self, path, metadata: dict | None = None) -> None:
        """Write ``<dump>.moments.npz`` (atomically), with the dump's row count to check it against."""
        arrays = {**self.state_dict(), "n_layers": np.asarray(self.n_layers),
                  "metadata.json": _json_array(metadata or {})}
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path, device="cpu") -> tuple["LayerMoments", dict]:
        state = _load_npz(path)
        return cls.from_state_dict(state, int(state["n_layers"]), device), _json_value(state["metadata.json"])


def moments_path(dump_path) -> Path:
    """Where the embed stage saves a dump's moments: ``<dump>.moments.npz`` beside it."""
    dump_path = Path(dump_path)
    return dump_path.with_name(dump_path.name + ".moments.npz")


# -- the plan ------------------------------------------------------------------------------------------

def _metric_class(name: str) -> type[Metric]:
    from tokenuni.metrics import METRICS

    if name not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
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

class _SharedSample:
    """A streamed bottom-k sample of one (seed, token set), with each sampled token's vector in every layer."""

    def __init__(self, size: int, seed: int, n_layers: int):
        self.size, self.seed, self.n_layers = int(size), int(seed), int(n_layers)
        self.keys = None
        self.columns: dict = {}
        self.vectors: list = []
        self.seen = 0

    def offer(self, rows: dict, layers: list) -> None:
        """``rows``: index tensors of the batch's tokens of this set (incl. ``row``, ``token``), ``layers``: their
        (n, d) float64 vectors per layer."""
        import torch

        keys = token_hash(self.seed, rows["sentence_id"], rows["position"])
        self.seen += len(keys)
        if self.keys is not None and len(self.keys) >= self.size:  # only tokens that can still enter
            threshold = torch.kthvalue(self.keys, self.size).values
            keep = keys < threshold
            if not bool(keep.any()):
                return
            keys = keys[keep]
            rows = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()]) for k, v in rows.items()}
            layers = [x[keep] for x in layers]
        layers = [x.to(torch.float32) for x in layers]  # exact: dump values are float32 / bfloat16 / float16
        if self.keys is None:
            self.keys, self.columns, self.vectors = keys, dict(rows), layers
        else:
            self.keys = torch.cat([self.keys, keys])
            self.columns = {k: (torch.cat([v, rows[k]]) if isinstance(v, torch.Tensor) else np.concatenate([v, rows[k]]))
                            for k, v in self.columns.items()}
            self.vectors = [torch.cat([a, b]) for a, b in zip(self.vectors, layers)]
        if len(self.keys) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        import torch

        if self.keys is None or len(self.keys) <= self.size:
            return
        keep = torch.topk(self.keys, self.size, largest=False).indices
        self.keys = self.keys[keep]
        self.columns = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()])
                        for k, v in self.columns.items()}
        self.vectors = [x[keep] for x in self.vectors]

    def state_dict(self, prefix: str) -> dict:
        import torch

        self._shrink()
        state = {f"{prefix}/size": np.asarray(self.size), f"{prefix}/seed": np.asarray(self.seed),
                 f"{prefix}/seen": np.asarray(self.seen)}
        if self.keys is None:
            return state
        order = torch.argsort(self.columns["sentence_id"] * 1_000_003 + self.columns["position"]).cpu()
        state[f"{prefix}/keys"] = self.keys.cpu()[order].numpy()
        for name, values in self.columns.items():
            values = values.cpu()[order].numpy() if isinstance(values, torch.Tensor) else values[order.numpy()]
            state[f"{prefix}/{name}"] = values
        for layer, x in enumerate(self.vectors):
            state[f"{prefix}/x/{layer}"] = x.cpu()[order].numpy()
        return state


def sample_for_layer(state, key: str, layer: int, device="cpu") -> ReservoirSample:
    """The shared sample of ``key`` at ``layer`` as a :class:`ReservoirSample` (the columns a SampledMetric reads)."""
    import torch

    prefix = f"sample/{key}"
    sample = ReservoirSample(int(state[f"{prefix}/size"]), int(state[f"{prefix}/seed"]))
    sample.seen = int(state[f"{prefix}/seen"])
    if f"{prefix}/keys" not in state:
        return sample

    def tensor(name, dtype):
        return torch.as_tensor(np.asarray(state[f"{prefix}/{name}"]), dtype=dtype, device=device)

    sample.keys = tensor("keys", torch.int64)
    sample.columns = {"sentence_id": tensor("sentence_id", torch.int64), "position": tensor("position", torch.int64),
                      "x": tensor(f"x/{layer}", torch.float64), "token_id": tensor("token_id", torch.int64),
                      "frequency": tensor("frequency", torch.int64)}
    return sample


class Suite:
    """The accumulators of every enabled metric for every layer, fed batch by batch (from a dump or the model).

    ``moments``: a :class:`LayerMoments` known before the stream (from the embed stage), or None: then they are
    accumulated in the first read and :attr:`reads` is 2 when a metric needs them first.
    """

    def __init__(self, plan: dict, n_layers: int, metadata: dict | None = None, *, moments: LayerMoments | None = None,
                 device="cpu"):
        from tokenuni.metrics import make_metric

        self.plan, self.n_layers, self.device = plan, int(n_layers), device
        self.metadata = dict(metadata or {})
        self.given_moments = moments is not None
        self.moments = moments if moments is not None else LayerMoments(n_layers, device)
        self.metrics = {name: [make_metric(name, options, device).bind(layer, self.metadata)
                               for layer in range(self.n_layers)]
                        for name, options in plan["metrics"].items()}
        self.samples = {key: _SharedSample(size, int(key.split("_")[0]), self.n_layers)
                        for key, size in plan["samples"].items()}
        first = [m[0] for m in self.metrics.values()]
        self.token_sets = sorted({m.token_set() for m in first} | {k.split("_")[1] for k in self.samples})
        needs_first = any(m.needs_moments_first() for m in first)
        self.reads = 2 if needs_first and not self.given_moments else 1
        self.read = 0
        self.rows = 0
        if self.given_moments:
            self._prime()

    def _prime(self) -> None:
        for metrics in self.metrics.values():
            for layer, metric in enumerate(metrics):
                if metric.needs_moments_first():
                    moments = self.moments.of(layer, metric.token_set())
                    if moments.count:
                        metric.prime(moments.select(range(moments.dim - 3)))

    def begin_read(self, index: int) -> None:
        """Before read ``index`` (0-based) of :attr:`reads`."""
        self.read = index
        self.rows = 0
        if index == 1:
            self._prime()

    def _stages(self) -> tuple[str, ...]:
        if self.given_moments:
            return ("data", "moments")
        return ("data",) if self.read == 0 else ("moments",)

    def update(self, index: dict, layers: list) -> None:
        """One batch: ``index`` the token index as tensors on the device (``sentence_id``, ``position``,
        ``token_id``, ``special``, ``frequency``; ``token`` as a numpy array of strings), ``layers`` the (n, d)
        float64 tensors of every layer."""
        import torch

        n = int(index["sentence_id"].shape[0])
        special = index["special"].to(torch.bool)
        selections = {"all": None, "regular": ~special}
        rows = torch.arange(self.rows, self.rows + n, device=special.device)
        self.rows += n
        stages = self._stages()
        update_moments = not self.given_moments and self.read == 0
        sample_rows = {}
        if self.read == 0:
            for key in self.samples:
                keep = selections[key.split("_")[1]]
                picked = {name: index[name] for name in ("sentence_id", "position", "token_id", "frequency")}
                picked.update(special=special, row=rows, token=np.asarray(index["token"]))
                if keep is not None:
                    mask = keep.cpu().numpy()
                    picked = {k: (v[keep] if isinstance(v, torch.Tensor) else v[mask]) for k, v in picked.items()}
                sample_rows[key] = (picked, keep)
        for layer, x in enumerate(layers):
            _check_finite(x, self.metadata, layer, index["sentence_id"])
            tokens = TokenBatch(x, index["sentence_id"], index["token_id"], special, index["frequency"],
                                index["position"])
            by_set = {"all": tokens}
            if "regular" in self.token_sets:
                by_set["regular"] = tokens.select(selections["regular"])
            if update_moments:
                self.moments.update(layer, x, index["frequency"], special)
            for metrics in self.metrics.values():
                metric = metrics[layer]
                batch = by_set[metric.token_set()]
                if len(batch):
                    for stage in stages:
                        metric.stream(batch, stage)
        if sample_rows:
            for key, (picked, keep) in sample_rows.items():
                self.samples[key].offer(picked, [x if keep is None else x[keep] for x in layers])

    def statistics(self) -> dict:
        """Everything the derivations need, as numpy arrays (see the module docstring for the layout)."""
        hidden_size = self.moments.hidden_size()
        state = {"plan.json": _json_array(self.plan), "metadata.json": _json_array(self.metadata),
                 "reads": np.asarray(self.reads), "n_layers": np.asarray(self.n_layers),
                 "hidden_size": np.asarray(hidden_size), **self.moments.state_dict()}
        for key, sample in self.samples.items():
            state.update(sample.state_dict(f"sample/{key}"))
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
                state[f"rows/{name}.json"] = _json_array(rows)
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


def _check_finite(x, metadata: dict, layer: int, sentence_id) -> None:
    import torch

    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise TokenuniError(
            f"metrics: model {metadata.get('model_id') or '?'}, layer {layer} holds NaN or Inf vectors "
            f"({int(bad.sum())} token(s), first in sentence_id {int(sentence_id[bad][0])}); the dump is damaged or the "
            "model overflowed: delete the dump and rerun the embed step (in float32 if it was float16)")


def index_tensors(batch, device) -> dict:
    """The token index of an Arrow record batch as tensors on ``device`` (tokens as a numpy array of strings)."""
    import torch

    def column(name, dtype):
        return torch.from_numpy(np.array(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)).to(device)

    return {"sentence_id": column("sentence_id", np.int64), "position": column("position", np.int64),
            "token_id": column("token_id", np.int64), "special": column("special", np.bool_),
            "frequency": column("frequency", np.int64),
            "token": np.asarray(batch.column("token").to_numpy(zero_copy_only=False), dtype=str)}


def collect_statistics(dump_path, plan: dict, *, device="cpu", progress: bool = True, model: str = "",
                       corpus: str = "") -> dict:
    """Stream a dump once (twice without its moments file, when a metric needs the moments first) and return the
    statistics of :class:`Suite`. The moments file must describe this dump (same rows), else it is ignored with a
    warning and the moments are accumulated in the read."""
    from tqdm.auto import tqdm

    from tokenuni.store import layer_column, open_dump, vector_tensor

    dump = open_dump(dump_path)
    metadata = dump.metadata
    moments = None
    sidecar = moments_path(dump_path)
    if sidecar.exists():
        moments, moments_meta = LayerMoments.load(sidecar, device)
        rows = int(metadata.get("tokens") or dump.num_rows)
        if moments.n_layers != dump.n_layers or int(moments_meta.get("rows", -1)) != rows:
            log.warning("%s does not describe %s (%s layers / %s rows, dump %d / %d): accumulating the moments in the "
                        "read", sidecar, dump_path, moments.n_layers, moments_meta.get("rows"), dump.n_layers, rows)
            moments = None
    suite = Suite(plan, dump.n_layers, metadata, moments=moments, device=device)
    for read in range(suite.reads):
        suite.begin_read(read)
        desc = f"metrics {model}/{corpus}" + (f" read {read + 1}/{suite.reads}" if suite.reads > 1 else "")
        for batch in tqdm(dump.batches(), total=dump.reader.num_record_batches, desc=desc, unit="batch",
                          disable=not progress):
            index = index_tensors(batch, device)
            layers = [vector_tensor(batch.column(layer_column(layer)), device) for layer in range(dump.n_layers)]
            suite.update(index, layers)
    return suite.statistics()


# -- derivations ---------------------------------------------------------------------------------------

def derive_metric(statistics: dict, name: str, options: dict, *, model: str, corpus: str, device="cpu") -> pd.DataFrame:
    """Metric ``name``'s tidy table (every layer) from the statistics, with ``options`` (its full options)."""
    from tokenuni.metrics import TIDY_COLUMNS, make_metric, normalise_tidy

    plan = _json_value(statistics["plan.json"])
    expected = pass_options(name, options)
    if plan["metrics"].get(name) != expected:
        raise StatisticsError(
            f"metric {name}: the statistics were computed with pass options {plan['metrics'].get(name)}, the job "
            f"asks for {expected}; rerun the metrics pass (tokenuni stats) for {model}/{corpus}")
    metadata = _json_value(statistics["metadata.json"])
    n_layers = int(statistics["n_layers"])
    step = metadata.get("training_step") or None
    rows = []
    if f"rows/{name}.json" in statistics:
        values = _json_value(statistics[f"rows/{name}.json"])
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


# -- files ---------------------------------------------------------------------------------------------

def _json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value, default=_json_default).encode(), dtype=np.uint8)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _json_value(array) -> object:
    return json.loads(bytes(np.asarray(array, dtype=np.uint8)).decode())


def _save_npz(path, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _load_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise StatisticsError(f"{path} is not a readable statistics file ({error}); delete it and rerun its job") from None


def save_statistics(statistics: dict, path) -> None:
    """Write the statistics (atomically) as one uncompressed ``.npz``."""
    _save_npz(path, statistics)


def load_statistics(path) -> dict:
    """Read a statistics file (numpy arrays by name)."""
    state = _load_npz(path)
    if "plan.json" not in state:
        raise StatisticsError(f"{path} is not a tokenuni statistics file (no plan); rerun its metrics pass")
    return state


def statistics_size(statistics: dict) -> int:
    """Bytes of the arrays (what the file holds, headers aside)."""
    return int(sum(np.asarray(v).nbytes for v in statistics.values()))


__all__ = ["LayerMoments", "Suite", "StatisticsError", "collect_statistics", "derive_metric", "load_statistics",
           "metric_tables", "moment_rows", "moments_path", "pass_plan", "pass_options", "save_statistics",
           "sample_for_layer", "index_tensors"]
