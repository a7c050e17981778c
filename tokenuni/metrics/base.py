"""Streaming metric accumulators over the token batches of one layer.

Every metric follows the same protocol::

    metric = SomeMetric(device="cpu", **options)
    for batch in record_batches:      # pyarrow RecordBatch with the token index and a `vector` column
        metric.update(batch)          # (or a TokenBatch already on the device)
    rows = metric.compute()           # list[MetricValue]

Accumulation is in float64 on the metric's device (CUDA when present), so the CPU and GPU paths
agree to float tolerance. Exact metrics keep sufficient statistics only (sums, Gram matrices);
memory does not grow with the number of tokens.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tokenuni.store import vectors


@dataclass
class MetricValue:
    """One row of the tidy metrics table (model, corpus and layer are added by the runner)."""

    metric: str
    value: float
    n: int
    variant: str = ""
    component: int | None = None
    sample_size: int | None = None
    seed: int | None = None


@dataclass
class TokenBatch:
    """Vectors of one layer and their token index, as torch tensors on the metric's device."""

    x: "torch.Tensor"  # (n, d) float64
    sentence_id: "torch.Tensor"  # (n,) int64
    token_id: "torch.Tensor"  # (n,) int64
    special: "torch.Tensor"  # (n,) bool
    frequency: "torch.Tensor"  # (n,) int64
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch, device, vector_column: str = "vector") -> "TokenBatch":
        import torch

        def column(name, dtype):
            return torch.from_numpy(np.array(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)).to(device)

        return cls(
            x=as_tensor(batch.column(vector_column), device),
            sentence_id=column("sentence_id", np.int64),
            token_id=column("token_id", np.int64),
            special=column("special", np.bool_),
            frequency=column("frequency", np.int64),
        )

    def select(self, keep: "torch.Tensor") -> "TokenBatch":
        return TokenBatch(self.x[keep], self.sentence_id[keep], self.token_id[keep], self.special[keep],
                          self.frequency[keep])

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Metric(ABC):
    """Base class: converts batches, drops special tokens unless ``special_tokens`` is true."""

    #: the metric's name in the config and the tree (``tokenuni/metrics/<name>.py``)
    name: str = ""
    #: names of the rows it produces in the tidy table
    produces: tuple[str, ...] = ()

    def __init__(self, device="cpu", special_tokens: bool = False, enabled: bool = True):
        import torch

        self.device = torch.device(device)
        self.special_tokens = special_tokens

    def update(self, batch) -> None:
        if isinstance(batch, pa.RecordBatch):
            batch = TokenBatch.from_record_batch(batch, self.device)
        if not self.special_tokens:
            batch = batch.select(~batch.special)
        if len(batch):
            self._update(batch)

    @abstractmethod
    def _update(self, batch: TokenBatch) -> None: ...

    @abstractmethod
    def compute(self) -> list[MetricValue]: ...


def as_tensor(column: pa.Array, device):
    """A fixed-size-list Arrow column as an (n, d) float64 tensor on ``device``."""
    import torch

    return torch.from_numpy(np.array(vectors(column), dtype=np.float64)).to(device)


def unit_rows(x):
    """Rows scaled to unit norm; zero rows stay zero and are reported by the mask."""
    import torch

    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    nonzero = norms.squeeze(1) > 0
    return x / torch.where(norms > 0, norms, torch.ones_like(norms)), nonzero


def mean_pairwise_cosine(unit_sum_sq, count):
    """Mean cosine over ordered pairs i != j of unit vectors, from ‖Σ x̂‖² and N: (‖Σx̂‖² − N) / (N(N − 1))."""
    return (unit_sum_sq - count) / (count * (count - 1))
