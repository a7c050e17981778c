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
    #: its config entry ``metrics.oversmoothing`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: >-
          Over-smoothing by depth (Shi et al., ICLR 2022): per sentence, cosine of tokens to the mean token,
          relative distance to it, and [CLS] uniformity (Yan et al., UAI 2022); averaged over sentences.
        properties:
          special_tokens: {type: boolean, default: false}
          min_tokens: {type: integer, minimum: 2, default: 2}
    """
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
        last = int(counts.sum() - counts[-1])
        if last:
            self._sentences(batch.select(slice(0, last)), counts[:-1])
        self.pending = batch.select(slice(last, len(batch)))

    def _sentences(self, tokens: TokenBatch, counts) -> None:
        """Every complete sentence of ``tokens`` (``counts``: their token counts, in order) at once, with segment
        sums; the per-sentence values go into the running sums in sentence order."""
        import torch

        x, device = tokens.x, tokens.x.device
        n_sentences = len(counts)
        sentence = torch.repeat_interleave(torch.arange(n_sentences, device=device), counts)
        starts = torch.cumsum(counts, 0) - counts
        keep = torch.ones(len(tokens), dtype=torch.bool, device=device) if self.special_tokens else ~tokens.special

        def per_sentence(values, mask=None):
            out = values.new_zeros((n_sentences, *values.shape[1:]))
            index = sentence if mask is None else sentence[mask]
            return out.index_add_(0, index, values if mask is None else values[mask])

        norms = torch.linalg.vector_norm(x, dim=1)
        kept = per_sentence(keep.to(x.dtype))
        used = kept >= self.min_tokens
        mean = per_sentence(x, keep) / kept.clamp(min=1).unsqueeze(1)
        mean_norm = torch.linalg.vector_norm(mean, dim=1)
        zero_norms = per_sentence((norms == 0).to(x.dtype), keep)
        cosine = (x * mean[sentence]).sum(dim=1) / (norms * mean_norm[sentence])
        token_mean_cosine = per_sentence(torch.where(keep, cosine, 0.0)) / kept.clamp(min=1)
        norm_sum = per_sentence(norms, keep)
        distance = per_sentence(torch.linalg.vector_norm(x - mean[sentence], dim=1), keep) / norm_sum
        has_cosine = used & (mean_norm > 0) & (zero_norms == 0)
        has_distance = used & (norm_sum > 0)

        # [CLS] uniformity: a sentence's first token, when it is a special token at position 0 (not in decoders)
        first = torch.zeros(len(tokens), dtype=torch.bool, device=device)
        first[starts] = True
        first_is_special = tokens.special[starts]
        if tokens.position is not None:
            first_is_special &= tokens.position[starts] == 0
        if self.metadata.get("is_decoder") == "true":
            first_is_special &= False
        others = ~first & (torch.ones_like(keep) if self.special_tokens else ~tokens.special)
        cls = x[starts]
        cls_norm = norms[starts]
        cls_cosine = (x * cls[sentence]).sum(dim=1) / (norms * cls_norm[sentence])
        n_others = per_sentence(others.to(x.dtype))
        cls_uniformity = per_sentence(torch.where(others, cls_cosine, 0.0)) / n_others.clamp(min=1)
        other_zero_norms = per_sentence((norms == 0).to(x.dtype), others)
        has_cls = used & first_is_special & (n_others > 0) & (cls_norm > 0) & (other_zero_norms == 0)

        self.skipped += int((~used).sum())
        for name, values, valid in (("token_mean_cosine", token_mean_cosine, has_cosine),
                                    ("token_mean_distance", distance, has_distance),
                                    ("cls_uniformity", cls_uniformity, has_cls)):
            for value in values[valid].tolist():
                self.stats[name].add(value)

    def compute(self) -> list[MetricValue]:
        if self.pending is not None:
            self._sentences(self.pending, self.pending.sentence_id.new_tensor([len(self.pending)]))
            self.pending = None
        return [row for name in self.produces for row in self.stats[name].row(name)]


def _fields(batch: TokenBatch):
    return batch.x, batch.sentence_id, batch.token_id, batch.special, batch.frequency, batch.position


class LayerNormScale(Metric):
    """‖γ‖ and ‖β‖ of every layer norm attributed to the layer (rows ``layernorm_gamma_norm`` /
    ``layernorm_beta_norm``, ``variant`` = the norm's module path within its block), and their RMS
    ‖γ‖/√d as ``layernorm_gamma_rms`` (1 for an untrained norm)."""

    name = "layernorm_scale"
    #: its config entry ``metrics.layernorm_scale`` (JSON schema as YAML; :meth:`Metric.config_schema`)
    options_schema = """
        description: Norms of the layer-norm gamma and beta per layer, read from the model (Shi et al., ICLR 2022).
    """
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
