"""Over-smoothing by depth: how alike the tokens of one sentence become, and the layer-norm scale.

Shi, Gao, Ren, Xu, Liang, Li, Kwok, "Revisiting Over-smoothing in BERT from the Perspective of
Graph", ICLR 2022: with a large enough layer-norm scale, stacked self-attention layers drive a
sentence's token representations toward a low-rank subspace — in the limit all tokens equal their
mean. Per sentence s with real tokens h_1..h_n and mean token h̄ = (1/n) Σ h_i:

* ``token_mean_cosine``    (1/n) Σ_i cos(h_i, h̄)            → 1 when the sentence is smoothed;
* ``token_mean_distance``  (Σ_i ‖h_i − h̄‖) / (Σ_i ‖h_i‖)      → 0 when smoothed (scale-free);
* ``cls_uniformity``       (1/(n−1)) Σ_{i>0} cos(h_0, h_i), h_0 the sentence's first token when it is
  a special token ([CLS] / <s>) — Yan et al., UAI 2022 ("[CLS] uniformity"; BERT-base on MRPC:
  0.05 / 0.40 / 0.80 at layers 0 / 7 / 12). Other special tokens are excluded unless
  ``special_tokens`` is true. Not for causal decoders (dump metadata ``is_decoder``): a BOS token
  sees only itself, so its state is the same in every sentence and summarises none (see
  :mod:`tokenuni.families`).

Each is averaged over sentences with at least ``min_tokens`` real tokens (``n`` = sentences used;
``spread`` = standard deviation across sentences). The mean pairwise cosine among a sentence's
tokens is :mod:`tokenuni.metrics.token_uniformity`.

:class:`LayerNormScale` reports the norm of every layer-norm γ (and β) attributed to the layer, read
from the model when the dump was written (dump metadata ``layernorm``, see
:func:`tokenuni.embed.layernorm_scales`); it needs no pass over the tokens.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from tokenuni.metrics.base import Metric, MetricError, MetricValue, TokenBatch
from tokenuni.metrics.rows import LOW, Row


class _Running:
    """Sum and sum of squares of per-sentence values (mean and spread without keeping them)."""

    def __init__(self):
        self.n, self.total, self.total_sq = 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.total_sq += value * value

    def row(self, name: str) -> list[MetricValue]:
        if self.n == 0:
            return []
        mean = self.total / self.n
        spread = float(np.sqrt(max(self.total_sq / self.n - mean * mean, 0.0)))
        return [MetricValue(name, mean, self.n, spread=spread)]


class Oversmoothing(Metric):
    name = "oversmoothing"
    rows = (
        Row("token_mean_cosine", "cosine of tokens to their sentence's mean token",
            title="cosine of tokens to their sentence mean"),
        Row("token_mean_distance", "relative distance to the sentence's mean token",
            title="relative distance to the sentence mean"),
        Row("cls_uniformity", "[CLS] uniformity (cosine of [CLS] to the tokens)", isotropic=LOW),
    )

    def __init__(self, device="cpu", min_tokens: int = 2, special_tokens: bool = False, **options):
        super().__init__(device, special_tokens=special_tokens, **options)
        self.min_tokens = max(int(min_tokens), 2)
        self.stats = {name: _Running() for name in self.produces}
        self.skipped = 0
        self.pending: TokenBatch | None = None  # the last sentence seen, which may continue

    def token_set(self) -> str:
        return "all"  # the first special token is the [CLS] of cls_uniformity

    def update(self, batch) -> None:
        # keep special tokens here: the first one is the [CLS] of cls_uniformity
        if isinstance(batch, pa.RecordBatch):
            batch = TokenBatch.from_record_batch(batch, self.device)
        if len(batch):
            self._check_finite(batch)  # the [CLS] too: it is read by cls_uniformity
            self._update(batch)

    def _update(self, batch: TokenBatch) -> None:
        import torch

        if self.pending is not None:
            batch = TokenBatch(*(torch.cat([a, b]) if a is not None else None
                                 for a, b in zip(_fields(self.pending), _fields(batch))))
        ids = batch.sentence_id
        _, counts = torch.unique_consecutive(ids, return_counts=True)
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        counts = counts.tolist()
        for start, count in zip(starts[:-1], counts[:-1]):
            self._sentence(batch.select(slice(start, start + count)))
        self.pending = batch.select(slice(starts[-1], starts[-1] + counts[-1]))

    def _sentence(self, tokens: TokenBatch) -> None:
        import torch

        first_is_special = bool(tokens.special[0]) and (tokens.position is None or int(tokens.position[0]) == 0) \
            and self.metadata.get("is_decoder") != "true"
        keep = torch.ones(len(tokens), dtype=torch.bool, device=tokens.x.device) if self.special_tokens \
            else ~tokens.special
        x = tokens.x[keep]
        if len(x) < self.min_tokens:
            self.skipped += 1
            return
        norms = torch.linalg.vector_norm(x, dim=1)
        mean = x.mean(dim=0)
        mean_norm = torch.linalg.vector_norm(mean)
        if mean_norm > 0 and bool((norms > 0).all()):
            self.stats["token_mean_cosine"].add(float(((x @ mean) / (norms * mean_norm)).mean()))
        if float(norms.sum()) > 0:
            distance = torch.linalg.vector_norm(x - mean, dim=1).sum() / norms.sum()
            self.stats["token_mean_distance"].add(float(distance))
        if first_is_special:
            cls = tokens.x[0]
            others = tokens.x[1:][~tokens.special[1:]] if not self.special_tokens else tokens.x[1:]
            cls_norm = torch.linalg.vector_norm(cls)
            other_norms = torch.linalg.vector_norm(others, dim=1)
            if len(others) and cls_norm > 0 and bool((other_norms > 0).all()):
                self.stats["cls_uniformity"].add(float(((others @ cls) / (other_norms * cls_norm)).mean()))

    def compute(self) -> list[MetricValue]:
        if self.pending is not None:
            self._sentence(self.pending)
            self.pending = None
        return [row for name in self.produces for row in self.stats[name].row(name)]


def _fields(batch: TokenBatch):
    return batch.x, batch.sentence_id, batch.token_id, batch.special, batch.frequency, batch.position


class LayerNormScale(Metric):
    """‖γ‖ and ‖β‖ of every layer norm attributed to the layer (rows ``layernorm_gamma_norm`` /
    ``layernorm_beta_norm``, ``variant`` = the norm's module path within its block), and their RMS
    ‖γ‖/√d as ``layernorm_gamma_rms`` (1 for an untrained norm)."""

    name = "layernorm_scale"
    rows = (  # one value per layer norm of the block: variant = its place
        Row("layernorm_gamma_norm", "layer-norm ‖γ‖", headline_variant="*"),
        Row("layernorm_gamma_rms", "layer-norm ‖γ‖ / √d", title="layer-norm scale ‖γ‖ / √d", headline_variant="*"),
        Row("layernorm_beta_norm", "layer-norm ‖β‖", headline_variant="*"),
    )
    passes = 0  # read from the dump's metadata, no pass over the tokens

    def stream(self, batch: TokenBatch, stage: str) -> None:
        """Nothing per batch: read from the dump's metadata."""

    def _update(self, batch: TokenBatch) -> None:  # pragma: no cover - never streamed
        pass

    def compute(self) -> list[MetricValue]:
        raw = self.metadata.get("layernorm")
        if raw is None:
            raise MetricError(f"dump of model {self.metadata.get('model_id', '?')} has no layer-norm metadata "
                              "(written by an older tokenuni): rerun its embed job (snakemake --forcerun embed)")
        rows = []
        for norm in json.loads(raw):
            shared = norm["layer"] == -1 and (self.layer or 0) > 0  # shared across blocks (ALBERT)
            if norm["layer"] != self.layer and not shared:
                continue
            size = int(norm["size"])
            rows.append(MetricValue("layernorm_gamma_norm", norm["gamma_norm"], size, norm["module"]))
            rows.append(MetricValue("layernorm_gamma_rms", norm["gamma_norm"] / np.sqrt(size), size, norm["module"]))
            rows.append(MetricValue("layernorm_beta_norm", norm["beta_norm"], size, norm["module"]))
        return rows
