"""Post-hoc transforms (tokenuni/transforms/) against independent numpy / scikit-learn references,
on random data and on real all-MiniLM-L6-v2 vectors (last layer: tokens, and mean-pooled sentences)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tokenuni.numerics import skewness
from tokenuni.transforms import TRANSFORMS, Transform, TransformError, load_transform, make_transform
from tokenuni.transforms.all_but_the_top import AllButTheTop, default_removed
from tokenuni.transforms.cluster_removal import ClusterRemoval
from tokenuni.transforms.softdecay import SoftDecay
from tokenuni.transforms.whitening import Whitening

torch.set_num_threads(1)

#: small options so every transform fits quickly on the random data (cluster_removal: the sample is a
#: strict subset of the 600 vectors, so the seeded reservoir is exercised)
SMALL = {"identity": {}, "center_shift": {}, "whitening": {}, "all_but_the_top": {}, "softdecay": {},
         "cluster_removal": {"clusters": 4, "pcs": 2, "sample_size": 400, "seed": 3}}


@pytest.fixture(scope="module")
def random_vectors() -> np.ndarray:
    """600 anisotropic vectors in 24 dimensions with a large common mean (distinct variances)."""
    rng = np.random.default_rng(7)
    n, d = 600, 24
    scales = np.geomspace(5.0, 0.05, d)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return (rng.normal(size=(n, d)) * scales) @ rotation + 3.0 * rng.normal(size=d)


@pytest.fixture(scope="module")
def minilm_vectors(minilm_dump) -> dict[str, np.ndarray]:
    """The last layer of the real MiniLM dump: every token, and the per-sentence mean (all tokens, as sentence-transformers)."""
    from tokenuni.store import open_dump, vectors

    dump = open_dump(minilm_dump)
    column = f"layer_{dump.n_layers - 1}"
    sentence, tokens = [], []
    for batch in dump.batches(["sentence_id", column]):
        sentence.append(batch.column("sentence_id").to_numpy())
        tokens.append(np.asarray(vectors(batch.column(column)), dtype=np.float64))
    sentence, tokens = np.concatenate(sentence), np.concatenate(tokens)
    ids = np.unique(sentence)
    sentences = np.stack([tokens[sentence == i].mean(axis=0) for i in ids])
    return {"tokens": tokens, "sentences": sentences}


def avg_cosine(x: np.ndarray) -> float:
    """Brute-force mean cosine over ordered pairs i != j of the non-zero rows."""
    x = x[np.linalg.norm(x, axis=1) > 1e-12]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosines = unit @ unit.T
    n = len(unit)
    return float((cosines.sum() - np.trace(cosines)) / (n * (n - 1)))


# -- registry, params, errors ------------------------------------------------------------------------


def test_registry_and_params():
    assert set(TRANSFORMS) == {"identity", "center_shift", "whitening", "all_but_the_top", "softdecay", "cluster_removal"}
    for name, cls in TRANSFORMS.items():
        transform = make_transform(name, SMALL[name])
        assert isinstance(transform, cls) and transform.name == name
        assert json.loads(json.dumps(transform.params())) == transform.params()
    assert make_transform("softdecay", {}).params() == {"alpha": -0.6, "clamp_negative": True}
    assert make_transform("cluster_removal", {}).params()["clusters"] == 27
    assert make_transform("cluster_removal", {}).params()["pcs"] == 12
    with pytest.raises(TransformError, match="unknown transform 'pca'"):
        make_transform("pca", {})
    with pytest.raises(TransformError, match="whitening: bad params"):
        make_transform("whitening", {"n_components": 3})
    with pytest.raises(TransformError, match="softdecay: option alpha"):
        make_transform("softdecay", {"alpha": 0.2})
    with pytest.raises(TransformError, match="whitening: option k"):
        make_transform("whitening", {"k": 0})
    with pytest.raises(TransformError, match="all_but_the_top: option d_removed"):
        make_transform("all_but_the_top", {"d_removed": -1})
    with pytest.raises(TransformError, match="cluster_removal: option pcs"):
        make_transform("cluster_removal", {"pcs": 1.5})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_clear_errors(name, random_vectors):
    transform = make_transform(name, SMALL[name])
    with pytest.raises(TransformError, match=f"transform {name} is not fitted"):
        transform.transform(random_vectors)
    with pytest.raises(TransformError, match=f"transform {name}: finalize\\(\\) without data"):
        transform.finalize()
    transform.partial_fit(random_vectors[:300])
    with pytest.raises(TransformError, match="dimension 23, earlier batches had 24"):
        transform.partial_fit(random_vectors[:10, :23])
    with pytest.raises(TransformError, match="call finalize"):
        transform.transform(random_vectors)
    transform.finalize()
    with pytest.raises(TransformError, match=f"transform {name} was fit on vectors of dimension 24, got vectors of dimension 20"):
        transform.transform(random_vectors[:, :20])
    with pytest.raises(TransformError, match=r"\(n, d\) matrix"):
        transform.transform(random_vectors[0])
    bad = random_vectors[:5].copy()
    bad[2, 3] = np.nan
    with pytest.raises(TransformError, match="NaN or Inf"):
        transform.transform(bad)
    transform.partial_fit(random_vectors[300:])  # more data: the map is stale until finalize()
    with pytest.raises(TransformError, match="call finalize"):
        transform.transform(random_vectors)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_container_types(name, random_vectors):
    transform = make_transform(name, SMALL[name]).fit(random_vectors.astype(np.float32))
    out_numpy = transform.transform(random_vectors[:50])
    out_torch = transform.transform(torch.from_numpy(random_vectors[:50]).float())
    assert isinstance(out_numpy, np.ndarray) and out_numpy.dtype == np.float64
    assert isinstance(out_torch, torch.Tensor) and out_torch.dtype == torch.float64
    np.testing.assert_allclose(out_torch.numpy(), out_numpy, rtol=0, atol=1e-5)
    assert transform.transform(random_vectors[:0]).shape[0] == 0
    summary = transform.summary()
    assert summary["n_fit"] == 600 and json.loads(json.dumps(summary)) == summary


# -- streaming, persistence, fit set -------------------------------------------------------------------


@pytest.mark.parametrize("data", ["random", "tokens"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_partial_fit_in_13_chunks_equals_fit(name, data, random_vectors, minilm_vectors):
    x = random_vectors if data == "random" else minilm_vectors["tokens"]
    whole = make_transform(name, SMALL[name]).fit(x)
    chunked = make_transform(name, SMALL[name])
    for chunk in np.array_split(x, 13):
        chunked.partial_fit(torch.from_numpy(chunk))
    chunked.finalize()
    np.testing.assert_allclose(chunked.transform(x), whole.transform(x), rtol=0, atol=1e-10)
    assert chunked.n_fit == whole.n_fit == len(x)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_load_round_trip(name, random_vectors, tmp_path):
    transform = make_transform(name, SMALL[name]).fit(random_vectors)
    transform.fitted_on = "pool:random"
    path = transform.save(tmp_path / f"{name}.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.npz"]  # no temporary file left behind
    loaded = load_transform(path)
    assert type(loaded) is type(transform)
    assert loaded.params() == transform.params() and loaded.fitted_on == "pool:random"
    assert loaded.n_fit == transform.n_fit and loaded.dim == transform.dim
    np.testing.assert_array_equal(loaded.transform(random_vectors), transform.transform(random_vectors))
    assert loaded.summary() == transform.summary()
    assert type(transform).load(path).params() == transform.params()
    assert type(Transform.load(path)) is type(transform)  # the base class reads any transform as its own class
    other = AllButTheTop if name != "all_but_the_top" else Whitening
    with pytest.raises(TransformError, match=f"holds a '{name}' transform"):
        other.load(path)
    with pytest.raises(TransformError, match="loaded from a file"):
        loaded.partial_fit(random_vectors)
    loaded.fit(random_vectors[:300])  # a new fit is fine
    assert loaded.n_fit == 300


def test_load_errors(tmp_path):
    with pytest.raises(TransformError, match="missing.npz"):
        load_transform(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(TransformError, match="other.npz is not a saved transform"):
        load_transform(tmp_path / "other.npz")
    with pytest.raises(TransformError, match="not fitted"):
        make_transform("whitening").save(tmp_path / "w.npz")


def test_fit_on_one_set_apply_to_another(random_vectors):
    """Fitting on a separate corpus is the same API: fit on one half, transform the other."""
    fit_set, other = random_vectors[:300], random_vectors[300:]
    for name in SMALL:
        transform = make_transform(name, SMALL[name]).fit(fit_set)
        transform.fitted_on = "corpus:first-half"
        assert transform.transform(other).shape[0] == 300
    whitening = make_transform("whitening").fit(fit_set)
    np.testing.assert_allclose(np.cov(whitening.transform(fit_set).T), np.eye(24), atol=1e-8)
    assert np.abs(np.cov(whitening.transform(other).T) - np.eye(24)).max() > 1e-3


# -- identity and center shift -------------------------------------------------------------------------


def test_identity_and_center_shift(random_vectors, minilm_vectors):
    for x in (random_vectors, minilm_vectors["sentences"]):
        np.testing.assert_array_equal(make_transform("identity").fit_transform(x), x)
        centred = make_transform("center_shift").fit_transform(x)
        np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(centred, x - x.mean(axis=0), rtol=0, atol=1e-12)


# -- whitening -----------------------------------------------------------------------------------------


def su_whitening(x: np.ndarray, k: int | None = None):
    """Su et al.'s compute_kernel_bias: np.cov, SVD of the covariance, W = U diag(1/sqrt(s))."""
    mu = x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(np.cov(x.T))
    kernel = u @ np.diag(1 / np.sqrt(s))
    return (x - mu) @ kernel[:, :k]


