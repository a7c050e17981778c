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

Exact in one pass from sufficient statistics: the Gram matrix XᵀX, Σx, Σx·f, Σf, Σf², Σ‖x‖, Σ‖x‖²,
Σ‖x‖·f (float64, each shifted by the first batch's means for numerical stability; the shift cancels
exactly in the moments). Memory O(d²), independent of the number of tokens.
"""
from __future__ import annotations

import math

import numpy as np

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch


class WordFrequency(Metric):
    name = "word_frequency"
    produces = ("pc_frequency_correlation", "norm_frequency_correlation")
    vector_rows = ("pc_frequency_correlation",)

    def __init__(self, device="cpu", log_frequency: bool = True, components: int = 3, **options):
        super().__init__(device, **options)
        if int(components) < 1:
            raise MetricError("word_frequency: components must be >= 1")
        self.log_frequency = bool(log_frequency)
        self.components = int(components)
        self.count = 0
        self.shift = None  # (shift of x, shift of f, shift of ‖x‖) taken from the first batch
        self.gram = None  # Σ y yᵀ, y = x − shift_x
        self.vector_sum = None  # Σ y
        self.vector_frequency = None  # Σ y g, g = f − shift_f
        self.frequency_sum = 0.0  # Σ g
        self.frequency_square = 0.0  # Σ g²
        self.norm_sum = 0.0  # Σ r, r = ‖x‖ − shift_norm
        self.norm_square = 0.0  # Σ r²
        self.norm_frequency = 0.0  # Σ r g

    def _frequency(self, batch: TokenBatch):
        f = batch.frequency.to(batch.x.dtype)
        return f.clamp_min(1.0).log() if self.log_frequency else f

    def _update(self, batch: TokenBatch) -> None:
        import torch

        x = batch.x
        f = self._frequency(batch)
        norms = torch.linalg.vector_norm(x, dim=1)
        if self.shift is None:
            d = x.shape[1]
            self.shift = (x.mean(dim=0), float(f.mean()), float(norms.mean()))
            self.gram = x.new_zeros((d, d))
            self.vector_sum = x.new_zeros(d)
            self.vector_frequency = x.new_zeros(d)
        y = x - self.shift[0]
        g = f - self.shift[1]
        r = norms - self.shift[2]
        self.gram += y.T @ y
        self.vector_sum += y.sum(dim=0)
        self.vector_frequency += y.T @ g
        self.frequency_sum += float(g.sum())
        self.frequency_square += float(g @ g)
        self.norm_sum += float(r.sum())
        self.norm_square += float(r @ r)
        self.norm_frequency += float(r @ g)
        self.count += len(batch)

    def moments(self) -> dict:
        """Population covariance of x, Cov(x, f), Var f, Var ‖x‖, Cov(‖x‖, f) (numpy / floats)."""
        n = self.count
        s = self.vector_sum.cpu().numpy()
        mean_g = self.frequency_sum / n
        mean_r = self.norm_sum / n
        return {
            "covariance": (self.gram.cpu().numpy() - np.outer(s, s) / n) / n,
            "cov_x_f": self.vector_frequency.cpu().numpy() / n - s / n * mean_g,
            "var_f": self.frequency_square / n - mean_g ** 2,
            "var_norm": self.norm_square / n - mean_r ** 2,
            "cov_norm_f": self.norm_frequency / n - mean_r * mean_g,
        }

    def compute(self) -> list[MetricValue]:
        if self.count < 2:
            return []
        m = self.moments()
        n = self.count
        rows = []
        var_f = m["var_f"]
        if not var_f > 0:
            return rows  # every token equally frequent: correlation undefined
        eigenvalues, eigenvectors = np.linalg.eigh(m["covariance"])
        order = np.argsort(eigenvalues)[::-1]
        for k, index in enumerate(order[:min(self.components, n - 1)], start=1):
            variance = eigenvalues[index]
            if not variance > 0:
                break
            direction = eigenvectors[:, index]
            if direction[np.argmax(np.abs(direction))] < 0:
                direction = -direction
            r = float(direction @ m["cov_x_f"] / math.sqrt(variance * var_f))
            rows.append(MetricValue("pc_frequency_correlation", abs(r), n, "absolute", component=k))
            rows.append(MetricValue("pc_frequency_correlation", r, n, "signed", component=k))
        if m["var_norm"] > 0:
            rows.append(MetricValue("norm_frequency_correlation", m["cov_norm_f"] / math.sqrt(m["var_norm"] * var_f), n))
        return rows
