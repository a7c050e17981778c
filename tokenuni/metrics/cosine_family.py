"""The cosine family: average cosine, intra-type and inter-type cosine similarity, uncentred and centred.

Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds", ICLR 2021
(S_inter, S_intra; public code: github.com/TideDancer/iclr21_isotropy_contxt, analysis.py); Ethayarajh,
"How Contextual are Contextualized Word Representations? Comparing the Geometry of BERT, ELMo, and GPT-2
Embeddings", EMNLP 2019 (average cosine between random words; self-similarity of a word's instances).

A *type* is a tokenizer id (``token_id``); its *instances* are its occurrences in the corpus. With unit
vectors x̂_i = x_i / ‖x_i‖ (zero vectors have no direction and are skipped), per type t the accumulator
keeps S_t = Σ_{i ∈ t} x̂_i and n_t; everything below is exact from these sums:

* ``avg_cosine``: mean cosine over ordered pairs of distinct tokens, (‖Σ_t S_t‖² − N) / (N(N − 1));
  ``n`` = N tokens.
* ``s_intra``: S_intra = mean over types with n_t ≥ 2 of the mean cosine among the type's instances,
  (‖S_t‖² − n_t) / (n_t(n_t − 1)); ``n`` = number of such types. Cai et al.'s code estimates each type
  from at most 1000 randomly drawn instances; here every instance counts (exact).
* ``s_inter``: S_inter = E_{t ≠ u}[cos(instance of t, instance of u)], the mean cosine between instances
  of *different* types with every type weighted alike (SCIENCE.md §3). Cai et al.'s code draws one
  random instance per type (``--maxl 1``) and averages the cosines among those draws over pairs of
  distinct types. ``type_sampling``:

  - ``"exact"`` (default): the expectation of that estimator over the random draw, computed exactly.
    With m_t = S_t / n_t (the centroid of the type's *unit* vectors, not of its raw vectors),
    E[cos(draw_t, draw_u)] = m_t · m_u, so S_inter = (‖Σ_t m_t‖² − Σ_t ‖m_t‖²) / (T(T − 1)) over the
    T types seen. Note this is the dot product of unit-vector centroids, not the cosine between type
    centroids (cos(m_t, m_u) is larger, since ‖m_t‖ ≤ 1, and is not what either the paper or its code
    measures). ``n`` = T.
  - ``"one_per_type"`` (Cai's protocol): per type the one instance with the smallest seeded
    :func:`~tokenuni.numerics.token_hash` of (sentence_id, position), a uniform random choice that is
    streaming and batching-independent; S_inter = the mean pairwise cosine of those T vectors.
    ``value`` is the draw for ``seed``; ``spread`` = standard deviation (ddof = 1) of the value over
    ``repeats`` draws with seeds ``seed, seed + 1, …`` (``repeats`` = 1: no spread); ``sample_size`` =
    the number of types used, ``seed`` recorded.

``variant``: ``"uncentred"`` (the raw vectors, as the papers' headline numbers) and ``"centred"``
(x − μ with μ the mean of all the layer's tokens, then normalised). The centred unit sums need μ before
normalising, so with ``"centred"`` among ``variants`` the metric takes two passes: pass 0 accumulates μ
and the uncentred sums, pass 1 the centred ones. Cai's code centres S_inter by the mean of the drawn
instances (one per type) rather than of all tokens; we centre every row by the layer's token mean.

Memory: per variant one (T × d) float64 matrix of unit-vector sums, plus, for ``"one_per_type"``,
``repeats`` (T × d) matrices of drawn vectors, where T is the number of distinct types seen (rows are
allocated on demand, doubling, so at most 2T), and an int64 lookup token_id → row as long as the largest
id seen — bounded by the vocabulary size × d, never by the number of tokens (BERT-base: 30522 × 768 × 8
bytes ≈ 188 MB per matrix at most; a 60-sentence corpus uses a few hundred rows).
"""
from __future__ import annotations

import numpy as np

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch, mean_pairwise_cosine, unit_rows
from tokenuni.metrics.rows import LOW, Row
from tokenuni.numerics import token_hash

VARIANTS = ("uncentred", "centred")
TYPE_SAMPLING = ("exact", "one_per_type")
_NO_HASH = (1 << 63) - 1  # larger than every token hash: "no instance drawn yet"


