"""Exact singular-value spectrum of a layer's token matrix, streamed through its Gram matrix.

Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via Singular Value Transformation",
UAI 2022: the singular values of a layer's outputs grow more skewed with depth (token uniformity).

For the N×d token matrix X (rows = real tokens of the corpus), the accumulator
(:class:`tokenuni.numerics.MomentSums`, float64) keeps N, the mean μ and the centred scatter
M = (X − 1μᵀ)ᵀ(X − 1μᵀ), merged batch by batch without cancellation, so for any N:

* uncentred: σ_k(X) = √λ_k(XᵀX), XᵀX = M + N μμᵀ;
* centred:   σ_k(X − 1μᵀ) = √λ_k(M).

Reported per layer (``variant`` = uncentred / centred): every singular value (``singular_value``,
component 0 = largest, min(N, d) of them, N − 1 when centred), the skewness of the normalised values
s / max s (``singular_value_skewness``: population skewness m₃ / m₂^{3/2}, :func:`tokenuni.numerics.skewness`,
as ``scipy.stats.skew``; the normalisation does not change it), the effective rank exp(H(p)),
p_k = σ_k / Σσ (Roy & Vetterli 2007), and the fraction of the variance explained by the top k principal
components (``explained_variance``, component = k for each k in ``explained_variance_k``):
Σ_{i≤k} σ_i² / Σ_i σ_i² (Yan et al.'s top-k explained variance; of the second moment about 0 for the
uncentred variant; 1 when k ≥ the rank).

Unlike the paper's code (a truncated SVD that drops the smallest singular value and keeps padding
tokens), this is the exact spectrum of the real tokens, padding excluded.
"""
from __future__ import annotations

import numpy as np

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch
from tokenuni.metrics.rows import HIGH, LOW, Row
from tokenuni.numerics import MomentSums, skewness


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(−Σ p log p), p = σ / Σσ (Roy & Vetterli, EUSIPCO 2007); zero singular values contribute 0."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def explained_variance(singular_values: np.ndarray, ks) -> dict[int, float]:
    """Σ_{i≤k} σ_i² / Σ σ_i² for each k (values descending); empty if all are zero."""
    energy = np.asarray(singular_values, dtype=np.float64) ** 2
    total = energy.sum()
    if total <= 0:
        return {}
    cumulative = np.cumsum(energy)
    return {k: float(cumulative[min(k, len(energy)) - 1] / total) for k in ks}


def singular_values_from_gram(gram: np.ndarray, rank_bound: int) -> np.ndarray:
    """Singular values (descending) of a matrix whose Gram matrix is ``gram``; negatives from rounding -> 0."""
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    return np.sqrt(np.clip(eigenvalues[:max(rank_bound, 0)], 0.0, None))


class Spectrum(Metric):
    name = "spectrum"
    #: its config entry ``metrics.spectrum`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: Exact singular values of the layer's token matrix, their skewness, effective rank and top-k explained variance (Yan et al., UAI 2022).
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          variants:
            $ref: "#/$defs/centring_variants"
            default: [uncentred, centred]
          explained_variance_k:
            type: array
            items: {type: integer, minimum: 1}
            uniqueItems: true
            default: [1, 10, 50]
            description: >-
              k values for the explained_variance rows, sum_{i<=k} s_i^2 / sum_i s_i^2 per variant (Yan et al., UAI 2022);
              1 when k is at least the rank.
    """
    rows = (
        Row("singular_value", "singular value", headline_variant="uncentred", component=True),
        Row("singular_value_skewness", "skewness of normalised singular values", short="sv_skewness",
            headline_variant="uncentred", isotropic=LOW),
        Row("effective_rank", "effective rank", unit="dimensions", headline_variant="uncentred", isotropic=HIGH),
        Row("explained_variance", "variance explained by the top-k components", headline_variant="uncentred",
            component=True),
    )
    derived_options = ("variants", "explained_variance_k")
    shared = ("moments",)

    def __init__(self, device="cpu", variants=("uncentred", "centred"), explained_variance_k=(1, 10, 50), **options):
        super().__init__(device, **options)
        self.variants = tuple(variants)
        self.explained_variance_k = tuple(int(k) for k in explained_variance_k)
        if any(k < 1 for k in self.explained_variance_k):
            raise MetricError(f"explained_variance_k must be positive integers, got {explained_variance_k}")
        self.sums = MomentSums(self.device)

    def _update(self, batch: TokenBatch) -> None:
        self.sums.update(batch.x)

    def stream(self, batch: TokenBatch, stage: str) -> None:
        """Nothing of its own per batch: the suite keeps the shared moments."""

    def spectra(self) -> dict[str, np.ndarray]:
        """Singular values per variant (descending)."""
        count = self.sums.count
        if count == 0:
            return {}
        d = self.sums.dim
        out = {}
        if "uncentred" in self.variants:
            out["uncentred"] = singular_values_from_gram(self.sums.uncentred_gram().cpu().numpy(), min(count, d))
        if "centred" in self.variants:
            out["centred"] = singular_values_from_gram(self.sums.scatter().cpu().numpy(), min(count - 1, d))
        return out

    def compute(self) -> list[MetricValue]:
        rows = []
        for variant, values in self.spectra().items():
            n = self.sums.count
            rows += [MetricValue("singular_value", float(v), n, variant, component=k) for k, v in enumerate(values)]
            if len(values) and values[0] > 0:
                rows.append(MetricValue("singular_value_skewness", skewness(values / values[0]), n, variant))
            rows.append(MetricValue("effective_rank", effective_rank(values), n, variant))
            rows += [MetricValue("explained_variance", fraction, n, variant, component=k)
                     for k, fraction in explained_variance(values, self.explained_variance_k).items()]
        return rows
