"""The contract every registered metric (tokenuni.metrics.METRICS) keeps, on a small seeded synthetic dump.

Parametrised over the registry, so a newly registered metric is covered without touching this file:

* batching invariance: the same tokens in one record batch or in batches of uneven sizes (sentences split across
  batches, a batch holding only a [CLS]) give the same rows, through both entry points a job uses: the metric's own
  streaming run (:func:`tokenuni.metrics.compute_metric`, ``tokenuni metric --dump`` and the API) and the one-pass
  suite (:func:`tokenuni.metrics.suite.collect_statistics` + :func:`~tokenuni.metrics.suite.derive_metric`, the
  workflow's stats and metric jobs), which agree with each other;
* bad input: a NaN or Inf vector in the dump stops both entry points with a :class:`~tokenuni.errors.TokenuniError`
  naming the model, the layer and the sentence;
* well-formed rows: a finite value, a non-negative count, string names the metric declares, a component exactly
  for its vector rows, one row per (metric, variant, component) and layer;
* declared rows: every row is declared once in the metric's ``rows`` (the row catalogue, tokenuni/metrics/rows.py)
  with a human label and an isotropic end, and every view of the catalogue names declared scalar rows;
* device agreement: CPU and CUDA rows agree (skipped without a CUDA device).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from tokenuni.errors import TokenuniError
from tokenuni.figures.style import metric_label
from tokenuni.metrics import METRICS, MetricError, MetricValue, compute_metric, make_metric
from tokenuni.metrics.base import SampledMetric
from tokenuni.metrics.rows import VIEWS, catalogue, view
from tokenuni.metrics.suite import collect_statistics, derive_metric, pass_plan
from tokenuni.store import INDEX_FIELDS, DumpWriter, dump_schema

torch.set_num_threads(1)

MODEL_ID = "synthetic/contract"
N_LAYERS, DIM = 2, 24
#: record-batch sizes of the uneven dump: a batch holding only the first [CLS] (empty once special tokens are
#: dropped), sentences split across batches, one long batch; the rest of the tokens form the last batch
UNEVEN = [1, 6, 53, 2, 111]

#: small options so every metric runs in well under a second on ~280 tokens; the sample sizes are below the number
#: of regular tokens, so the seeded reservoir really samples. A metric not listed runs with its defaults.
SMALL = {
    "clusters": {"sample_size": 200, "k_max": 4, "n_init": 2, "repeats": 2},
    "lid": {"sample_size": 200, "k": 10, "bootstrap": 10},
    "alignment_uniformity": {"sample_size": 200, "bootstrap": 10},
    "isoscore": {"sample_size": 150, "bootstrap": 5},
    "token_uniformity": {"min_tokens": 3},
    "sentence_spectrum": {"max_rank": 8},
}
#: every registered metric (id = its name), and the sampled variant of the cosine family (Cai's one-per-type draw)
CASES = [pytest.param(name, SMALL.get(name, {}), id=name) for name in sorted(METRICS)]
CASES.append(pytest.param("cosine_family", {"type_sampling": "one_per_type", "repeats": 3},
                          id="cosine_family-one_per_type"))

#: rows the code may emit as NaN (none: every metric drops a row it cannot compute rather than emitting NaN)
MAY_BE_NAN: set[str] = set()

KEY = ["layer", "metric", "variant", "component"]


# -- the synthetic corpus ------------------------------------------------------------------------------


def synthetic_tokens() -> dict:
    """~280 tokens of 20 sentences ([CLS] ... [SEP]; two sentences with one regular token, one with none), token ids
    drawn Zipf-like from 30 types (repeats for S_intra, frequencies for word_frequency), vectors = type direction +
    frequency direction + anisotropic noise + a common mean; layer 1 a non-linear map of layer 0."""
    rng = np.random.default_rng(20240607)
    lengths = np.concatenate([[3, 2, 3], rng.integers(5, 27, 17)])
    rng.shuffle(lengths)
    n = int(lengths.sum())
    sentence_id = np.repeat(np.arange(len(lengths)), lengths)
    position = np.concatenate([np.arange(k) for k in lengths]).astype(np.int32)
    last = np.cumsum(lengths) - 1
    special = (position == 0) | np.isin(np.arange(n), last)
    types = 30
    zipf = 1.0 / np.arange(1, types + 1)
    token_id = 1000 + rng.choice(types, size=n, p=zipf / zipf.sum())
    token_id[position == 0] = 101
    token_id[last] = 102
    _, inverse, counts = np.unique(token_id, return_inverse=True, return_counts=True)
    frequency = counts[inverse].astype(np.int64)

    rotation, _ = np.linalg.qr(rng.normal(size=(DIM, DIM)))
    noise = (rng.normal(size=(n, DIM)) * np.geomspace(2.0, 0.05, DIM)) @ rotation
    type_vectors = {t: 1.5 * rng.normal(size=DIM) for t in np.unique(token_id)}
    x0 = np.stack([type_vectors[t] for t in token_id]) + noise + 2.0 * rng.normal(size=DIM)
    x0 += 0.4 * np.log(frequency)[:, None] * rng.normal(size=DIM)
    x1 = 3.0 * np.tanh(x0 @ rng.normal(size=(DIM, DIM)) / np.sqrt(DIM)) + 0.5
    index = {"sentence_id": sentence_id, "position": position, "token_id": token_id.astype(np.int32),
             "token": [f"t{t}" for t in token_id], "special": special, "frequency": frequency}
    return {"index": index, "layers": [x0.astype(np.float32), x1.astype(np.float32)], "n": n,
            "sentences": len(lengths)}


def metadata_of(data: dict) -> dict:
    """The dump metadata the metrics read: the model id (messages), layer norms (layernorm_scale), decoder flag."""
    norms = [{"layer": layer, "module": module, "size": DIM, "gamma_norm": gamma, "beta_norm": beta}
             for layer, module, gamma, beta in [(0, "embeddings.LayerNorm", 4.2, 0.7),
                                                (1, "attention.LayerNorm", 5.1, 0.3),
                                                (1, "output.LayerNorm", 3.3, 1.1)]]
    return {"model_id": MODEL_ID, "tokens": str(data["n"]), "sentences": str(data["sentences"]),
            "is_decoder": "false", "layernorm": json.dumps(norms)}


def batch_bounds(n: int, sizes: list[int]) -> list[tuple[int, int]]:
    cuts = np.cumsum([0, *sizes])
    assert cuts[-1] < n
    return [(int(a), int(b)) for a, b in zip(cuts, [*cuts[1:], n])]


def part(index: dict, start: int, stop: int) -> dict:
    return {name: values[start:stop] for name, values in index.items()}


def write_clean_dump(path, data: dict, sizes: list[int]):
    """The tokens through the project's writer, one record batch per write."""
    with DumpWriter(path, n_layers=N_LAYERS, hidden_size=DIM, metadata=metadata_of(data)) as writer:
        for start, stop in batch_bounds(data["n"], sizes):
            writer.write(part(data["index"], start, stop), [x[start:stop] for x in data["layers"]])
    return path


