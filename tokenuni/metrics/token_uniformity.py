"""Token uniformity: mean pairwise cosine among the tokens of a sentence, averaged over sentences.

Yan, Gui, Li, He, UAI 2022 (§3): TU = mean over sentences of mean_{i≠j} cos(h_i, h_j) over the
sentence's real tokens (padding excluded here; special tokens only when ``special_tokens`` is true).
Per sentence exact from the sum of unit vectors: (‖Σ ĥ_i‖² − n) / (n(n − 1)).

Streaming: dumps keep a sentence's tokens contiguous; a sentence that continues into the next
batch is carried over, so only one partial sentence is ever held.
"""
from __future__ import annotations

from tokenuni.metrics.base import Metric, MetricValue, TokenBatch, mean_pairwise_cosine, unit_rows


class TokenUniformity(Metric):
    name = "token_uniformity"
    produces = ("token_uniformity",)

    def __init__(self, device="cpu", min_tokens: int = 2, **options):
        super().__init__(device, **options)
        self.min_tokens = max(int(min_tokens), 2)
        self.sentence_sum = 0.0
        self.sentences = 0
        self.skipped = 0
        self.pending = None  # (sentence_id, unit-vector sum, count) of a sentence that may continue

    def _finish(self, unit_sum, count) -> None:
        if count < self.min_tokens:
            self.skipped += 1
            return
        self.sentence_sum += mean_pairwise_cosine(float(unit_sum @ unit_sum), count)
        self.sentences += 1

    def _update(self, batch: TokenBatch) -> None:
        import torch

        unit, nonzero = unit_rows(batch.x)
        ids = batch.sentence_id[nonzero]
        unit = unit[nonzero]
        if len(ids) == 0:
            return
        groups, counts = torch.unique_consecutive(ids, return_counts=True)
        sums = torch.zeros((len(groups), unit.shape[1]), dtype=unit.dtype, device=unit.device)
        sums.index_add_(0, torch.repeat_interleave(torch.arange(len(groups), device=unit.device), counts), unit)
        groups, counts = groups.tolist(), counts.tolist()
        if self.pending is not None:
            pending_id, pending_sum, pending_count = self.pending
            if groups[0] == pending_id:
                sums[0] += pending_sum
                counts[0] += pending_count
            else:
                self._finish(pending_sum, pending_count)
        for k in range(len(groups) - 1):
            self._finish(sums[k], counts[k])
        self.pending = (groups[-1], sums[-1].clone(), counts[-1])

    def compute(self) -> list[MetricValue]:
        if self.pending is not None:
            self._finish(self.pending[1], self.pending[2])
            self.pending = None
        if self.sentences == 0:
            return []
        return [MetricValue("token_uniformity", self.sentence_sum / self.sentences, self.sentences)]
