"""Average cosine similarity between distinct token representations of a layer (anisotropy).

Ethayarajh, EMNLP 2019; Godey, de la Clergerie, Sagot, "Anisotropy Is Inherent to Self-Attention in
Transformers", EACL 2024: anisotropy = E[cos(x_i, x_j)] over random pairs i ≠ j (uncentred).

Exact in one pass: with unit vectors x̂_i, Σ_{i≠j} x̂_i·x̂_j = ‖Σ x̂_i‖² − N, so
avg_cosine = (‖Σ x̂_i‖² − N) / (N(N − 1)). Zero vectors have no direction and are skipped.
"""
from __future__ import annotations

from tokenuni.metrics.base import Metric, MetricValue, TokenBatch, mean_pairwise_cosine, unit_rows


class AvgCosine(Metric):
    name = "avg_cosine"
    produces = ("avg_cosine",)

    def __init__(self, device="cpu", **options):
        super().__init__(device, **options)
        self.unit_sum = None
        self.count = 0

    def _update(self, batch: TokenBatch) -> None:
        unit, nonzero = unit_rows(batch.x)
        if self.unit_sum is None:
            self.unit_sum = unit.new_zeros(unit.shape[1])
        self.unit_sum += unit[nonzero].sum(dim=0)
        self.count += int(nonzero.sum())

    def compute(self) -> list[MetricValue]:
        if self.count < 2:
            return []
        value = mean_pairwise_cosine(float(self.unit_sum @ self.unit_sum), self.count)
        return [MetricValue("avg_cosine", value, self.count)]
