"""One-pass metrics against the seeds' way of computing them, and against the floor (reading the file once).

On one real MiniLM dump of WikiText-2 (every layer, special tokens dropped as the metrics do):

* ours: :func:`tokenuni.metrics.compute_metric` per metric, streaming the memory-mapped dump — cosine_family
  (avg cosine, S_intra), spectrum (centred), isoscore, partition_isotropy I(V) (uncentred);
* the seeds' way, per layer on the layer read whole into memory (reading not timed, in their favour):
  avg cosine as the mean of the pairwise cosine matrix (scikit-learn ``cosine_similarity``, blocked: every
  pair, so the result is equal; the Ethayarajh-style estimate from a ``--pair-sample`` token sample is shown
  too, with its error), the spectrum by scikit-learn ``PCA(svd_solver="full")``, IsoScore by the authors'
  ``isoscore`` package, I(V) by numpy ``eigh`` + scipy ``logsumexp`` (Mu & Viswanath), S_intra by a Python
  loop over word types (mean pairwise cosine of each type's instances);
* the floor: stream every record batch once and sum every layer column (each byte of the vectors read once).

Each figure is a median over ``--repeats`` interleaved rounds: speed-up = seeds' time ÷ ours (target ≥ 20),
floor ratio = ours ÷ read-once time (target ≤ 3). Results are checked equal (relative 1e-6) before timing
counts; the ``note`` column gives the largest deviation.

    python tests/benchmarks/metrics_speed.py --sentences 500 --repeats 3 [--device cuda] [--json-out x.json]
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, machine, minilm_dump, parser, print_table, resolve_device, write_json  # noqa: E402

TITLE = "metrics vs the seeds' references"
SPEEDUP_TARGET, FLOOR_TARGET, RTOL = 20.0, 3.0, 1e-6
OURS = {  # metric -> options (the variants the references compute)
    "cosine_family": {"variants": ["uncentred"]},
    "spectrum": {"variants": ["centred"]},
    "isoscore": {"bootstrap": 0},  # the package computes IsoScore only: no IsoScore* bootstrap on our side
    "partition_isotropy": {"variants": ["uncentred"]},
}


def read_once(dump_path) -> float:
    """The floor: every record batch streamed, every layer column summed (float32, read once)."""
    from tokenuni.store import open_dump, vectors

    dump = open_dump(dump_path)
    total = 0.0
    for batch in dump.batches():
        for name in batch.schema.names:
            if name.startswith("layer_"):
                total += float(vectors(batch.column(name)).sum(dtype=np.float32))
    return total


def layer_data(dump_path, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(X float64, token ids) of one layer's non-special tokens, read whole."""
    from tokenuni.store import layer_column, open_dump, vectors

    xs, ids, special = [], [], []
    for batch in open_dump(dump_path).batches():
        xs.append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        ids.append(batch.column("token_id").to_numpy())
        special.append(batch.column("special").to_numpy(zero_copy_only=False))
    keep = ~np.concatenate(special)
    return np.concatenate(xs)[keep], np.concatenate(ids)[keep]


# -- the seeds' ways -----------------------------------------------------------------------------------
def avg_cosine_all_pairs(x, block: int = 4096) -> float:
    """Mean cosine over ordered pairs of distinct tokens from the pairwise cosine matrix, in row blocks."""
    from sklearn.metrics.pairwise import cosine_similarity

    n, total = len(x), 0.0
    for start in range(0, n, block):
        total += float(cosine_similarity(x[start:start + block], x).sum())
    return (total - n) / (n * (n - 1))


def avg_cosine_sampled(x, size: int, seed: int = 0) -> float:
    """Ethayarajh (EMNLP 2019): mean pairwise cosine among a random sample of tokens."""
    from sklearn.metrics.pairwise import cosine_similarity

    rows = np.random.default_rng(seed).choice(len(x), size=min(size, len(x)), replace=False)
    cos = cosine_similarity(x[rows])
    m = len(rows)
    return float((cos.sum() - np.trace(cos)) / (m * (m - 1)))


def s_intra_loop(x, token_id) -> float:
    """Per word type, the mean pairwise cosine of its instances; averaged over types with ≥ 2 instances."""
    groups: dict[int, list[int]] = {}
    for row, token in enumerate(token_id.tolist()):
        groups.setdefault(token, []).append(row)
    values = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        v = x[rows]
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        cos = v @ v.T
        values.append((cos.sum() - np.trace(cos)) / (len(rows) * (len(rows) - 1)))
    return float(np.mean(values))


def pca_singular_values(x) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(svd_solver="full").fit(x).singular_values_


def isoscore_package(x) -> float:
    from IsoScore import IsoScore

    return float(IsoScore.IsoScore(x))


def partition_isotropy_numpy(x) -> float:
    from test_metric_partition_isotropy import brute_force  # the test suite's Mu & Viswanath reference

    return brute_force(x, "uncentred", "both")


