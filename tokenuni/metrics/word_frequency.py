"""How a layer's geometry tracks token frequency: principal components and norms against log frequency.

Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021
(manifolds and word frequency: frequent tokens sit in one region of the leading principal components);
Gao, He, Tan, Qin, Wang, Liu, "Representation Degeneration Problem in Training Natural Language
Generation Models", ICLR 2019 (rare tokens are pushed away from the origin, frequent ones stay close);
Mu & Viswanath, "All-but-the-Top: Simple and Effective Postprocessing for Word Representations", ICLR 2018
(the top principal components encode frequency); Liang et al., "Learning to Remove: Towards
Isotropic Pre-trained BERT Embedding", ICANN 2021 (Pearson correlation of about −0.7 between the first
principal component and frequency for BERT).

Frequency f_i of token i: the dump's ``frequency`` column, the number of occurrences of the token's id in
the tokenised (truncated) corpus itself, special tokens included in the count (not a frequency from the
model's pre-training corpus). With ``log_frequency`` (default) f is its natural logarithm (every count
is ≥ 1). Rows (population moments, ``n`` = tokens):

* ``pc_frequency_correlation`` (``component`` = k, 1-based: PC1 is component 1, k = 1…``components``):
  the Pearson correlation between the projection p_i = (x_i − μ)·v_k of the centred tokens on the k-th
  principal component v_k (eigenvector of the covariance, eigenvalue λ_k, descending) and f:
  r_k = v_kᵀ Cov(x, f) / √(λ_k Var f). A principal axis has no sign, so ``variant`` ``"absolute"``
  reports |r_k| and ``"signed"`` reports r_k with v_k's sign fixed so that its largest-|loading|
  coordinate is positive (the first such coordinate on ties).
* ``norm_frequency_correlation``: the Pearson correlation between ‖x_i‖ and f (negative when frequent
  tokens have smaller norms, Gao et al.).

Exact in one pass from sufficient statistics: N, the mean and the centred scatter of z = (x, f, ‖x‖)
(:class:`tokenuni.numerics.MomentSums`, float64, merged batch by batch without cancellation); every
moment above is a block of z's covariance. Memory O(d²), independent of the number of tokens.
"""
from __future__ import annotations

import math

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch
from tokenuni.metrics.rows import Row
from tokenuni.numerics import MomentSums, constant_up_to_rounding, descending_eigh


class WordFrequency(Metric):
    name = "word_frequency"
    #: its config entry ``metrics.word_frequency`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >
          Exact Pearson correlations of token frequency (the dump's in-corpus counts) with the projections on the
          leading principal components and with the vector norm (Cai et al., ICLR 2021; Gao et al.,
          "Representation Degeneration Problem in Training Natural Language Generation Models", ICLR 2019).
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          log_frequency:
            type: boolean
            default: true
            description: Correlate with the natural log of the frequency (false = the raw count).
          components:
            type: integer
            minimum: 1
            default: 3
            description: Principal components reported (component = 1 ... components; 1 = PC1).
    """
    rows = (
        Row("pc_frequency_correlation", "Pearson r(PC projection, log frequency)", component=True),
        Row("norm_frequency_correlation", "Pearson r(‖x‖, log frequency)"),
    )
    derived_options = ("log_frequency", "components")
    shared = ("moments",)

    def __init__(self, device="cpu", log_frequency: bool = True, components: int = 3, **options):
        super().__init__(device, **options)
        if int(components) < 1:
            raise MetricError("word_frequency: components must be >= 1")
        self.log_frequency = bool(log_frequency)
        self.components = int(components)
        #: N, mean and centred scatter of z = (x, f, ‖x‖) ∈ ℝ^{d+2}: every moment below is a block of it
        self.sums = MomentSums(self.device)

    def _frequency(self, batch: TokenBatch):
        f = batch.frequency.to(batch.x.dtype)
        return f.clamp_min(1.0).log() if self.log_frequency else f

    @property
    def count(self) -> int:
        return self.sums.count

    def _update(self, batch: TokenBatch) -> None:
        import torch

        x = batch.x
        norms = torch.linalg.vector_norm(x, dim=1)
        self.sums.update(torch.cat([x, self._frequency(batch)[:, None], norms[:, None]], dim=1))

    def stream(self, batch: TokenBatch, stage: str) -> None:
        """Nothing of its own per batch: the suite keeps the shared moments of (x, f, log f, ‖x‖)."""

    def use_moments(self, moments, hidden_size: int) -> None:
        frequency = hidden_size + (1 if self.log_frequency else 0)
        self.sums = moments.select([*range(hidden_size), frequency, hidden_size + 2])

    def moments(self) -> dict:
        """Population covariance of x, Cov(x, f), Var f, Var ‖x‖, Cov(‖x‖, f) (numpy / floats).

        A variance at rounding level (equal frequencies or equal norms, :func:`constant_up_to_rounding`) is 0.
        """
        covariance = self.sums.covariance(ddof=0).cpu().numpy()
        mean = self.sums.mean().cpu().numpy()
        d = covariance.shape[0] - 2

        def variance(i):
            value = float(covariance[i, i])
            return 0.0 if constant_up_to_rounding(value, float(mean[i])) else value

        return {
            "covariance": covariance[:d, :d],
            "cov_x_f": covariance[:d, d],
            "var_f": variance(d),
            "var_norm": variance(d + 1),
            "cov_norm_f": float(covariance[d + 1, d]),
        }

    def compute(self) -> list[MetricValue]:
        import torch

        if self.count < 2:
            return []
        m = self.moments()
        n = self.count
        rows = []
        var_f = m["var_f"]
        if not var_f > 0:
            return rows  # every token equally frequent: correlation undefined
        eigenvalues, eigenvectors = (t.cpu().numpy() for t in descending_eigh(torch.from_numpy(m["covariance"])))
        for k in range(1, min(self.components, n - 1, len(eigenvalues)) + 1):
            variance = eigenvalues[k - 1]
            if not variance > 0:
                break
            direction = eigenvectors[:, k - 1]  # signed: largest-|loading| coordinate positive
            r = float(direction @ m["cov_x_f"] / math.sqrt(variance * var_f))
            rows.append(MetricValue("pc_frequency_correlation", abs(r), n, "absolute", component=k))
            rows.append(MetricValue("pc_frequency_correlation", r, n, "signed", component=k))
        if m["var_norm"] > 0:
            rows.append(MetricValue("norm_frequency_correlation", m["cov_norm_f"] / math.sqrt(m["var_norm"] * var_f), n))
        return rows