def assert_equal_up_to_column_signs(actual, expected, atol):
    signs = np.sign((actual * expected).sum(axis=0))
    np.testing.assert_allclose(actual * signs, expected, rtol=0, atol=atol)


def test_whitening_random(random_vectors):
    x = random_vectors
    out = make_transform("whitening").fit_transform(x)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(out.T), np.eye(24), rtol=0, atol=1e-8)
    assert_equal_up_to_column_signs(out, su_whitening(x), atol=1e-8)
    population = make_transform("whitening", {"ddof": 0}).fit_transform(x)
    np.testing.assert_allclose(np.cov(population.T, bias=True), np.eye(24), rtol=0, atol=1e-8)
    reduced = make_transform("whitening", {"k": 5}).fit_transform(x)
    assert reduced.shape == (600, 5)
    np.testing.assert_allclose(reduced, out[:, :5], rtol=0, atol=1e-10)


def test_whitening_real(minilm_vectors):
    sentences = minilm_vectors["sentences"]  # 60 sentences in 384 dimensions: rank 59 once centred
    transform = make_transform("whitening", {"k": 50})
    out = transform.fit_transform(sentences)
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(out.T), np.eye(50), rtol=0, atol=1e-8)
    assert_equal_up_to_column_signs(out, su_whitening(sentences, 50), atol=1e-6)
    full = make_transform("whitening").fit(sentences)  # no k: the 384 - 59 degenerate directions become zero columns
    assert full.summary()["n_zeroed"] == 384 - 59
    out = full.transform(sentences)
    assert np.isfinite(out).all() and np.abs(out[:, 59:]).max() == 0
    np.testing.assert_allclose(np.cov(out[:, :59].T), np.eye(59), rtol=0, atol=1e-8)
    tokens = minilm_vectors["tokens"]
    transform = make_transform("whitening").fit(tokens)
    out = transform.transform(tokens)
    kept = out.shape[1] - transform.summary()["n_zeroed"]
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.cov(out[:, :kept].T), np.eye(kept), rtol=0, atol=1e-8)


