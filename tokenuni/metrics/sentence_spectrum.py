"""Per-sentence singular-value spectra of a layer, aggregated over sentences.

Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via Singular Value Transformation",
UAI 2022 (tokenUni): for every sentence s, the singular values σ_1 ≥ … ≥ σ_r (r = min(n_s, d)) of its
n_s × d matrix of token states, normalised by the largest, σ̃_k = σ_k / σ_1. Token uniformity shows as
a skewed distribution: one large value, many tiny ones. Rows (mean over sentences; ``spread`` = the
standard deviation across sentences, ddof = 1):

* ``sentence_singular_value_skewness``: the population skewness m₃ / m₂^{3/2} of σ̃_1…σ̃_r
  (:func:`tokenuni.numerics.skewness_rows`, as ``scipy.stats.skew``; 0 for a spectrum constant up to
  rounding, where scipy returns nan; always 0 for a two-token sentence);
* ``sentence_top_singular_fraction``: σ_1² / Σ_k σ_k², the share of the sentence's energy
  (uncentred) in its first direction;
* ``sentence_singular_value`` (component = k, 0-based, k < ``max_rank``): the mean of σ̃_k; a
  sentence with r ≤ k has σ̃_k = 0 (its matrix has no k-th direction), so every row averages all
  sentences;
* ``sentence_spectrum_skipped``: the number of sentences left out because they have fewer than
  ``min_tokens`` tokens (after dropping special tokens) or only zero vectors (``n`` = all sentences seen).

Exact: each sentence's spectrum comes from ``torch.linalg.svdvals`` of its own tokens (sentences are
zero-padded to a common length within a batch for one batched SVD: zero rows add only zero singular
values, which are dropped). Unlike the paper's code (a truncated SVD that drops the smallest singular
value and keeps the padding tokens), this is the exact spectrum of the real tokens, padding excluded.

Streaming: dumps keep a sentence's tokens contiguous; a sentence that continues into the next batch is
carried over (only one partial sentence is ever held); per-sentence results are folded into sums
and sums of squares, so memory does not grow with the corpus.
"""
from __future__ import annotations

import math

from tokenuni.metrics.base import Metric, MetricValue, TokenBatch
from tokenuni.metrics.rows import LOW, Row
from tokenuni.numerics import skewness_rows


