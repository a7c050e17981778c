"""Second moments on a layer with a dominant ("rogue") dimension, streamed in many batches, against a two-pass
float64 reference (issue 12 item 4).

GPT-2's middle layers carry a few dimensions of magnitude 10²–10³ shared by every token. There the one-pass
centred scatter Σ x xᵀ − N μμᵀ cancels catastrophically; the one accumulator,
:class:`tokenuni.numerics.MomentSums`, never subtracts a large mean after the fact. Every consumer of it --
the spectrum, IsoScore and IsoScore*, partition isotropy, word frequency, the projection's PCA, the
whitening / all-but-the-top / center-shift transforms and I-STAR's C0 -- must agree with the reference (centre
on the exact mean first, then form the scatter) to 1e-9 relative, with the dominant dimension at 10³, 10⁴
and 10⁵.

Error measures: the largest relative error over the eigenvalues of a covariance (every eigenvalue, the
smallest included); relative errors of scalars; normwise relative errors ‖a − b‖ / ‖b‖ of transformed
vectors and projections. The uncentred singular values are measured against the largest one (against
``numpy.linalg.svd`` of the whole matrix): an eigensolver's backward error on XᵀX is ε‖XᵀX‖, so no
Gram-based method resolves the small ones to better than that.

``python tests/test_moments_precision.py`` prints the table of errors for every size.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import pytest

N, D, BATCH = 20000, 16, 500
MAGNITUDES = (1e3, 1e4, 1e5)
RTOL = 1e-9


def rogue_layer(magnitude: float, n: int = N, d: int = D, seed: int = 0) -> np.ndarray:
    """n tokens in ℝᵈ: an anisotropic Gaussian (standard deviations 1 … 0.01, randomly rotated, mean ~ 1)
    whose dimension 0 is shifted by ``magnitude``; rounded to float32, the precision of a dump."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * np.geomspace(1.0, 0.01, d)) @ rotation.T + rng.standard_normal(d)
    x[:, 0] += magnitude
    return x.astype(np.float32).astype(np.float64)


def two_pass(x: np.ndarray):
    """The reference: the exact mean first, then the scatter of the centred rows (float64)."""
    mean = x.mean(axis=0)
    centred = x - mean
    return mean, centred.T @ centred


def eigenvalue_error(got, reference) -> float:
    """max_k |λ_k(got) − λ_k(ref)| / λ_k(ref) over every eigenvalue of two symmetric matrices."""
    a = np.linalg.eigvalsh(np.asarray(got, dtype=np.float64))
    b = np.linalg.eigvalsh(np.asarray(reference, dtype=np.float64))
    return float(np.max(np.abs(a - b) / np.abs(b)))


def relative(got, reference) -> float:
    got, reference = np.asarray(got, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(got - reference) / np.linalg.norm(reference))


def signed(vectors: np.ndarray) -> np.ndarray:
    """Columns signed so that the entry of largest magnitude is positive (tokenuni's convention)."""
    pivot = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[pivot, np.arange(vectors.shape[1])])
    return vectors * np.where(signs == 0, 1.0, signs)


def descending(matrix):
    values, vectors = np.linalg.eigh(matrix)
    return values[::-1], signed(vectors[:, ::-1])


def batches(x, frequency=None):
    """TokenBatches of BATCH rows: token i is (sentence i // 20, position i % 20)."""
    import torch

    from tokenuni.metrics.base import TokenBatch

    n = len(x)
    index = torch.arange(n)
    frequency = torch.ones(n, dtype=torch.int64) if frequency is None else torch.as_tensor(frequency)
    for start in range(0, n, BATCH):
        part = slice(start, start + BATCH)
        yield TokenBatch(torch.from_numpy(x[part]), index[part] // 20, index[part] % 7, torch.zeros(len(index[part]),
                         dtype=torch.bool), frequency[part], index[part] % 20)


def stream(metric, x, frequency=None):
    for p in range(metric.passes):
        metric.begin_pass(p)
        for batch in batches(x, frequency):
            metric.update(batch)
    return metric


def rows_of(metric):
    return {(r.metric, r.variant, r.component): r.value for r in metric.compute()}


