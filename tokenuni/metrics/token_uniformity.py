"""Token uniformity: mean pairwise cosine among the tokens of a sentence, averaged over sentences.

Yan, Gui, Li, He, UAI 2022 (§3): TU = mean over sentences of mean_{i≠j} cos(h_i, h_j) over the
sentence's real tokens (padding excluded here; special tokens only when ``special_tokens`` is true).
Per sentence exact from the sum of unit vectors: (‖Σ ĥ_i‖² − n) / (n(n − 1)).

Streaming: dumps keep a sentence's tokens contiguous; a sentence that continues into the next
batch is carried over, so only one partial sentence is ever held. Sufficient statistics: per sentence
length n (tokens with a direction), the number of sentences and the sum of their TU, so ``min_tokens``
is applied in :meth:`compute` (a derivation option: the one-pass suite re-derives the table from the saved
sums without reading the dump again). Memory: two vectors as long as the longest sentence.
"""
from __future__ import annotations

import numpy as np

from tokenuni.metrics.base import Metric, MetricValue, TokenBatch, mean_pairwise_cosine, unit_rows
from tokenuni.metrics.rows import LOW, Row


class TokenUniformity(Metric):
    name = "token_uniformity"
    #: its config entry ``metrics.token_uniformity`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: Mean pairwise cosine among a sentence's tokens, averaged over sentences (Yan et al., UAI 2022).
        properties:
          special_tokens: {type: boolean, default: false}
          min_tokens:
            type: integer
            minimum: 2
            default: 2
            description: Sentences with fewer tokens are skipped (and counted).
    """
    rows = (
        Row("token_uniformity", "token uniformity (mean pairwise cosine within a sentence)",
            title="token uniformity (mean cosine within a sentence)", isotropic=LOW),
    )
    derived_options = ("min_tokens",)

    def __init__(self, device="cpu", min_tokens: int = 2, **options):
        super().__init__(device, **options)
        self.min_tokens = max(int(min_tokens), 2)
        #: per sentence length n: sentences seen, and Σ TU of those with n ≥ 2 (index n)
        self.length_sentences = np.zeros(0, dtype=np.int64)
        self.length_sums = np.zeros(0, dtype=np.float64)
        self.pending = None  # (sentence_id, unit-vector sum, count) of a sentence that may continue

    def _finish(self, unit_sum, count) -> None:
        if count >= len(self.length_sentences):
            grow = count + 1 - len(self.length_sentences)
            self.length_sentences = np.concatenate([self.length_sentences, np.zeros(grow, dtype=np.int64)])
            self.length_sums = np.concatenate([self.length_sums, np.zeros(grow)])
        self.length_sentences[count] += 1
        if count >= 2:
            self.length_sums[count] += mean_pairwise_cosine(float(unit_sum @ unit_sum), count)

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

    def flush(self) -> None:
        """Fold the last, carried-over sentence (the stream has ended)."""
        if self.pending is not None:
            self._finish(self.pending[1], self.pending[2])
            self.pending = None

    def state_dict(self) -> dict:
        self.flush()
        return {"length_sentences": self.length_sentences, "length_sums": self.length_sums}

    def load_state_dict(self, state: dict) -> None:
        self.length_sentences = np.asarray(state["length_sentences"], dtype=np.int64)
        self.length_sums = np.asarray(state["length_sums"], dtype=np.float64)

    @property
    def sentences(self) -> int:
        """Sentences averaged (n ≥ min_tokens)."""
        return int(self.length_sentences[self.min_tokens:].sum())

    @property
    def skipped(self) -> int:
        """Sentences left out (fewer than min_tokens tokens with a direction)."""
        return int(self.length_sentences[:self.min_tokens].sum())

    def compute(self) -> list[MetricValue]:
        self.flush()
        if self.sentences == 0:
            return []
        return [MetricValue("token_uniformity", float(self.length_sums[self.min_tokens:].sum()) / self.sentences,
                            self.sentences)]
