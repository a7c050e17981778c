"""Uniformity of a layer's token representations on the unit hypersphere (Wang & Isola).

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on
the Hypersphere", ICML 2020 (also one of the measures of Yan, Gui, Li, He, UAI 2022)::

    uniformity = log E_{i≠j} exp(−t ‖x̂_i − x̂_j‖²),   x̂ = x / ‖x‖,  t = 2

It lies in [−4t, 0]: 0 when all tokens point the same way (collapse), lower is more uniform; for points
uniform on the sphere S^{d−1}, ‖u − v‖² → 2 as d grows, so the value → −2t (−4 for t = 2).
Their code (``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``) averages over pairs i < j, the same
mean as over ordered pairs i ≠ j.

Protocol: a seeded :class:`~tokenuni.numerics.ReservoirSample` of ``sample_size`` tokens (the same tokens in every
layer; zero vectors, which have no direction, are dropped). With ‖x̂_i − x̂_j‖² = 2 − 2 x̂_i·x̂_j
(clamped at 0), the sum over pairs is accumulated in row chunks as a running log-sum-exp (shifted by
the running maximum), so nothing overflows or underflows whatever t; no m × m matrix is held.

``spread`` is the standard deviation over ``bootstrap`` resamples of the sampled tokens (with
replacement, seeded by ``seed``; 0 disables it). A resample is a U-statistic over its multiplicities w:
Σ_{i≠j} w_i w_j K_ij / ((Σw)² − Σw²), i.e. pairs of copies of the same token are left out (they would
add spurious zero distances).

Rows: ``wang_isola_uniformity`` (``variant`` "" for t = 2, "t=<t>" otherwise; ``n`` = sampled tokens
used; ``sample_size`` and ``seed`` recorded).

Alignment (E ‖f(x) − f(y)‖^α over positive pairs) is not computed: it needs the pairs (e.g. the two
sentences of an STS pair), and the dump records sentence ids only, not pair ids. Future work.
"""
from __future__ import annotations

import logging
import math

import numpy as np

from tokenuni.metrics.base import MetricError, MetricValue, SampledMetric, unit_rows, used_sample_size
from tokenuni.metrics.rows import LOW, Row

log = logging.getLogger(__name__)


def bootstrap_weights(m: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, m) multiplicities of m items in seeded bootstrap resamples of size m."""
    rng = np.random.default_rng(seed)
    index = rng.integers(0, m, size=(resamples, m))
    counts = np.zeros((resamples, m), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(resamples), m), index.ravel()), 1.0)
    return counts


def uniformity(unit, t: float = 2.0, weights=None, chunk_size: int = 512):
    """log mean_{i≠j} exp(−t ‖u_i − u_j‖²) of unit rows ``unit`` (m ≥ 2), and the same for each row of
    ``weights`` (B, m) as a weighted U-statistic (or None). Chunked running log-sum-exp."""
    import torch

    m = len(unit)
    shift = -math.inf
    total = unit.new_zeros(())
    weighted = None if weights is None else unit.new_zeros(len(weights))
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        rows = torch.arange(start, stop, device=unit.device)
        exponent = -t * (2.0 - 2.0 * (unit[start:stop] @ unit.T)).clamp_min(0.0)
        exponent[rows - start, rows] = -math.inf
        new_shift = max(shift, float(exponent.max()))
        if new_shift == -math.inf:
            continue
        scale = math.exp(shift - new_shift)
        kernel = torch.exp(exponent - new_shift)
        total = total * scale + kernel.sum()
        if weights is not None:
            weighted = weighted * scale + ((kernel @ weights.T) * weights[:, start:stop].T).sum(dim=0)
        shift = new_shift
    value = shift + float(torch.log(total)) - math.log(m * (m - 1))
    if weights is None:
        return value, None
    pairs = weights.sum(dim=1) ** 2 - (weights ** 2).sum(dim=1)
    return value, (shift + torch.log(weighted) - torch.log(pairs)).cpu().numpy()


class AlignmentUniformity(SampledMetric):
    name = "alignment_uniformity"
    #: its config entry ``metrics.alignment_uniformity`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          Wang-Isola uniformity log E_{i!=j} exp(-t ||x_i - x_j||^2) of unit-normalised tokens over a seeded sample
          (Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and Uniformity on the
          Hypersphere", ICML 2020). Row wang_isola_uniformity. Alignment needs positive pairs, which dumps do not record:
          not computed.
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          t:
            type: number
            minimum: 0
            default: 2
            description: Temperature of the Gaussian kernel (the paper uses 2); rows get variant "t=<t>" when t != 2.
          sample_size:
            type: integer
            minimum: 2
            default: 5000
            description: Tokens in the seeded reservoir sample (cost grows as sample_size squared).
          seed: {type: integer, default: 0, description: Seed of the token sample and of the bootstrap.}
          bootstrap:
            type: integer
            minimum: 0
            default: 100
            description: >-
              Bootstrap resamples of the sampled tokens (pairs of copies of one token left out) for the spread
              (0 or 1 = no spread).
          chunk_size:
            type: integer
            minimum: 1
            default: 512
            description: Rows per block of the pairwise kernel (memory chunk_size x sample_size floats).
    """
    rows = (Row("wang_isola_uniformity", "Wang–Isola uniformity log E exp(−2‖x̂−ŷ‖²)", isotropic=LOW),)
    derived_options = ("t", "bootstrap", "chunk_size")

    def __init__(self, device="cpu", t: float = 2.0, sample_size: int = 5000, seed: int = 0, bootstrap: int = 100,
                 chunk_size: int = 512, **options):
        super().__init__(device, sample_size=sample_size, seed=seed, **options)
        if float(t) < 0:
            raise MetricError("alignment_uniformity: t must be >= 0")
        self.t = float(t)
        self.bootstrap = int(bootstrap)
        self.chunk_size = int(chunk_size)

    def compute(self) -> list[MetricValue]:
        import torch

        rows = self.sample.rows()
        if not rows:
            return []
        unit, nonzero = unit_rows(rows["x"])
        unit = unit[nonzero]
        m = len(unit)
        if m < 2:
            return []
        weights = None
        if self.bootstrap >= 2:
            weights = torch.from_numpy(bootstrap_weights(m, self.bootstrap, self.seed)).to(unit.device)
        value, resampled = uniformity(unit, self.t, weights, self.chunk_size)
        spread = None
        if resampled is not None and np.isfinite(resampled).sum() >= 2:  # a resample of one token has no pair
            spread = float(np.std(resampled[np.isfinite(resampled)], ddof=1))
        variant = "" if self.t == 2.0 else f"t={self.t:g}"
        sample_size = used_sample_size(self, self.sample, log)
        return [MetricValue("wang_isola_uniformity", value, m, variant, sample_size=sample_size, seed=self.seed,
                            spread=spread)]