class SentenceSpectrum(Metric):
    name = "sentence_spectrum"
    #: its config entry ``metrics.sentence_spectrum`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          Exact singular values of each sentence's token matrix, normalised by the largest, aggregated over sentences
          (Yan, Gui, Li, He, "Addressing Token Uniformity in Transformers via Singular Value Transformation", UAI 2022).
          Rows sentence_singular_value_skewness, sentence_top_singular_fraction, sentence_singular_value (component =
          rank) with spread = std across sentences, and sentence_spectrum_skipped.
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens."}
          min_tokens:
            type: integer
            minimum: 1
            default: 2
            description: Sentences with fewer tokens are skipped (and counted in sentence_spectrum_skipped).
          max_rank:
            type: integer
            minimum: 0
            default: 32
            description: Report the mean normalised singular value at ranks 0 .. max_rank - 1 (zero beyond a sentence's rank).
    """
    rows = (
        Row("sentence_singular_value_skewness", "skewness of a sentence's normalised singular values", isotropic=LOW),
        Row("sentence_top_singular_fraction", "σ₁² / Σσ² per sentence", isotropic=LOW),
        Row("sentence_singular_value", "a sentence's normalised singular value", component=True),
        Row("sentence_spectrum_skipped", "sentences skipped by the sentence spectrum", unit="sentences",
            diagnostic=True),
    )

    def __init__(self, device="cpu", min_tokens: int = 2, max_rank: int = 32, **options):
        super().__init__(device, **options)
        self.min_tokens = max(int(min_tokens), 1)
        self.max_rank = max(int(max_rank), 0)
        self.sentences = 0
        self.skipped = 0
        # sums and sums of squares over sentences (float64 on the device)
        self.skew_sums = None  # (2,): Σ skew, Σ skew²
        self.top_sums = None  # (2,): Σ top fraction, Σ top fraction²
        self.rank_sums = None  # (max_rank,)
        self.rank_squares = None  # (max_rank,)
        self.pending = None  # (sentence_id, token rows) of a sentence that may continue in the next batch

    def _ensure_sums(self, like) -> None:
        if self.skew_sums is None:
            self.skew_sums = like.new_zeros(2)
            self.top_sums = like.new_zeros(2)
            self.rank_sums = like.new_zeros(self.max_rank)
            self.rank_squares = like.new_zeros(self.max_rank)

    def _finish(self, sentences: list) -> None:
        """Fold the spectra of complete sentences (a list of (n_s, d) tensors) into the sums."""
        import torch

        kept = [x for x in sentences if x.shape[0] >= self.min_tokens]
        self.skipped += len(sentences) - len(kept)
        if not kept:
            return
        self._ensure_sums(kept[0])
        d = kept[0].shape[1]
        longest = max(x.shape[0] for x in kept)
        padded = kept[0].new_zeros((len(kept), longest, d))
        for i, x in enumerate(kept):
            padded[i, :x.shape[0]] = x
        values = torch.linalg.svdvals(padded)  # (k, min(longest, d)), descending
        ranks = torch.tensor([min(x.shape[0], d) for x in kept], device=values.device)
        valid = torch.arange(values.shape[1], device=values.device)[None, :] < ranks[:, None]
        values = torch.where(valid, values, torch.zeros_like(values))  # drop padding's zero singular values
        top = values[:, 0]
        nonzero = top > 0
        self.skipped += int((~nonzero).sum())
        values, valid, top = values[nonzero], valid[nonzero], top[nonzero]
        if len(values) == 0:
            return
        normalised = values / top[:, None]
        skew = skewness_rows(normalised, valid)  # 0 where the spread is at rounding level (scipy: nan)
        top_fraction = 1.0 / (normalised ** 2).sum(dim=1)  # σ₁² / Σσ² = 1 / Σ σ̃²
        self.skew_sums += torch.stack([skew.sum(), (skew ** 2).sum()])
        self.top_sums += torch.stack([top_fraction.sum(), (top_fraction ** 2).sum()])
        k = min(self.max_rank, normalised.shape[1])
        self.rank_sums[:k] += normalised[:, :k].sum(dim=0)
        self.rank_squares[:k] += (normalised[:, :k] ** 2).sum(dim=0)
        self.sentences += len(values)

    def _update(self, batch: TokenBatch) -> None:
        import torch

        groups, counts = torch.unique_consecutive(batch.sentence_id, return_counts=True)
        groups, counts = groups.tolist(), counts.tolist()
        parts = list(torch.split(batch.x, counts))
        complete = []
        if self.pending is not None:
            pending_id, pending_x = self.pending
            if groups[0] == pending_id:
                parts[0] = torch.cat([pending_x, parts[0]])
            else:
                complete.append(pending_x)
        complete += parts[:-1]
        self.pending = (groups[-1], parts[-1].clone())
        self._finish(complete)

    def compute(self) -> list[MetricValue]:
        if self.pending is not None:
            self._finish([self.pending[1]])
            self.pending = None
        seen = self.sentences + self.skipped
        rows = [MetricValue("sentence_spectrum_skipped", float(self.skipped), seen)] if seen else []
        n = self.sentences
        if n == 0:
            return rows

        def mean_spread(total, squares):
            mean = total / n
            if n < 2:
                return mean, None
            variance = max(squares - n * mean * mean, 0.0) / (n - 1)
            return mean, math.sqrt(variance)

        sums_of = {"sentence_singular_value_skewness": self.skew_sums, "sentence_top_singular_fraction": self.top_sums}
        for metric, sums in sums_of.items():
            value, spread = mean_spread(*sums.cpu().tolist())
            rows.append(MetricValue(metric, value, n, spread=spread))
        for k, (total, squares) in enumerate(zip(self.rank_sums.cpu().tolist(), self.rank_squares.cpu().tolist())):
            value, spread = mean_spread(total, squares)
            rows.append(MetricValue("sentence_singular_value", value, n, component=k, spread=spread))
        return rows