# -- all-but-the-top -----------------------------------------------------------------------------------


def test_all_but_the_top(random_vectors, minilm_vectors):
    from sklearn.decomposition import PCA

    assert default_removed(24) == 1 and default_removed(384) == 4 and default_removed(768) == 8
    for x, removed in ((random_vectors, 3), (random_vectors, None), (minilm_vectors["sentences"], None),
                       (minilm_vectors["tokens"], 7)):
        transform = make_transform("all_but_the_top", {"d_removed": removed})
        out = transform.fit_transform(x)
        d_removed = transform.summary()["d_removed"]
        assert d_removed == (removed or default_removed(x.shape[1]))
        components = PCA(n_components=d_removed, svd_solver="full").fit(x).components_
        np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-10)
        np.testing.assert_allclose(out @ components.T, 0.0, atol=1e-9)
        centred = x - x.mean(axis=0)
        np.testing.assert_allclose(out, centred - centred @ components.T @ components, rtol=0, atol=1e-9)
    with pytest.raises(TransformError, match="d_removed = 24 must be below the dimension 24"):
        make_transform("all_but_the_top", {"d_removed": 24}).fit(random_vectors)


# -- SoftDecay -----------------------------------------------------------------------------------------


def reference_softdecay_values(s: np.ndarray, alpha: float) -> np.ndarray:
    f = -np.log(1 - alpha * (s + alpha)) / alpha
    f = np.maximum(f, 0.0)
    return f * s.max() / f.max()


