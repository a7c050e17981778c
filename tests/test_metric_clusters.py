"""The `clusters` metric (Cai et al., ICLR 2021) against scikit-learn and brute force on a real MiniLM
dump, and on analytic cases (Gaussian blobs, one isotropic Gaussian, duplicated points, one sentence)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from metric_helpers import feed, token_batch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from threadpoolctl import threadpool_limits

from tokenuni.metrics import compute_metric
from tokenuni.metrics.clusters import Clusters, silhouette_scores
from tokenuni.numerics import kmeans, token_hash
from tokenuni.store import layer_column, open_dump, vectors

RTOL = 1e-6
OPTIONS = {"sample_size": 500, "k_max": 5, "n_init": 3, "repeats": 2}


def layer_sample(dump_path, layer, size, seed):
    """The bottom-`size` tokens by seeded hash, recomputed from the whole layer (non-special tokens)."""
    dump = open_dump(dump_path)
    xs, ids, pos, tok, special = [], [], [], [], []
    for batch in dump.batches():
        xs.append(vectors(batch.column(layer_column(layer))).astype(np.float64))
        ids.append(batch.column("sentence_id").to_numpy())
        pos.append(batch.column("position").to_numpy())
        tok.append(batch.column("token_id").to_numpy())
        special.append(batch.column("special").to_numpy(zero_copy_only=False))
    x, ids, pos, tok, special = (np.concatenate(a) for a in (xs, ids, pos, tok, special))
    keep = ~special
    x, ids, pos, tok = x[keep], ids[keep].astype(np.int64), pos[keep].astype(np.int64), tok[keep]
    keys = token_hash(seed, torch.from_numpy(ids), torch.from_numpy(pos)).numpy()
    chosen = np.argsort(keys, kind="stable")[:size]
    chosen = chosen[np.argsort(ids[chosen] * 1_000_003 + pos[chosen])]
    return x[chosen], tok[chosen]


def brute_force_cosines(x, labels, tokens):
    """Mean over clusters of avg pairwise cosine, S_intra and S_inter (brute force, cluster by cluster)."""
    avg, intra, inter = [], [], []
    for c in np.unique(labels):
        members = labels == c
        y, t = x[members], tokens[members]
        norms = np.linalg.norm(y, axis=1)
        y, t = y[norms > 0] / norms[norms > 0, None], t[norms > 0]
        if len(y) < 2:
            continue
        cos = y @ y.T
        off = ~np.eye(len(y), dtype=bool)
        avg.append(cos[off].mean())
        types = np.unique(t)
        if len(types) >= 2:  # mean over ordered pairs of distinct types of m_t . m_u (m_t: mean unit vector)
            m = np.stack([y[t == u].mean(axis=0) for u in types])
            dots = m @ m.T
            inter.append(dots[~np.eye(len(types), dtype=bool)].mean())
        per_type = [cos[np.ix_(t == u, t == u)][~np.eye((t == u).sum(), dtype=bool)].mean()
                    for u in np.unique(t) if (t == u).sum() >= 2]
        if per_type:
            intra.append(np.mean(per_type))
    return {"avg_cosine": np.mean(avg), "s_intra": np.mean(intra) if intra else None,
            "s_inter": np.mean(inter) if inter else None}


def values(table, metric, layer, variant=""):
    rows = table[(table.metric == metric) & (table.layer == layer) & (table.variant == variant)]
    return rows.sort_values("component")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small matrices: one thread is fastest, and 2 threads on a busy 2-core machine are ~50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def table(minilm_dump, one_torch_thread):
    return compute_metric(minilm_dump, Clusters, OPTIONS, model="minilm", corpus="stsb-test", progress=False)


def test_rows_are_complete_and_record_the_sample(table):
    assert set(table.layer) == set(range(7))
    assert set(table.metric) <= set(Clusters.produces)
    for layer in range(7):
        assert values(table, "silhouette", layer).component.tolist() == [2, 3, 4, 5]
        assert len(values(table, "mms_k", layer)) == 1
        for variant in ("raw", "cluster_centred"):
            assert len(values(table, "within_cluster_avg_cosine", layer, variant)) == 1
    assert (table.sample_size == 500).all() and (table.seed == 0).all()
    assert table.value.notna().all()
    analysed = table[table.metric != "clusters_k_max"]
    assert analysed.spread.notna().all()  # repeats = 2: every row of the analysis has a spread
    assert (table[table.metric == "clusters_k_max"].value == 5).all()  # k_max used: the sample allows it
    assert (table[table.metric == "mms_k"].n == 500).all()


def test_silhouette_inertia_and_within_cluster_cosines_match_references(table, minilm_dump):
    for layer in (0, 3, 6):
        x, tokens = layer_sample(minilm_dump, layer, 500, 0)
        assert len(x) == 500
        silhouettes = values(table, "silhouette", layer)
        inertias = values(table, "kmeans_inertia", layer)
        best = (None, -np.inf)
        for k in range(2, 6):
            labels, _, inertia = kmeans(torch.from_numpy(x), k, n_init=3, seed=0, key=(0,))
            labels = labels.numpy()
            reference = silhouette_score(x, labels)
            ours = float(silhouettes[silhouettes.component == k].value.iloc[0])
            assert ours == pytest.approx(reference, rel=RTOL)
            assert float(inertias[inertias.component == k].value.iloc[0]) == pytest.approx(inertia, rel=1e-12)
            if reference > best[1]:
                best = (k, reference, labels)
        chosen_k = best[0] if best[1] >= 0.1 else 1
        assert float(values(table, "mms_k", layer).value.iloc[0]) == chosen_k
        assert float(values(table, "mms_silhouette", layer).value.iloc[0]) == pytest.approx(best[1], rel=RTOL)
        labels = best[2] if chosen_k > 1 else np.zeros(len(x), dtype=np.int64)
        centred = x.copy()
        for c in np.unique(labels):
            centred[labels == c] -= x[labels == c].mean(axis=0)
        for variant, data in (("raw", x), ("cluster_centred", centred)):
            reference = brute_force_cosines(data, labels, tokens)
            for quantity in ("avg_cosine", "s_intra", "s_inter"):
                row = values(table, f"within_cluster_{quantity}", layer, variant)
                assert float(row.value.iloc[0]) == pytest.approx(reference[quantity], rel=RTOL, abs=1e-12)


def test_kmeans_is_as_good_as_sklearn_on_real_tokens(minilm_dump):
    with threadpool_limits(1):  # scikit-learn's OpenMP threads crawl on a busy 2-core machine
        for layer in (3, 6):
            x, _ = layer_sample(minilm_dump, layer, 500, 0)
            for k in (2, 3, 4):
                labels, centers, inertia = kmeans(torch.from_numpy(x), k, n_init=10, seed=0)
                # a Lloyd fixed point: scikit-learn started from our centres stays there
                fixed = KMeans(k, init=centers.numpy(), n_init=1).fit(x)
                assert adjusted_rand_score(fixed.labels_, labels.numpy()) == 1.0
                assert inertia == pytest.approx(fixed.inertia_, rel=1e-9)
                # as good an optimum as scikit-learn's with as many restarts (local optima differ by < 1 %)
                assert inertia <= KMeans(k, n_init=10, random_state=0).fit(x).inertia_ * 1.01


def test_cluster_centring_reduces_the_mean_cosine(table):
    # centring at the cluster means removes the common direction: cosines fall toward 0 (Cai et al. §4)
    for layer in range(7):
        raw = float(values(table, "within_cluster_avg_cosine", layer, "raw").value.iloc[0])
        centred = float(values(table, "within_cluster_avg_cosine", layer, "cluster_centred").value.iloc[0])
        assert abs(centred) < raw


# -- direct checks of the building blocks -------------------------------------------------------------
def test_silhouette_equals_sklearn_in_chunks_with_singletons_and_duplicates():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 7))
    x[10:20] = x[10]  # duplicated points
    labels = rng.integers(0, 4, 300)
    labels[5] = 9  # a singleton cluster (silhouette 0 for it)
    reference = silhouette_score(x, labels)
    for chunk in (1 << 23, 1000, 7):
        assert silhouette_scores(torch.from_numpy(x), [torch.from_numpy(labels)], chunk)[0] == pytest.approx(reference, rel=1e-8)
    assert silhouette_scores(torch.from_numpy(x), [torch.zeros(300, dtype=torch.int64)]) == [None]


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    rng = np.random.default_rng(1)
    means = rng.standard_normal((3, 10)) * 20
    truth = np.repeat(np.arange(3), [50, 80, 120])
    x = means[truth] + rng.standard_normal((250, 10))
    labels, centers, inertia = kmeans(torch.from_numpy(x), 3, seed=4)
    assert adjusted_rand_score(truth, labels.numpy()) == 1.0  # equal up to permutation
    assert inertia == pytest.approx(KMeans(3, n_init=5, random_state=0).fit(x).inertia_, rel=1e-9)
    again, _, _ = kmeans(torch.from_numpy(x), 3, seed=4)
    assert torch.equal(labels, again)


def run(x, sentence_ids=None, chunks=1, **options):
    """Feed x in `chunks` batches (positions: the index within the sentence, whatever the batching)."""
    sentence_ids = np.repeat(np.arange(len(x) // 10 + 1), 10)[:len(x)] if sentence_ids is None else sentence_ids
    starts = {s: i for i, s in reversed(list(enumerate(sentence_ids)))}
    positions = np.arange(len(x)) - np.array([starts[s] for s in sentence_ids], dtype=np.int64)
    metric = Clusters(**{"k_max": 5, "n_init": 2, "repeats": 2, **options})
    rows = feed(metric, x, chunks, sentence_ids=sentence_ids, positions=positions, token_ids=positions % 7,
                frequency=np.ones(len(x), np.int64))
    return {(v.metric, v.variant, v.component): v for v in rows}


def test_three_blobs_give_three_clusters():
    rng = np.random.default_rng(2)
    means = rng.standard_normal((3, 16)) * 10
    x = means[rng.integers(0, 3, 400)] + rng.standard_normal((400, 16))
    rows = run(x)
    assert rows[("mms_k", "", None)].value == 3
    assert rows[("mms_silhouette", "", None)].value > 0.7
    assert rows[("silhouette", "", 3)].value == rows[("mms_silhouette", "", None)].value
    assert rows[("mms_k", "", None)].spread == 0.0
    # within the clusters the centred vectors point anywhere: mean cosine ~ 0
    assert abs(rows[("within_cluster_avg_cosine", "cluster_centred", None)].value) < 0.02


def test_isotropic_gaussian_is_one_cluster():
    x = np.random.default_rng(3).standard_normal((400, 16))
    rows = run(x)
    assert rows[("mms_k", "", None)].value == 1
    assert rows[("mms_silhouette", "", None)].value < 0.1
    # one cluster: the within-cluster cosines are the global ones on the sample
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    expected = (np.linalg.norm(unit.sum(0)) ** 2 - n) / (n * (n - 1))
    assert rows[("within_cluster_avg_cosine", "raw", None)].value == pytest.approx(expected, rel=1e-9)


def test_duplicated_points_do_not_crash():
    base = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    x = np.repeat(base, 20, axis=0)  # 3 distinct points, 20 copies each
    rows = run(x)
    assert rows[("mms_k", "", None)].value == 3
    assert rows[("mms_silhouette", "", None)].value == pytest.approx(1.0)
    assert rows[("within_cluster_avg_cosine", "raw", None)].value == pytest.approx(1.0)
    assert ("within_cluster_avg_cosine", "cluster_centred", None) not in rows  # all centred vectors are 0
    same = run(np.ones((30, 4)))  # one point repeated: no silhouette at all, one cluster
    assert same[("mms_k", "", None)].value == 1
    assert not any(key[0] == "silhouette" for key in same)


def test_one_sentence_and_tiny_inputs():
    x = np.random.default_rng(4).standard_normal((6, 8))
    rows = run(x, sentence_ids=np.zeros(6, dtype=np.int64))
    assert sorted(key[2] for key in rows if key[0] == "silhouette") == [2, 3, 4, 5]
    assert rows[("mms_k", "", None)].n == 6
    assert set(run(x[:3], sentence_ids=np.zeros(3, dtype=np.int64))) >= {("mms_k", "", None), ("silhouette", "", 2)}
    assert run(x[:1], sentence_ids=np.zeros(1, dtype=np.int64)) == {}
    two = run(x[:2], sentence_ids=np.zeros(2, dtype=np.int64))  # k_max lowered to 1, below k_min: no k-means at all
    assert two[("clusters_k_max", "", None)].value == 1 and two[("mms_k", "", None)].value == 1
    assert not any(key[0] in ("silhouette", "kmeans_inertia") for key in two)


def test_batching_invariance_and_bounded_memory():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((600, 12))
    x[:200] += 4.0
    whole = run(x, chunks=1, sample_size=150)
    split = run(x, chunks=13, sample_size=150)
    assert whole.keys() == split.keys()
    for key in whole:
        assert split[key] == whole[key]  # the same sample, hence exactly the same rows

    metric = Clusters(sample_size=100)
    sizes = []
    for i in range(40):
        metric.update(token_batch(rng.standard_normal((50, 12)), np.full(50, i), positions=np.arange(50),
                                  token_ids=np.arange(50) % 7, frequency=np.ones(50, np.int64)))
        sizes.append(metric.memory_bytes())
    assert max(sizes[10:]) <= max(sizes[:10]) * 1.01  # the reservoir holds at most 2 x sample_size rows


def test_silhouette_subset_and_seed_are_recorded():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 6))
    x[:150] += 5
    rows = run(x, silhouette_sample_size=120, seed=7, sample_size=250)
    assert rows[("silhouette", "", 2)].n == 120
    assert rows[("mms_k", "", None)].n == 250
    assert all(v.seed == 7 and v.sample_size == 250 for v in rows.values())
    assert rows[("mms_k", "", None)].value == 2


def test_options_are_validated():
    with pytest.raises(ValueError):
        Clusters(k_min=1)
    with pytest.raises(ValueError):
        Clusters(k_min=5, k_max=3)
    with pytest.raises(ValueError):
        Clusters(repeats=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_gpu_agrees_with_cpu(minilm_dump):
    cpu = compute_metric(minilm_dump, Clusters, OPTIONS, model="m", corpus="c", device="cpu", progress=False)
    gpu = compute_metric(minilm_dump, Clusters, OPTIONS, model="m", corpus="c", device="cuda", progress=False)
    assert (cpu.metric.tolist(), cpu.component.tolist()) == (gpu.metric.tolist(), gpu.component.tolist())
    np.testing.assert_allclose(gpu.value.to_numpy(), cpu.value.to_numpy(), rtol=1e-6, atol=1e-9)