class CosineFamily(Metric):
    name = "cosine_family"
    #: its config entry ``metrics.cosine_family`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >
          Exact average cosine, intra-type (S_intra) and inter-type (S_inter) cosine similarity, uncentred and
          centred (Cai, Huang, Bian, Church, "Isotropy in the Contextual Embedding Space: Clusters and Manifolds",
          ICLR 2021; Ethayarajh, EMNLP 2019). Two passes over the dump when "centred" is requested.
        properties:
          special_tokens: {type: boolean, default: false, description: "Include [CLS]/[SEP]-like tokens (as types of their own)."}
          variants:
            $ref: "#/$defs/centring_variants"
            default: [uncentred, centred]
            description: Centred = x minus the layer's token mean before normalising (needs a second pass).
          type_sampling:
            enum: [exact, one_per_type]
            default: exact
            description: >
              S_inter from every instance (exact expectation over Cai's random draw, types weighted alike) or
              Cai's protocol (one seeded random instance per type; seed and number of types recorded, spread =
              std over `repeats` seeds).
          seed:
            type: integer
            default: 0
            description: Seed of the per-type draw (type_sampling one_per_type).
          repeats:
            type: integer
            minimum: 1
            default: 5
            description: Draws with seeds seed, seed+1, ... whose standard deviation is the spread (one_per_type).
    """
    rows = (
        Row("avg_cosine", "average cosine similarity", title="average cosine (anisotropy)",
            noun="the average cosine similarity", headline_variant="uncentred", isotropic=LOW),
        Row("s_intra", "S_intra (cosine among instances of a word type)", title="S_intra (same word type)",
            headline_variant="uncentred"),
        Row("s_inter", "S_inter (cosine across word types)", title="S_inter (different word types)",
            headline_variant="uncentred", isotropic=LOW),
    )

    def __init__(self, device="cpu", variants=VARIANTS, type_sampling: str = "exact", seed: int = 0,
                 repeats: int = 5, **options):
        super().__init__(device, **options)
        self.variants = tuple(variants)
        unknown = set(self.variants) - set(VARIANTS)
        if not self.variants or unknown:
            raise MetricError(f"cosine_family: variants must be a non-empty subset of {VARIANTS}, got {variants!r}")
        if type_sampling not in TYPE_SAMPLING:
            raise MetricError(f"cosine_family: type_sampling must be one of {TYPE_SAMPLING}, got {type_sampling!r}")
        if int(repeats) < 1:
            raise MetricError("cosine_family: repeats must be >= 1")
        self.type_sampling = type_sampling
        self.seed = int(seed)
        self.repeats = int(repeats)
        self.passes = 2 if "centred" in self.variants else 1
        self.slot_of_token = None  # token_id -> row of the per-type matrices (-1: not seen)
        self.types = 0  # distinct types seen (rows in use)
        self.capacity = 0  # rows allocated
        self.unit_sums: dict = {}  # variant -> (capacity, d) sums of unit vectors per type
        self.counts: dict = {}  # variant -> (capacity,) instances per type with a direction
        self.vector_sum = None  # Σx over every token, for μ
        self.tokens = 0
        self.mean = None
        self.drawn_hash = None  # (repeats, capacity) smallest hash per type so far
        self.drawn_vector = None  # (repeats, capacity, d) the raw vector of that instance

    # -- per-type storage -------------------------------------------------------------------------
    def _allocate(self, d: int, dtype) -> None:
        import torch

        capacity, device = 64, self.device
        self.capacity = capacity
        self.slot_of_token = torch.full((0,), -1, dtype=torch.int64, device=device)
        self.unit_sums = {v: torch.zeros((capacity, d), dtype=dtype, device=device) for v in self.variants}
        self.counts = {v: torch.zeros(capacity, dtype=torch.int64, device=device) for v in self.variants}
        self.vector_sum = torch.zeros(d, dtype=dtype, device=device)
        if self.type_sampling == "one_per_type":
            self.drawn_hash = torch.full((self.repeats, capacity), _NO_HASH, dtype=torch.int64, device=device)
            self.drawn_vector = torch.zeros((self.repeats, capacity, d), dtype=dtype, device=device)

    def _grow(self, needed: int) -> None:
        import torch

        capacity = self.capacity
        if needed <= capacity:
            return
        new = max(needed, 2 * capacity)

        def pad(t, dim, fill):
            shape = list(t.shape)
            shape[dim] = new - capacity
            return torch.cat([t, torch.full(shape, fill, dtype=t.dtype, device=t.device)], dim=dim)

        self.unit_sums = {v: pad(t, 0, 0) for v, t in self.unit_sums.items()}
        self.counts = {v: pad(t, 0, 0) for v, t in self.counts.items()}
        if self.drawn_hash is not None:
            self.drawn_hash = pad(self.drawn_hash, 1, _NO_HASH)
            self.drawn_vector = pad(self.drawn_vector, 1, 0)
        self.capacity = new

    def _slots(self, token_id):
        """Row of each token's type, adding rows for types not seen before."""
        import torch

        largest = int(token_id.max())
        if largest >= len(self.slot_of_token):
            size = max(largest + 1, 2 * len(self.slot_of_token))
            extra = torch.full((size - len(self.slot_of_token),), -1, dtype=torch.int64, device=token_id.device)
            self.slot_of_token = torch.cat([self.slot_of_token, extra])
        present = torch.unique(token_id)
        new = present[self.slot_of_token[present] < 0]
        if len(new):
            self.slot_of_token[new] = torch.arange(self.types, self.types + len(new), device=token_id.device)
            self.types += len(new)
            self._grow(self.types)
        return self.slot_of_token[token_id]

    # -- streaming --------------------------------------------------------------------------------
    def begin_pass(self, index: int) -> None:
        super().begin_pass(index)
        if index == 1 and self.tokens:
            self.mean = self.vector_sum / self.tokens

    def _add_unit_sums(self, variant: str, vectors, slots) -> None:
        unit, nonzero = unit_rows(vectors)
        self.unit_sums[variant].index_add_(0, slots[nonzero], unit[nonzero])
        self.counts[variant].index_add_(0, slots[nonzero], nonzero[nonzero].to(self.counts[variant].dtype))

    def _draw(self, batch: TokenBatch, slots) -> None:
        """Keep, per type and repeat, the instance with the smallest seeded hash of (sentence, position)."""
        positions = batch.positions()
        for r in range(self.repeats):
            keys = token_hash(self.seed + r, batch.sentence_id, positions)
            batch_best = self.drawn_hash[r].clone().scatter_reduce_(0, slots, keys, reduce="amin")
            winners = (keys == batch_best[slots]) & (keys < self.drawn_hash[r][slots])
            self.drawn_hash[r][slots[winners]] = keys[winners]
            self.drawn_vector[r][slots[winners]] = batch.x[winners]

    def _update(self, batch: TokenBatch) -> None:
        if self.slot_of_token is None:
            self._allocate(batch.x.shape[1], batch.x.dtype)
        slots = self._slots(batch.token_id)
        if self.pass_index == 0:
            self.vector_sum += batch.x.sum(dim=0)
            self.tokens += len(batch)
            if "uncentred" in self.variants:
                self._add_unit_sums("uncentred", batch.x, slots)
            if self.drawn_hash is not None:
                self._draw(batch, slots)
        elif self.pass_index == 1 and "centred" in self.variants:
            if self.mean is None:
                self.mean = self.vector_sum / self.tokens
            self._add_unit_sums("centred", batch.x - self.mean, slots)

    # -- the one-pass suite ---------------------------------------------------------------------------
    def needs_moments_first(self) -> bool:
        return "centred" in self.variants

    def prime(self, moments) -> None:
        """μ from the layer's moments: the centred unit sums can then be formed in the same read."""
        self.mean = moments.mean()

    def stream(self, batch: TokenBatch, stage: str) -> None:
        self.pass_index = 0 if stage == "data" else 1
        self._update(batch)

    # -- results ----------------------------------------------------------------------------------
    def _sampled_s_inter(self, variant: str) -> tuple[float, float | None, int] | None:
        values, used = [], 0
        for r in range(self.repeats):
            drawn = self.drawn_hash[r][:self.types] < _NO_HASH
            vectors = self.drawn_vector[r][:self.types][drawn]
            if variant == "centred":
                vectors = vectors - self.vector_sum / self.tokens
            unit, nonzero = unit_rows(vectors)
            count = int(nonzero.sum())
            if count < 2:
                return None
            total = unit[nonzero].sum(dim=0)
            values.append(mean_pairwise_cosine(float(total @ total), count))
            if r == 0:
                used = count
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else None
        return values[0], spread, used

    def compute(self) -> list[MetricValue]:
        rows = []
        if not self.tokens:
            return rows
        for variant in self.variants:
            sums = self.unit_sums[variant][:self.types]
            counts = self.counts[variant][:self.types]
            instances = int(counts.sum())
            if instances < 2:
                continue  # e.g. the centred pass was never run, or every vector is zero
            total = sums.sum(dim=0)
            rows.append(MetricValue("avg_cosine", mean_pairwise_cosine(float(total @ total), instances), instances, variant))
            squared = (sums * sums).sum(dim=1)
            repeated = counts >= 2
            if bool(repeated.any()):
                n_t = counts[repeated].to(sums.dtype)
                per_type = (squared[repeated] - n_t) / (n_t * (n_t - 1))
                rows.append(MetricValue("s_intra", float(per_type.mean()), int(repeated.sum()), variant))
            if self.type_sampling == "exact":
                seen = counts >= 1
                n_types = int(seen.sum())
                if n_types >= 2:
                    centroids = sums[seen] / counts[seen].unsqueeze(1).to(sums.dtype)
                    centroid_sum = centroids.sum(dim=0)
                    value = (float(centroid_sum @ centroid_sum) - float((centroids * centroids).sum())) / (
                        n_types * (n_types - 1))
                    rows.append(MetricValue("s_inter", value, n_types, variant))
            else:
                sampled = self._sampled_s_inter(variant)
                if sampled is not None:
                    value, spread, used = sampled
                    rows.append(MetricValue("s_inter", value, used, variant, sample_size=used, seed=self.seed,
                                            spread=spread))
        return rows
