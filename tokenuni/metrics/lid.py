"""Local intrinsic dimension (LID) of a layer's token representations, by maximum likelihood.

Amsaleg, Chelly, Furon, Girard, Houle, Kawarabayashi, Nett, "Estimating Local Intrinsic
Dimensionality", KDD 2015 (the MLE, in the form of Levina & Bickel, "Maximum Likelihood Estimation of
Intrinsic Dimension", NeurIPS 2004); used on contextual embeddings by Cai, Huang, Bian, Church,
"Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021. For a point x with
Euclidean distances r_1 ≤ … ≤ r_k to its k nearest neighbours::

    LID(x) = −( (1/k) Σ_{i=1..k} log(r_i / r_k) )⁻¹ = k / Σ_{i=1..k} log(r_k / r_i)

(the i = k term is zero; scikit-dimension's ``MLE`` uses k − 1 in the numerator, Levina & Bickel's
form, i.e. (k − 1)/k times this value).

Protocol:

* A seeded :class:`~tokenuni.numerics.ReservoirSample` of ``sample_size`` tokens (the same tokens in every layer); the
  k nearest neighbours of each sampled point are searched, exactly, within the sample: brute force in
  row chunks from the Gram form of the squared distances of the centred sample, with the rows whose
  nearest distance is small against the norms (where that form loses precision) recomputed from the
  differences (:func:`knn_distances`). As the neighbours are those within the sample, the estimate is
  the LID at the scale of the k-th neighbour among ``sample_size`` points: compare layers and models
  at equal ``k`` and ``sample_size``.
* Exact duplicates: a zero distance would give log 0. Exact duplicate vectors within the sample (e.g.
  the embedding output, layer 0, of the same token at the same position in two sentences) are
  collapsed to one point before the search (the first in (sentence_id, position) order is kept); the
  number of sampled tokens dropped so is the row ``lid_duplicate_tokens``. The LID rows describe the
  distinct points, so every distance used is > 0.
* A point whose k neighbours are all at the same distance has an unbounded estimate (Σ log = 0): it is
  skipped with a warning (``n`` counts the points used).
* If fewer than k + 1 distinct points remain, k is lowered to (points − 1) with a warning; k is
  recorded as the row ``lid_k``. Fewer than 3 distinct points: no rows.
* ``squared_distances=True`` reproduces Cai et al.'s code, which feeds the squared distances returned
  by faiss into the formula: log(r_i² / r_k²) = 2 log(r_i / r_k), so that variant is exactly half the
  true-distance LID. Its rows have ``variant="squared_distances"``; the default rows use true
  Euclidean distances (the paper's formula) and ``variant=""``.

Rows (``n`` = distinct sampled points used; ``sample_size`` and ``seed`` recorded):

* ``lid_mean``: mean LID over the points; ``lid_std``: the spread of LID across points (population
  standard deviation); ``lid_median``: the median. ``spread`` of each is the standard deviation of that
  statistic over ``bootstrap`` resamples (with replacement, seeded by ``seed``) of the per-point LIDs
  (0 disables it). The bootstrap treats the per-point LIDs of the fixed sample as independent: it
  measures the uncertainty from which points are averaged, not the dependence of the neighbourhoods on
  the sample.
* ``lid_duplicate_tokens``: sampled tokens dropped as exact duplicates of another sampled token
  (``n`` = sampled tokens).

The kNN search is computed in float64 on the metric's device; the bootstrap indices are drawn with
numpy on the CPU, so CPU and CUDA give the same numbers.
"""
from __future__ import annotations

import logging

import numpy as np

from tokenuni.metrics.base import MetricError, MetricValue, SampledMetric, used_sample_size
from tokenuni.metrics.rows import HIGH, Row

log = logging.getLogger(__name__)


def distinct_rows(x):
    """Indices (ascending) of the first occurrence of each distinct row of ``x``."""
    import torch

    _, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.int64, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(x), device=x.device), reduce="amin")
    return torch.sort(first).values


def knn_distances(x, k: int, chunk_size: int = 512, margin: int = 8, exact_below: float = 1e-4):
    """Sorted Euclidean distances (m, k) of each row of ``x`` to its k nearest other rows (self excluded).

    The rows are centred (distances do not change; the norms shrink), then per chunk of rows the
    squared distances ‖a‖² + ‖b‖² − 2a·b give the k nearest (topk). That form has an absolute error of
    about d·eps·(‖a‖² + ‖b‖²); for a row whose nearest squared distance is below ``exact_below`` times
    that scale, the k + ``margin`` nearest candidates are recomputed exactly as ‖a − b‖ (uncentred, so
    distinct rows stay at distance > 0) and re-sorted,
    so every distance used is accurate to ~1e-9 relative or better.
    """
    import torch

    m = len(x)
    raw, x = x, x - x.mean(dim=0)
    candidates = min(k + margin, m - 1)
    squared_norms = (x * x).sum(dim=1)
    largest_norm = squared_norms.max()
    out = x.new_empty((m, k))
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        rows = torch.arange(start, stop, device=x.device)
        squared = squared_norms[start:stop, None] + squared_norms[None, :] - 2.0 * (x[start:stop] @ x.T)
        squared[rows - start, rows] = float("inf")  # self by index, not by distance: duplicates stay
        values, index = torch.topk(squared, candidates, dim=1, largest=False)
        out[start:stop] = values[:, :k].clamp_min(0.0).sqrt()
        close = torch.nonzero(values[:, 0] < exact_below * (squared_norms[start:stop] + largest_norm)).flatten()
        if len(close):
            exact = torch.linalg.vector_norm(raw[index[close]] - raw[start + close, None, :], dim=2)
            out[start + close] = torch.sort(exact, dim=1).values[:, :k]
    return out