@pytest.mark.parametrize("which", ["random", "sentences", "tokens"])
def test_softdecay(which, random_vectors, minilm_vectors):
    x = random_vectors if which == "random" else minilm_vectors[which]
    transform = SoftDecay(alpha=-0.6)
    out = transform.fit_transform(x)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    expected = reference_softdecay_values(s, -0.6)
    s_out = np.linalg.svd(out, compute_uv=False)
    scale = s.max()
    np.testing.assert_allclose(s_out, expected, rtol=0, atol=1e-8)
    # exactly U diag(f(s)) V^T on the fit set (the paper's reconstruction); rank-deficient directions map to 0
    rank = int((s > len(s) * np.finfo(float).eps * scale * 10).sum())
    np.testing.assert_allclose(out, (u[:, :rank] * expected[:rank]) @ vt[:rank], rtol=0, atol=1e-8)
    decayed = transform.decayed_singular_values.numpy()
    original = transform.singular_values.numpy()
    assert np.all(np.diff(decayed) <= 1e-12)  # same order as s (descending): f is increasing
    assert decayed[0] == pytest.approx(original[0], rel=1e-12)  # the largest singular value is kept
    assert s_out.max() == pytest.approx(s.max(), rel=1e-10)
    summary = transform.summary()
    assert summary["skewness_after"] < summary["skewness_before"]
    assert skewness(s_out / s_out.max()) < skewness(s / s.max())
    assert summary["skewness_before"] == pytest.approx(skewness(s / s.max()), abs=1e-8)


def test_softdecay_domain_and_clamping(random_vectors):
    x = random_vectors / 60.0  # singular values 6.9 down to 0.02, many below -alpha = 0.6: f(s) < 0
    s = np.linalg.svd(x, compute_uv=False)
    assert (s < 0.6).any() and s.max() > 0.6
    clamped = SoftDecay(alpha=-0.6).fit(x)
    assert clamped.summary()["n_clamped"] == int((s < 0.6).sum())
    np.testing.assert_allclose(np.linalg.svd(clamped.transform(x), compute_uv=False), reference_softdecay_values(s, -0.6),
                               rtol=0, atol=1e-10)
    kept = SoftDecay(alpha=-0.6, clamp_negative=False).fit(x)  # the paper's code: negative f(s), a sign flip
    f = -np.log(1 - (-0.6) * (s - 0.6)) / -0.6
    expected = np.sort(np.abs(f * s.max() / f.max()))[::-1]
    np.testing.assert_allclose(np.linalg.svd(kept.transform(x), compute_uv=False), expected, rtol=0, atol=1e-10)
    with pytest.raises(TransformError, match="undefined"):
        SoftDecay(alpha=-1.5, clamp_negative=False).fit(x)  # 1 - alpha (s + alpha) <= 0 for small s
    assert SoftDecay(alpha=-1.5).fit(x).summary()["n_clamped"] > 0
    with pytest.raises(TransformError, match="not above -alpha"):
        SoftDecay(alpha=-0.6).fit(random_vectors / 1e4)


# -- cluster-based removal -----------------------------------------------------------------------------