def write_foreign_dump(path, data: dict, sizes: list[int]):
    """The same layout written with pyarrow directly, as another tool would (DumpWriter itself refuses NaN/Inf)."""
    schema = dump_schema(N_LAYERS, DIM, "float32", metadata_of(data))
    with pa.ipc.new_file(str(path), schema) as writer:
        for start, stop in batch_bounds(data["n"], sizes):
            index = part(data["index"], start, stop)
            columns = [pa.array(index[f.name], type=f.type) for f in INDEX_FIELDS]
            columns += [pa.FixedSizeListArray.from_arrays(pa.array(x[start:stop].reshape(-1)), DIM)
                        for x in data["layers"]]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    return path


@pytest.fixture(scope="module")
def data() -> dict:
    return synthetic_tokens()


@pytest.fixture(scope="module")
def dumps(data, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("contract")
    return {"whole": write_clean_dump(folder / "whole.arrow", data, []),
            "uneven": write_clean_dump(folder / "uneven.arrow", data, UNEVEN)}


# -- helpers -------------------------------------------------------------------------------------------


def own_run(dump, name, options, device="cpu") -> pd.DataFrame:
    return compute_metric(dump, name, options, model="m", corpus="c", device=device, progress=False)


def suite_run(dump, name, options, device="cpu") -> pd.DataFrame:
    statistics = collect_statistics(dump, pass_plan({name: options}), device=device, progress=False)
    return derive_metric(statistics, name, options, model="m", corpus="c", device=device)


def assert_same_rows(expected: pd.DataFrame, got: pd.DataFrame, rtol: float, atol: float = 0.0) -> None:
    """Same (layer, metric, variant, component) keys, n, sample sizes and seeds; values and spreads equal to ``rtol``
    relative (``atol`` absolute for values that are zero up to rounding)."""
    assert len(expected), "no rows to compare"
    expected, got = (table.assign(component=table["component"].fillna(-1)) for table in (expected, got))
    merged = expected.merge(got, on=KEY, how="outer", suffixes=("", "_got"), indicator=True)
    unmatched = merged[merged["_merge"] != "both"]
    assert unmatched.empty, f"rows in one table only:\n{unmatched[KEY + ['_merge']]}"
    assert (merged["n"] == merged["n_got"]).all(), merged.loc[merged["n"] != merged["n_got"], KEY + ["n", "n_got"]]
    for column in ("sample_size", "seed"):
        assert merged[column].equals(merged[f"{column}_got"].rename(column)), merged[KEY + [column, f"{column}_got"]]
    for column in ("value", "spread"):
        a, b = merged[column].to_numpy(float), merged[f"{column}_got"].to_numpy(float)
        assert np.array_equal(np.isnan(a), np.isnan(b)), merged[KEY + [column, f"{column}_got"]]
        close = np.isnan(a) | (np.abs(a - b) <= rtol * np.maximum(np.abs(a), np.abs(b)) + atol)
        assert close.all(), merged.loc[~close, KEY + [column, f"{column}_got"]].assign(
            relative=np.abs(a - b)[~close] / np.abs(a)[~close])


# -- 1. batching invariance ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", CASES)
def test_batching_does_not_change_the_rows(dumps, name, options):
    """Exact metrics keep sufficient statistics merged batch by batch: equal up to the order of the sums (1e-9
    relative; ~1e-14 seen). Sentences split across batches are carried over by the per-sentence metrics
    (token_uniformity, sentence_spectrum, oversmoothing). Sampled metrics draw a bottom-k sample keyed by a seeded
    hash of (sentence_id, position) (tokenuni.numerics.ReservoirSample), so the same tokens whatever the batch
    boundaries, returned in (sentence_id, position) order: those computed on the sample alone give equal rows bit for
    bit; IsoScore (its exact row and IsoScore*'s shrinkage target) and the cosine family also read merged sums, so
    they are equal to rounding. (A TokenBatch without positions numbers its tokens within the batch,
    TokenBatch.positions, which would make a sample depend on the batching; every dump and the suite carry them.)"""
    cls = METRICS[name]
    sample_only = issubclass(cls, SampledMetric) and "moments" not in cls.shared
    rtol, atol = (0.0, 0.0) if sample_only else (1e-9, 1e-12)
    whole = own_run(dumps["whole"], name, options)
    assert_same_rows(whole, own_run(dumps["uneven"], name, options), rtol, atol)
    suite = suite_run(dumps["uneven"], name, options)
    assert_same_rows(whole, suite, rtol, atol)
    assert_same_rows(suite, suite_run(dumps["whole"], name, options), rtol, atol)


# -- 2. bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["regular", "cls"])
@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("name, options", CASES)
def test_non_finite_vectors_stop_both_entry_points(data, dumps, tmp_path, name, options, bad, token):
    """One token of layer 1 (a regular token in the third record batch, or a later sentence's [CLS]) holds NaN or Inf.

    Both entry points must stop with the model, layer and sentence named. The one exception is by design: a metric
    that drops special tokens (token set "regular") never reads a [CLS] vector, so its own run gives the clean rows;
    a metric that reads no vector at all (``passes`` = 0, layernorm_scale) gives its rows from the metadata."""
    index = data["index"]
    start = sum(UNEVEN[:2]) + 5
    wanted = (index["position"] == 0) if token == "cls" else ~index["special"]
    row = start + int(np.argmax(wanted[start:]))
    sentence = int(index["sentence_id"][row])
    layers = [x.copy() for x in data["layers"]]
    layers[1][row, 3] = bad
    damaged = write_foreign_dump(tmp_path / "damaged.arrow", {**data, "layers": layers}, UNEVEN)
    problem = rf"model {MODEL_ID}, layer 1 holds NaN or Inf vectors \(1 token\(s\), first in sentence_id {sentence}\)"

    # the workflow's stats job: the suite checks every token of every layer, whatever metrics the plan holds
    with pytest.raises(TokenuniError, match=rf"^metrics: {problem}; the dump is damaged"):
        suite_run(damaged, name, options)

    metric = make_metric(name, options, "cpu")
    if metric.passes == 0 or (token == "cls" and metric.token_set() == "regular"):
        assert_same_rows(own_run(dumps["uneven"], name, options), own_run(damaged, name, options), rtol=0.0)
        return
    with pytest.raises(MetricError, match=rf"^metric {name}: {problem}; the dump is damaged"):
        own_run(damaged, name, options)


# -- 3. well-formed rows -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", CASES)
def test_rows_are_well_formed(dumps, monkeypatch, name, options):
    """The rows as the metric returns them (before the tidy table coerces types), on every layer."""
    cls = METRICS[name]
    returned: list[tuple[int, list]] = []
    compute = cls.compute

    def spy(self):
        rows = compute(self)
        returned.append((self.layer, rows))
        return rows

    monkeypatch.setattr(cls, "compute", spy)
    table = own_run(dumps["uneven"], name, options)
    assert sorted(layer for layer, _ in returned) == list(range(N_LAYERS))
    assert len(table) == sum(len(rows) for _, rows in returned)
    emitted = set()
    for layer, rows in returned:
        assert isinstance(rows, list) and rows, f"{name}: no rows for layer {layer}"
        keys = set()
        for row in rows:
            where = f"{name} layer {layer} row {row}"
            assert isinstance(row, MetricValue), where
            assert isinstance(row.metric, str) and row.metric in cls.produces, where
            assert isinstance(row.variant, str), where
            assert isinstance(row.value, (float, int)) and not isinstance(row.value, bool), where
            assert math.isfinite(row.value) or (row.metric in MAY_BE_NAN and math.isnan(row.value)), where
            assert isinstance(row.n, (int, np.integer)) and not isinstance(row.n, bool) and row.n >= 0, where
            if row.metric in cls.vector_rows:
                assert isinstance(row.component, (int, np.integer)) and row.component >= 0, where
            else:
                assert row.component is None, where
            assert row.spread is None or (isinstance(row.spread, float) and math.isfinite(row.spread)
                                          and row.spread >= 0), where
            assert row.sample_size is None or (isinstance(row.sample_size, int) and row.sample_size > 0), where
            assert row.seed is None or isinstance(row.seed, int), where
            key = (row.metric, row.variant, row.component)
            assert key not in keys, f"{where}: duplicate key {key}"
            keys.add(key)
            emitted.add(row.metric)
    # the synthetic dump exercises every row the metric declares (else the checks above would miss some)
    missing = set(cls.produces) - emitted
    assert not missing, f"{name}: rows never emitted on the synthetic dump (extend it): {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_declared_rows(name):
    """Every row the metric produces is declared once in its ``rows`` (:class:`tokenuni.metrics.rows.Row`) with a
    human label (axis labels, legends, the report), an isotropic end that is "high", "low" or None, and a
    headline variant; the figures read the label from that declaration (:func:`tokenuni.figures.style.metric_label`)."""
    cls = METRICS[name]
    assert cls.rows and cls.produces == tuple(r.name for r in cls.rows)
    assert set(cls.vector_rows) == {r.name for r in cls.rows if r.component}
    declared = catalogue()
    for declared_row in cls.rows:
        assert declared[declared_row.name] is declared_row, f"{name}: row {declared_row.name} declared twice"
        assert declared_row.label.strip() and declared_row.label != declared_row.name, \
            f"{name}: row {declared_row.name} has no human label"
        assert metric_label(declared_row.name) == declared_row.label
        assert declared_row.isotropic in ("high", "low", None)
        assert not (declared_row.component and declared_row.diagnostic)


def test_every_view_shows_declared_scalar_rows():
    """The catalogue's views (panel figures, the measure table, run-level headlines, findings) name only rows a
    registered metric declares, scalar ones, each once; a view that promises a peak says which end is isotropic."""
    declared = catalogue()
    for view_name, names in VIEWS.items():
        assert len(set(names)) == len(names), f"view {view_name} names a row twice"
        for row_name in names:
            assert row_name in declared, f"view {view_name}: no metric declares {row_name!r}"
            assert not declared[row_name].component, f"view {view_name}: {row_name} is a per-component row"
    assert all(r.peak_means for r in view("findings_extremes"))
    assert len({r.column for r in view("measure_table")}) == len(VIEWS["measure_table"])


# -- 4. device agreement -------------------------------------------------------------------------------


@pytest.mark.parametrize("name, options", CASES)
def test_cpu_and_cuda_agree(dumps, name, options):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    cpu = own_run(dumps["uneven"], name, options)
    assert_same_rows(cpu, own_run(dumps["uneven"], name, options, device="cuda"), rtol=1e-6, atol=1e-9)
    assert_same_rows(cpu, suite_run(dumps["uneven"], name, options, device="cuda"), rtol=1e-6, atol=1e-9)