def lid_from_distances(distances, squared: bool = False):
    """Amsaleg et al.'s MLE per row of sorted positive neighbour distances (m, k): k / Σ log(r_k / r_i)."""
    r = distances * distances if squared else distances
    return r.shape[1] / (r[:, -1:] / r).log().sum(dim=1)


def bootstrap_std(values: np.ndarray, statistics, resamples: int, seed: int) -> list[float | None]:
    """Std (ddof=1) of each statistic over ``resamples`` bootstrap resamples of ``values``."""
    if resamples < 2 or len(values) < 2:
        return [None] * len(statistics)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    drawn = values[index]
    return [float(np.std(statistic(drawn, axis=1), ddof=1)) for statistic in statistics]


class LocalIntrinsicDimension(SampledMetric):
    name = "lid"
    #: its config entry ``metrics.lid`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          Local intrinsic dimension by maximum likelihood, LID(x) = -((1/k) sum_i log(r_i / r_k))^-1 over the k nearest
          neighbours within a seeded token sample (Amsaleg et al., "Estimating Local Intrinsic Dimensionality", KDD 2015;
          as used by Cai et al., ICLR 2021). Rows lid_mean, lid_std, lid_median (component = k) and lid_duplicate_tokens.
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          k:
            type: integer
            minimum: 2
            default: 100
            description: Nearest neighbours per point (lowered, with a warning, when the sample has fewer distinct points).
          sample_size:
            type: integer
            minimum: 3
            default: 5000
            description: Tokens in the seeded reservoir sample; neighbours are searched within it (the LID scale depends on it).
          seed: {type: integer, default: 0, description: Seed of the token sample and of the bootstrap.}
          squared_distances:
            type: boolean
            default: false
            description: >-
              Feed squared distances into the formula, as Cai et al.'s code does with faiss: exactly half the LID of true
              distances. Rows get variant "squared_distances".
          bootstrap:
            type: integer
            minimum: 0
            default: 100
            description: Bootstrap resamples of the per-point LIDs for the spread of each row (0 or 1 = no spread).
          chunk_size:
            type: integer
            minimum: 1
            default: 512
            description: Query rows per block of the brute-force kNN search (memory chunk_size x sample_size floats).
    """
    rows = (
        Row("lid_mean", "local intrinsic dimension (mean, MLE k=100)", title="local intrinsic dimension (mean MLE)",
            unit="dimensions", isotropic=HIGH),
        Row("lid_std", "local intrinsic dimension (std across tokens)", unit="dimensions"),
        Row("lid_median", "local intrinsic dimension (median)", unit="dimensions", isotropic=HIGH),
        Row("lid_k", "neighbours used for LID", unit="neighbours", diagnostic=True),
        Row("lid_duplicate_tokens", "duplicate vectors in the LID sample", unit="tokens", diagnostic=True),
    )
    derived_options = ("k", "squared_distances", "bootstrap", "chunk_size")

    def __init__(self, device="cpu", k: int = 100, sample_size: int = 5000, seed: int = 0,
                 squared_distances: bool = False, bootstrap: int = 100, chunk_size: int = 512, **options):
        super().__init__(device, sample_size=sample_size, seed=seed, **options)
        if int(k) < 2:
            raise MetricError("lid: k must be at least 2")
        self.k = int(k)
        self.squared_distances = bool(squared_distances)
        self.bootstrap = int(bootstrap)
        self.chunk_size = int(chunk_size)

    def pointwise(self):
        """(per-point LIDs as a numpy array, k used, sampled tokens, duplicates dropped), or None."""
        rows = self.sample.rows()
        if not rows:
            return None
        x = rows["x"]
        keep = distinct_rows(x)
        duplicates = len(x) - len(keep)
        x = x[keep]
        if len(x) < 3:
            return None
        k = min(self.k, len(x) - 1)
        if k < self.k:
            log.warning("lid (layer %s): only %d distinct sampled points, k lowered from %d to %d",
                        self.layer, len(x), self.k, k)
        distances = knn_distances(x, k, self.chunk_size)
        lid = lid_from_distances(distances, self.squared_distances).cpu().numpy()
        finite = np.isfinite(lid)
        if not finite.all():
            log.warning("lid (layer %s): %d points with all k neighbours equidistant (unbounded LID) skipped",
                        self.layer, int((~finite).sum()))
            lid = lid[finite]
        if len(lid) == 0:
            return None
        return lid, k, len(rows["x"]), duplicates

    def compute(self) -> list[MetricValue]:
        result = self.pointwise()
        if result is None:
            return []
        lid, k, sampled, duplicates = result
        sample_size = used_sample_size(self, self.sample, log)
        variant = "squared_distances" if self.squared_distances else ""
        statistics = (np.mean, np.std, np.median)
        spreads = bootstrap_std(lid, statistics, self.bootstrap, self.seed)
        common = dict(n=len(lid), variant=variant, sample_size=sample_size, seed=self.seed)
        rows = [MetricValue(name, float(statistic(lid)), spread=spread, **common)
                for name, statistic, spread in zip(("lid_mean", "lid_std", "lid_median"), statistics, spreads)]
        rows.append(MetricValue("lid_k", float(k), **common))
        rows.append(MetricValue("lid_duplicate_tokens", float(duplicates), sampled,
                                sample_size=sample_size, seed=self.seed))
        return rows