def reference_cluster_removal(x: np.ndarray, labels: np.ndarray, pcs: int) -> np.ndarray:
    """Rajaee & Pilehvar with given labels: per cluster, centre and remove sklearn PCA's top components."""
    from sklearn.decomposition import PCA

    out = np.zeros_like(x)
    for c in np.unique(labels):
        members = x[labels == c]
        centred = members - members.mean(axis=0)
        m = min(pcs, (len(members) - 1) // 2)
        if np.ptp(members, axis=0).max() == 0:  # identical members: global shift, nothing removed
            centred, m = members - x.mean(axis=0), 0
        if m == 0:
            out[labels == c] = centred
            continue
        components = PCA(n_components=m, svd_solver="full").fit(members).components_
        out[labels == c] = centred - centred @ components.T @ components
    return out


def test_cluster_removal_real(minilm_vectors):
    tokens = minilm_vectors["tokens"]  # about 860 tokens, all in the sample
    transform = ClusterRemoval(clusters=6, pcs=5, seed=0)
    out = transform.fit_transform(tokens)
    labels = transform.assign(tokens)
    assert np.array_equal(labels, transform.sample_labels.numpy())  # the whole fit set is the sample, in order
    for c in range(6):
        basis = transform.components[c, :int(transform.n_removed[c])].numpy()
        np.testing.assert_allclose(out[labels == c] @ basis.T, 0.0, atol=1e-9)
        np.testing.assert_allclose(out[labels == c].mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(out, reference_cluster_removal(tokens, labels, 5), rtol=0, atol=1e-9)
    again = ClusterRemoval(clusters=6, pcs=5, seed=0).fit_transform(tokens)
    np.testing.assert_array_equal(again, out)
    other = ClusterRemoval(clusters=6, pcs=5, seed=1).fit_transform(tokens)
    assert np.abs(other - out).max() > 1e-3


def test_cluster_removal_seeded_sample(random_vectors):
    params = SMALL["cluster_removal"]
    first = make_transform("cluster_removal", params).fit(random_vectors)
    second = make_transform("cluster_removal", params).fit(random_vectors)
    np.testing.assert_array_equal(first.transform(random_vectors), second.transform(random_vectors))
    assert first.summary()["sample_n"] == 400
    other = make_transform("cluster_removal", {**params, "seed": 4}).fit(random_vectors)
    assert np.abs(other.transform(random_vectors) - first.transform(random_vectors)).max() > 1e-3


def test_cluster_removal_never_maps_duplicates_to_zero():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(40, 5)), np.tile([[30.0, 0, 0, 0, 0]], (3, 1))])  # 3 duplicated vectors
    out = ClusterRemoval(clusters=2, pcs=2, seed=0).fit_transform(x)
    assert (np.linalg.norm(out, axis=1) > 0).all()
    np.testing.assert_allclose(out[-3:], x[-3:] - x.mean(axis=0), atol=1e-10)


def test_cluster_removal_small_clusters():
    """Small clusters remove at most half of the directions they span (never all: no zero vectors)."""
    rng = np.random.default_rng(1)
    centres = np.array([[0.0] * 6, [40.0] + [0.0] * 5, [0.0, 40.0] + [0.0] * 4])
    x = np.concatenate([centres[0] + rng.normal(size=(30, 6)), centres[1] + rng.normal(size=(3, 6)),
                        centres[2] + rng.normal(size=(1, 6))])
    transform = ClusterRemoval(clusters=3, pcs=4, seed=0)
    out = transform.fit_transform(x)
    sizes = sorted(int(v) for v in transform.sizes)
    assert sizes == [1, 3, 30]
    removed = {int(transform.sizes[c]): int(transform.n_removed[c]) for c in range(3)}
    assert removed == {30: 4, 3: 1, 1: 0}
    assert transform.summary()["clusters_with_fewer_pcs"] == 2
    labels = transform.assign(x)
    np.testing.assert_allclose(out, reference_cluster_removal(x, labels, 4), rtol=0, atol=1e-10)
    np.testing.assert_allclose(out[labels == labels[-1]], x[-1:] - x.mean(axis=0), atol=1e-10)  # singleton: global shift
    with pytest.raises(TransformError, match="27 clusters need at least 27 fit vectors, got 10"):
        ClusterRemoval().fit(x[:10])


# -- the real-vector comparison reported to the lead -------------------------------------------------


def test_real_average_cosine(minilm_vectors, capsys):
    """Average cosine (brute force) of the real MiniLM vectors before and after each transform (printed)."""
    rows = []
    for kind, x in minilm_vectors.items():
        for name, params in (("identity", {}), ("center_shift", {}), ("whitening", {}), ("all_but_the_top", {}),
                             ("softdecay", {}), ("cluster_removal", {"clusters": 27 if kind == "tokens" else 5,
                                                                     "pcs": 12 if kind == "tokens" else 3})):
            out = make_transform(name, params).fit_transform(x)
            rows.append((kind, name, avg_cosine(x), avg_cosine(out)))
    with capsys.disabled():
        for kind, name, before, after in rows:
            print(f"\n{kind:9s} {name:16s} avg_cosine {before:+.4f} -> {after:+.4f}", end="")
        print()
    after = {(kind, name): value for kind, name, _, value in rows}
    for kind in minilm_vectors:
        for name in ("center_shift", "whitening", "all_but_the_top"):
            assert abs(after[kind, name]) < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_cuda_matches_cpu(name, random_vectors):
    cpu = make_transform(name, SMALL[name], device="cpu").fit(random_vectors)
    cuda = make_transform(name, SMALL[name], device="cuda").fit(random_vectors)
    np.testing.assert_allclose(cuda.transform(random_vectors), cpu.transform(random_vectors), rtol=0, atol=1e-8)