REFERENCES = {  # row label -> (our metric, our row name, reference function, equal?)
    "avg_cosine (all pairs, sklearn)": ("cosine_family", "avg_cosine", lambda x, t, a: avg_cosine_all_pairs(x), True),
    "s_intra (per-type Python loop)": ("cosine_family", "s_intra", lambda x, t, a: s_intra_loop(x, t), True),
    "spectrum (sklearn PCA)": ("spectrum", "singular_value", lambda x, t, a: pca_singular_values(x), True),
    "isoscore (isoscore package)": ("isoscore", "isoscore", lambda x, t, a: isoscore_package(x), True),
    "I(V) (numpy eigh + logsumexp)": ("partition_isotropy", "partition_isotropy",
                                      lambda x, t, a: partition_isotropy_numpy(x), True),
    "avg_cosine (token sample, Ethayarajh)": ("cosine_family", "avg_cosine",
                                              lambda x, t, a: avg_cosine_sampled(x, a.pair_sample), False),
}


def our_value(table, row_name: str, layer: int):
    rows = table[(table.metric == row_name) & (table.layer == layer)]
    if row_name == "singular_value":
        return rows.sort_values("component").value.to_numpy()
    assert len(rows) == 1, (row_name, layer, len(rows))
    return float(rows.value.iloc[0])


def deviation(ours, reference) -> float:
    """Largest deviation relative to the reference's scale (the largest value for a spectrum)."""
    ours, reference = np.atleast_1d(ours), np.atleast_1d(reference)
    n = min(len(ours), len(reference))
    return float(np.max(np.abs(ours[:n] - reference[:n])) / max(np.max(np.abs(reference[:n])), 1e-300))


def main(argv=None) -> dict | None:
    p = parser(__doc__.split("\n")[0], sentences=500, repeats=3)
    p.add_argument("--pair-sample", type=int, default=1000, help="tokens in the sampled avg-cosine estimate")
    args = p.parse_args(argv)
    device = resolve_device(args.device, args.threads)
    if device is None:
        return None
    from tokenuni.metrics import compute_metric
    from tokenuni.store import open_dump

    dump_path = minilm_dump(args.workdir, args.sentences)
    n_layers = open_dump(dump_path).n_layers
    size = dump_path.stat().st_size
    read_once(dump_path)  # warm the page cache: every side reads from memory
    ours = {name: [] for name in OURS}
    refs = {label: [] for label in REFERENCES}
    floor, worst = [], {label: 0.0 for label in REFERENCES}
    for _ in range(args.repeats):
        started = time.perf_counter()
        read_once(dump_path)
        floor.append(time.perf_counter() - started)
        tables = {}
        for name, options in OURS.items():
            started = time.perf_counter()
            tables[name] = compute_metric(dump_path, name, options, model="minilm", corpus="wikitext", device=device,
                                          progress=False)
            ours[name].append(time.perf_counter() - started)
        spent = {label: 0.0 for label in REFERENCES}
        for layer in range(n_layers):
            x, token_id = layer_data(dump_path, layer)
            for label, (metric, row_name, function, _) in REFERENCES.items():
                started = time.perf_counter()
                reference = function(x, token_id, args)
                spent[label] += time.perf_counter() - started
                worst[label] = max(worst[label], deviation(our_value(tables[metric], row_name, layer), reference))
        for label in REFERENCES:
            refs[label].append(spent[label])

    floor_median = statistics.median(floor)
    rows = [Row("floor: read the dump once", floor, "s", note=f"{size / floor_median / 1e9:.2f} GB/s")]
    for name in OURS:
        t = statistics.median(ours[name])
        rows.append(Row(f"ours: {name}", ours[name], "s", ratio=t / floor_median, target=FLOOR_TARGET,
                        higher_is_better=False, note=f"÷ floor; {size / t / 1e9:.2f} GB/s"))
    for label, (metric, _, _, equal) in REFERENCES.items():
        speedup = statistics.median(refs[label]) / statistics.median(ours[metric])
        ok = worst[label] <= RTOL
        note = f"max rel. deviation {worst[label]:.1e}" + ("" if ok or not equal else " (NOT EQUAL)")
        if not equal:
            note += " (a sample: not equal, not a target)"
        rows.append(Row(f"seeds: {label}", refs[label], "s", ratio=speedup,
                        target=SPEEDUP_TARGET if equal else None, note=f"÷ ours {metric}; {note}"))
    total_ref = sum(statistics.median(refs[label]) for label, spec in REFERENCES.items() if spec[3])
    total_ours = sum(statistics.median(v) for v in ours.values())
    rows.append(Row("all five: seeds' total ÷ ours total", [total_ref / total_ours], "x", ratio=total_ref / total_ours,
                    target=SPEEDUP_TARGET))
    rows.append(Row("all four jobs ÷ floor", [total_ours / floor_median], "x", ratio=total_ours / floor_median))
    dump = open_dump(dump_path)
    context = {"device": device, "sentences": args.sentences, "tokens": dump.num_rows, "layers": n_layers,
               "dump_bytes": size, "repeats": args.repeats, **machine()}
    print_table(TITLE, rows, context)
    return write_json(args.json_out, TITLE, rows, context)


if __name__ == "__main__":
    main()
