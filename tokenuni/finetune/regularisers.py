"""Isotropy regularisers for fine-tuning: I-STAR (IsoScore*) and the mean-cosine baseline.

I-STAR — Rudman & Eickhoff, "Stable Anisotropic Regularization", ICLR 2024 (SCIENCE.md §4)::

    L = L_task + λ · (1 − IsoScore*(H)),   Σ_ζ = (1 − ζ) · Cov(H) + ζ · C0

H = the real (unpadded) token states of the chosen layers in the batch, stacked as points (several
layers: the union of their token states, as their code does with every layer); Cov the sample
covariance (ddof = 1, as ``torch.cov``); C0 the covariance of a capped token sample (``c0_tokens``
points, default 250 000 as their code) of the same layers, rebuilt without gradient at every
:meth:`IStar.rebuild_c0` (the model calls it from ``start_epoch``). IsoScore* is the IsoScore formula
on the eigenvalues of Σ_ζ, :func:`tokenuni.metrics.isoscore.isoscore_from_covariance_torch` (the one
implementation, shared with the IsoScore metric), computed in float64. λ > 0 pushes toward isotropy,
λ < 0 away (their finding: λ < 0, e.g. −5 with ζ = 0.2, helps most tasks). Deviations from their
code: C0 pools the regularised layers (default: the last) rather than always every layer — pass
``layers: all`` for theirs; ζ weights C0 exactly as their code; the IsoScore uses ``eigvalsh`` of the
symmetric Σ_ζ (their ``svdvals`` gives the same values for a PSD matrix).

Cosine regulariser (baseline): λ · the mean pairwise cosine similarity (i ≠ j) among the batch's real
token states of each chosen layer, averaged over the layers; exact in O(N d) as
(‖Σ x̂_i‖² − N) / (N (N − 1)) for unit vectors x̂ (SCIENCE.md §2).

Layer indices follow ``output.hidden_states``: 0 = embedding output, i = output of block i; negative
indices count from the end (−1 = last block); ``"all"`` = every block output 1…L (the embedding
output excluded; list 0 explicitly to include it).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import torch

from tokenuni.metrics.isoscore import isoscore_from_covariance_torch
from tokenuni.numerics import MomentSums, sample_covariance

log = logging.getLogger(__name__)


def resolve_layers(layers, n_hidden: int) -> list[int]:
    """Indices into a ``hidden_states`` tuple of ``n_hidden`` tensors (see the module docstring)."""
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(1, n_hidden))
    if isinstance(layers, (int,)) and not isinstance(layers, bool):
        layers = [layers]
    if isinstance(layers, str) or not isinstance(layers, Iterable):
        raise ValueError(f"layers must be a list of integers or 'all', got {layers!r}")
    resolved = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise ValueError(f"layers must be integers, got {layer!r}")
        index = layer + n_hidden if layer < 0 else layer
        if not 0 <= index < n_hidden:
            raise ValueError(f"layer {layer} is out of range for {n_hidden} hidden states "
                             f"(0 = embeddings … {n_hidden - 1} = last block)")
        if index in resolved:
            raise ValueError(f"layer {layer} is listed twice (layers {list(layers)})")
        resolved.append(index)
    if not resolved:
        raise ValueError("layers is empty")
    return resolved


def real_token_states(hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor,
                      layers: Sequence[int]) -> list[torch.Tensor]:
    """Per chosen layer, the (N_real, d) states of the real tokens (attention mask 1), in batch order."""
    mask = attention_mask.bool()
    return [hidden_states[i][mask.to(hidden_states[i].device)] for i in layers]


class IStar(torch.nn.Module):
    """λ · (1 − IsoScore*(H)) over the chosen layers; see the module docstring."""

    def __init__(self, lambda_: float, zeta: float = 0.2, layers=(-1,), c0_tokens: int = 250_000):
        super().__init__()
        self.lambda_ = float(lambda_)
        self.zeta = float(zeta)
        if not 0.0 <= self.zeta <= 1.0:
            raise ValueError(f"istar: zeta must be in [0, 1], got {zeta}")
        self.layers_spec = layers
        self.layers: list[int] | None = None  # resolved by bind()
        self.c0_tokens = int(c0_tokens)
        if self.c0_tokens < 2:
            raise ValueError(f"istar: c0_tokens must be at least 2, got {c0_tokens}")
        self.register_buffer("c0", None, persistent=False)
        self.c0_count = 0

    def bind(self, n_hidden: int) -> IStar:
        self.layers = resolve_layers(self.layers_spec, n_hidden)
        return self

    def extra_repr(self) -> str:
        return (f"lambda={self.lambda_}, zeta={self.zeta}, layers={self.layers}, c0_tokens={self.c0_tokens}, "
                f"c0_built={self.c0 is not None} ({self.c0_count} points)")

    @torch.no_grad()
    def rebuild_c0(self, sample_hidden: Callable[[], Iterable]) -> int:
        """C0 ← the covariance (ddof = 1) of up to ``c0_tokens`` real token states of the chosen layers.

        ``sample_hidden()`` yields ``(hidden_states, attention_mask)`` batches; per batch, the same first
        k real tokens are taken from every chosen layer (k limited by the remaining quota), and the
        iteration stops as soon as the cap is reached. Streams N, the mean and the centred scatter in
        float64 (:class:`tokenuni.numerics.MomentSums`; no token matrix is kept). Returns the number of
        points used.
        """
        moments = MomentSums()
        count = 0
        n_layers = len(self.layers)
        for hidden_states, attention_mask in sample_hidden():
            per_layer = real_token_states(hidden_states, attention_mask, self.layers)
            take = min(len(per_layer[0]), (self.c0_tokens - count) // n_layers)
            if take <= 0:
                break
            points = torch.cat([x[:take] for x in per_layer]).double()
            moments.update(points)
            count += len(points)
            if count + n_layers > self.c0_tokens:
                break
        if count < 2:
            raise ValueError(f"istar: sample_hidden() gave {count} token states; C0 needs at least 2")
        self.c0 = moments.covariance(ddof=1)
        self.c0_count = count
        log.info("I-STAR: rebuilt C0 from %d token states of layers %s", count, self.layers)
        return count

    def shrunk_covariance(self, points: torch.Tensor) -> torch.Tensor:
        """Σ_ζ = (1 − ζ) Cov(points) + ζ C0, in float64 (differentiable in ``points``)."""
        covariance = sample_covariance(points.double())
        if self.zeta == 0.0:
            return covariance
        if self.c0 is None:
            raise RuntimeError("istar: C0 is not built; call GlueModel.start_epoch(sample_hidden) before training "
                               f"(zeta = {self.zeta} shrinks toward C0)")
        return (1.0 - self.zeta) * covariance + self.zeta * self.c0.to(device=covariance.device, dtype=torch.float64)

    def isoscore_star(self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """IsoScore* of the batch's real token states of the chosen layers (a float64 scalar, differentiable)."""
        points = torch.cat(real_token_states(hidden_states, attention_mask, self.layers))
        if len(points) < 2:
            raise ValueError("istar: a batch needs at least 2 real token states")
        return isoscore_from_covariance_torch(self.shrunk_covariance(points))

    def forward(self, hidden_states, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ · (1 − IsoScore*), IsoScore*), both scalars in the hidden states' dtype."""
        score = self.isoscore_star(hidden_states, attention_mask)
        dtype = hidden_states[-1].dtype
        return (self.lambda_ * (1.0 - score)).to(dtype), score.detach().to(dtype)


def mean_pairwise_cosine(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs i ≠ j of the rows of ``x`` (N ≥ 2), exact in O(N d)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError("mean pairwise cosine needs at least 2 vectors")
    unit = torch.nn.functional.normalize(x, dim=-1)
    total = unit.sum(dim=0)
    return (total @ total - (unit * unit).sum()) / (n * (n - 1))


class CosineRegulariser(torch.nn.Module):
    """λ · mean pairwise cosine of the batch's real token states, averaged over the chosen layers."""

    def __init__(self, lambda_: float, layers=(-1,)):
        super().__init__()
        self.lambda_ = float(lambda_)
        self.layers_spec = layers
        self.layers: list[int] | None = None

    def bind(self, n_hidden: int) -> CosineRegulariser:
        self.layers = resolve_layers(self.layers_spec, n_hidden)
        return self

    def extra_repr(self) -> str:
        return f"lambda={self.lambda_}, layers={self.layers}"

    def forward(self, hidden_states, attention_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """(λ · mean cosine, mean cosine)."""
        per_layer = real_token_states(hidden_states, attention_mask, self.layers)
        cosine = torch.stack([mean_pairwise_cosine(x) for x in per_layer]).mean()
        return self.lambda_ * cosine, cosine.detach()
