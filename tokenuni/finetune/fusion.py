"""Hierarchical fusion of layer representations, and pooling.

Shi et al., "Revisiting Over-smoothing in BERT from the Perspective of Graph", ICLR 2022
(SCIENCE.md §5) mitigate over-smoothing by fusing the representations of several layers before the
task head, with three fusion kinds. They released no code, so the definitions below are ours:

``concat``  pool each chosen layer (CLS or mean), concatenate the L pooled vectors (B, L·d), then
            Linear(L·d → d) + tanh.
``max``     pool each chosen layer, element-wise max over the L pooled vectors (no parameters).
``gate``    per token, a learned score per layer — one Linear(d → 1) per chosen layer, s_{l,t} =
            w_lᵀ h_{l,t} + b_l — softmax over the layers, the weighted sum Σ_l a_{l,t} h_{l,t} as the
            fused token state, then pooling (CLS or mean) of the fused tokens. The gate weights start
            at zero: the fusion starts as the plain average of the layers, and its gradient is nonzero
            from the first step.

Layers follow ``hidden_states`` indexing (0 = embedding output, −1 = last block, ``"all"`` = every
block output 1…L; :func:`tokenuni.finetune.regularisers.resolve_layers`). The fused vector (B, d) is
the model's pooled representation, fed to the task head.

Pooling: ``cls`` = the state of the sentence token — the first token for encoders (BERT's [CLS];
the raw hidden state, not the HF pooler), the last real token for causal decoders (GPT-2, Llama),
the same rule as sentence pooling (:func:`tokenuni.families.sentence_token_index`) — ``mean`` = the
mean over the real tokens (attention mask 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenuni.families import sentence_token_states

FUSION_KINDS = ("concat", "max", "gate")
POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, sentence_token: str = "first"
         ) -> torch.Tensor:
    """(B, T, d) → (B, d): the sentence token (``cls``: ``sentence_token`` first, or last real token for a
    causal model) or the mean over real tokens (``mean``)."""
    if pooling == "cls":
        return sentence_token_states(hidden, attention_mask, sentence_token)
    if pooling == "mean":
        mask = attention_mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class LayerFusion(torch.nn.Module):
    """Fuse the chosen layers of ``hidden_states`` into one (B, d) representation (module docstring)."""

    def __init__(self, kind: str, layers: Sequence[int], hidden_size: int, pooling: str = "cls",
                 sentence_token: str = "first"):
        super().__init__()
        self.sentence_token = sentence_token
        if kind not in FUSION_KINDS:
            raise ValueError(f"fusion kind must be one of {FUSION_KINDS}, got {kind!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.kind, self.layers, self.pooling = kind, list(layers), pooling
        n = len(self.layers)
        if kind == "concat":
            self.projection = torch.nn.Linear(n * hidden_size, hidden_size)
        elif kind == "gate":
            self.gates = torch.nn.ModuleList(torch.nn.Linear(hidden_size, 1) for _ in range(n))
            for gate in self.gates:
                torch.nn.init.zeros_(gate.weight)
                torch.nn.init.zeros_(gate.bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, layers={self.layers}, pooling={self.pooling}, sentence_token={self.sentence_token}"

    def gate_weights(self, hidden_states, attention_mask=None) -> torch.Tensor:
        """(B, T, L) softmax weights of the chosen layers per token (``gate`` only)."""
        scores = torch.cat([gate(hidden_states[i]) for gate, i in zip(self.gates, self.layers)], dim=-1)
        return scores.softmax(dim=-1)

    def forward(self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "gate":
            weights = self.gate_weights(hidden_states)
            stacked = torch.stack([hidden_states[i] for i in self.layers], dim=-2)  # (B, T, L, d)
            fused = (weights.unsqueeze(-1) * stacked).sum(dim=-2)
            return pool(fused, attention_mask, self.pooling, self.sentence_token)
        pooled = [pool(hidden_states[i], attention_mask, self.pooling, self.sentence_token) for i in self.layers]
        if self.kind == "concat":
            return torch.tanh(self.projection(torch.cat(pooled, dim=-1)))
        return torch.stack(pooled, dim=0).amax(dim=0)