def spectrum_errors(x, mean, scatter) -> dict:
    from tokenuni.metrics import make_metric

    rows = rows_of(stream(make_metric("spectrum", {}, "cpu"), x))
    reference = np.sqrt(np.clip(np.linalg.eigvalsh(scatter)[::-1], 0, None))
    centred = np.array([rows["singular_value", "centred", k] for k in range(D)])
    uncentred = np.array([rows["singular_value", "uncentred", k] for k in range(D)])
    exact = np.linalg.svd(x, compute_uv=False)
    skew = ((reference / reference[0]) - (reference / reference[0]).mean())
    skew = np.mean(skew ** 3) / np.mean(skew ** 2) ** 1.5
    return {"spectrum centred σ": float(np.max(np.abs(centred - reference) / reference)),
            "spectrum centred skewness": abs(rows["singular_value_skewness", "centred", None] - skew) / abs(skew),
            "spectrum uncentred σ (÷ σ₁)": float(np.max(np.abs(uncentred - exact)) / exact[0])}


def isoscore_errors(x, mean, scatter) -> dict:
    from tokenuni.metrics import make_metric
    from tokenuni.metrics.isoscore import isoscore_from_covariance

    metric = stream(make_metric("isoscore", {"sample_size": 1000, "bootstrap": 0}, "cpu"), x)
    rows = rows_of(metric)
    covariance = scatter / (N - 1)
    sample = metric.sample.rows()["x"].numpy()
    _, sample_scatter = two_pass(sample)
    star = isoscore_from_covariance(0.8 * sample_scatter / (len(sample) - 1) + 0.2 * covariance)
    return {"IsoScore covariance eigenvalues": eigenvalue_error(metric.covariance().numpy(), covariance),
            "IsoScore": abs(rows["isoscore", "", None] / isoscore_from_covariance(covariance) - 1),
            "IsoScore*": abs(rows["isoscore_star", "", None] / star - 1)}


def partition_errors(x, mean, scatter) -> dict:
    from scipy.special import logsumexp

    from tokenuni.metrics import make_metric

    metric = stream(make_metric("partition_isotropy", {}, "cpu"), x)
    log_z = metric.log_partition()
    out = {}
    for variant, matrix, points in (("centred", scatter, x - mean), ("uncentred", x.T @ x, x)):
        _, vectors = np.linalg.eigh(matrix)
        directions = np.concatenate([vectors, -vectors], axis=1)
        reference = logsumexp(points @ directions, axis=0)
        spread, got = reference.max() - reference.min(), log_z[variant].max() - log_z[variant].min()
        if variant == "centred":  # I = exp(−spread): relative error |exp(spread − got) − 1|
            out["partition isotropy centred (I)"] = abs(math.expm1(spread - got))
        else:  # I underflows to 0 at these sizes: compare −log I
            out["partition isotropy uncentred (−log I)"] = abs(got / spread - 1)
    return out


def word_frequency_errors(x, mean, scatter) -> dict:
    from tokenuni.metrics import make_metric

    rng = np.random.default_rng(1)
    frequency = np.maximum(1, np.round(np.exp(3 + x[:, 1] - x[:, 1].mean() + rng.standard_normal(N)))).astype(np.int64)
    rows = rows_of(stream(make_metric("word_frequency", {"components": 3}, "cpu"), x, frequency))
    z = np.column_stack([x, np.log(frequency)])
    _, z_scatter = two_pass(z)
    covariance = z_scatter / N
    values, vectors = descending(covariance[:D, :D])
    errors = []
    for k in range(3):
        r = vectors[:, k] @ covariance[:D, D] / math.sqrt(values[k] * covariance[D, D])
        errors.append(abs(rows["pc_frequency_correlation", "signed", k + 1] / r - 1))
    return {"word frequency PC–frequency r": max(errors)}


def projection_errors(x, mean, scatter, tmp_path) -> dict:
    from tokenuni.projection import token_projection
    from tokenuni.store import DumpWriter

    path = tmp_path / "rogue.arrow"
    with DumpWriter(path, n_layers=1, hidden_size=D, metadata={"model_id": "rogue", "corpus": "synthetic"}) as writer:
        for start in range(0, N, BATCH):
            rows = np.arange(start, min(start + BATCH, N))
            writer.write({"sentence_id": rows // 20, "position": rows % 20, "token_id": rows % 7,
                          "token": [f"t{i % 7}" for i in rows], "special": np.zeros(len(rows), bool),
                          "frequency": np.ones(len(rows), np.int64)}, [x[rows].astype(np.float32)])
    table = token_projection(path, sample_size=2000, components=3, progress=False)
    values, vectors = descending(scatter / N)
    ratios = np.array([table[f"explained_variance_ratio_pc{k}"].iat[0] for k in (1, 2, 3)])
    projected = (x[table["token_index"].to_numpy()] - mean) @ vectors[:, :3]
    got = table[["pc1", "pc2", "pc3"]].to_numpy()
    return {"projection explained-variance ratios": float(np.max(np.abs(ratios - values[:3] / values.sum())
                                                                 / (values[:3] / values.sum()))),
            "projection PC coordinates": max(relative(got[:, k], projected[:, k]) for k in range(3))}


def transform_errors(x, mean, scatter) -> dict:
    from tokenuni.transforms import make_transform

    def fitted(name, params=None):
        transform = make_transform(name, params or {}, device="cpu")
        for start in range(0, N, BATCH):
            transform.partial_fit(x[start:start + BATCH])
        return transform.finalize()

    probe = x[:2000]
    values, vectors = descending(scatter / (N - 1))
    whitened = (probe - mean) @ (vectors / np.sqrt(values))
    top = vectors[:, :1]
    abtt = (probe - mean) - (probe - mean) @ top @ top.T
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    alpha = -0.6
    decayed = -np.log(1 - alpha * (s + alpha)) / alpha
    decayed = np.where(decayed > 0, decayed, 0.0) * (s[0] / decayed[0])
    softdecay = probe @ (vt.T * (decayed / s)) @ vt
    return {"whitening output": relative(fitted("whitening").transform(probe), whitened),
            "all-but-the-top output": relative(fitted("all_but_the_top").transform(probe), abtt),
            "center-shift output": relative(fitted("center_shift").transform(probe), probe - mean),
            "softdecay output": relative(fitted("softdecay", {"alpha": alpha}).transform(probe), softdecay)}


def istar_errors(x, mean, scatter) -> dict:
    import torch

    from tokenuni.finetune.regularisers import IStar
    from tokenuni.metrics.isoscore import isoscore_from_covariance

    istar = IStar(-1.0, zeta=0.2, layers=[-1], c0_tokens=N).bind(2)

    def sample_hidden():
        for start in range(0, N, BATCH):
            states = torch.from_numpy(x[start:start + BATCH])[None]
            yield (states, states), torch.ones(1, states.shape[1], dtype=torch.int64)

    istar.rebuild_c0(sample_hidden)
    covariance = scatter / (N - 1)
    batch = x[:256]
    _, batch_scatter = two_pass(batch)
    states = torch.from_numpy(batch)[None]
    star = float(istar.isoscore_star((states, states), torch.ones(1, len(batch), dtype=torch.int64)))
    return {"I-STAR C0 eigenvalues": eigenvalue_error(istar.c0.numpy(), covariance),
            "I-STAR IsoScore*": abs(star / isoscore_from_covariance(0.8 * batch_scatter / 255 + 0.2 * covariance) - 1)}


def measure(magnitude: float, tmp_path) -> dict[str, float]:
    """Relative error of every consumer of the second-moment accumulator on :func:`rogue_layer` (magnitude)."""
    x = rogue_layer(magnitude)
    mean, scatter = two_pass(x)
    errors = {}
    for part in (spectrum_errors, isoscore_errors, partition_errors, word_frequency_errors, transform_errors,
                 istar_errors):
        errors.update(part(x, mean, scatter))
    errors.update(projection_errors(x, mean, scatter, tmp_path))
    return errors


@pytest.mark.parametrize("magnitude", MAGNITUDES)
def test_every_moment_consumer_matches_the_two_pass_reference(magnitude, tmp_path):
    errors = measure(magnitude, tmp_path)
    for name, error in sorted(errors.items()):
        print(f"{magnitude:8.0e}  {name:42s} {error:.1e}")
    too_large = {name: error for name, error in errors.items() if not error <= RTOL}
    assert not too_large, f"dominant dimension {magnitude:g}: relative errors above {RTOL:g}: {too_large}"


if __name__ == "__main__":  # the table for the record, e.g. before/after a change of the accumulator
    import tempfile
    from pathlib import Path

    results = {}
    for magnitude in MAGNITUDES:
        with tempfile.TemporaryDirectory() as folder:
            results[magnitude] = measure(magnitude, Path(folder))
    names = list(results[MAGNITUDES[0]])
    print("| quantity | " + " | ".join(f"10^{int(math.log10(m))}" for m in MAGNITUDES) + " |")
    print("|---|" + "---|" * len(MAGNITUDES))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{results[m][name]:.1e}" for m in MAGNITUDES) + " |")
    sys.exit(0)
