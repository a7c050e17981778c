"""Streaming metric accumulators over the token batches of one layer.

Every metric follows the same protocol::

    metric = SomeMetric(device="cpu", **options)
    metric.bind(layer=3, metadata=dump.metadata)   # optional: the layer and the dump's metadata
    for p in range(metric.passes):                 # most metrics need one pass, a few two
        metric.begin_pass(p)
        for batch in record_batches:  # pyarrow RecordBatch with the token index and a `vector` column
            metric.update(batch)      # (or a TokenBatch already on the device)
    rows = metric.compute()           # list[MetricValue]

Sampled metrics draw their sample with :class:`ReservoirSample`: a token is kept when its seeded hash
of (sentence_id, position) is among the smallest, so the sample is the same whatever the batching,
the same tokens for every layer, and reproducible from the seed.

Accumulation is in float64 on the metric's device (CUDA when present), so the CPU and GPU paths
agree to float tolerance. Exact metrics keep sufficient statistics only (sums, Gram matrices);
memory does not grow with the number of tokens.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tokenuni.errors import TokenuniError
from tokenuni.store import vectors


class MetricError(TokenuniError, ValueError):
    """A metric asked for with options it cannot take, or fed a dump it cannot use."""


_WARNED: set = set()


def new_job_warnings() -> None:
    """Forget the warnings :func:`warn_once` gave: a new job (one metric over one dump) starts."""
    _WARNED.clear()


def warn_once(logger, key: tuple, message: str, *args) -> None:
    """Log ``message`` as a warning the first time ``key`` comes up in this process: a job runs one accumulator
    per layer, and an option lowered to what the data allows (the same sample in every layer) is said once."""
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning(message, *args)


def used_sample_size(metric: "Metric", sample: "ReservoirSample", logger) -> int:
    """The sample size a sampled metric actually used (``sample_size``, or every token when the layer has
    fewer), with a warning once per job when it is lower; tables record this value."""
    used = len(sample)
    if 0 < used < sample.size:
        warn_once(logger, (metric.name, "sample_size", sample.size, used),
                  "%s: sample_size %d lowered to %d, the number of tokens in the dump%s (every one is in the "
                  "sample); the table records %d", metric.name, sample.size, used,
                  "" if metric.special_tokens else " without special tokens", used)
    return used if used else sample.size


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
    #: uncertainty of a sampled value: standard deviation over repeated seeds / bootstrap resamples
    spread: float | None = None


@dataclass
class TokenBatch:
    """Vectors of one layer and their token index, as torch tensors on the metric's device."""

    x: "torch.Tensor"  # (n, d) float64
    sentence_id: "torch.Tensor"  # (n,) int64
    token_id: "torch.Tensor"  # (n,) int64
    special: "torch.Tensor"  # (n,) bool
    frequency: "torch.Tensor"  # (n,) int64
    position: "torch.Tensor | None" = None  # (n,) int64, token position within its sentence

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
            position=column("position", np.int64) if "position" in batch.schema.names else None,
        )

    def select(self, keep: "torch.Tensor") -> "TokenBatch":
        return TokenBatch(self.x[keep], self.sentence_id[keep], self.token_id[keep], self.special[keep],
                          self.frequency[keep], None if self.position is None else self.position[keep])

    def positions(self) -> "torch.Tensor":
        """Token positions; when the batch has none, the running index within each sentence of this batch."""
        if self.position is not None:
            return self.position
        import torch

        _, counts = torch.unique_consecutive(self.sentence_id, return_counts=True)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return torch.arange(len(self.sentence_id), device=self.sentence_id.device) - starts

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Metric(ABC):
    """Base class: converts batches, drops special tokens unless ``special_tokens`` is true."""

    #: the metric's name in the config and the tree (``tokenuni/metrics/<name>.py``)
    name: str = ""
    #: names of the rows it produces in the tidy table
    produces: tuple[str, ...] = ()
    #: those of them that are vector-valued (one row per ``component``: singular values, silhouette per k)
    vector_rows: tuple[str, ...] = ()
    #: how many times the runner streams the dump through :meth:`update` (2: e.g. centre first)
    passes: int = 1

    def __init__(self, device="cpu", special_tokens: bool = False, enabled: bool = True):
        import torch

        self.device = torch.device(device)
        self.special_tokens = special_tokens
        self.layer: int | None = None
        self.metadata: dict[str, str] = {}
        self.pass_index = 0

    def bind(self, layer: int | None = None, metadata: dict | None = None) -> "Metric":
        """Tell the accumulator which layer it sees and the dump's metadata (model facts, corpus)."""
        self.layer = layer
        self.metadata = dict(metadata or {})
        return self

    def begin_pass(self, index: int) -> None:
        """Called by the runner before pass ``index`` (0-based) over the dump."""
        self.pass_index = index

    def memory_bytes(self) -> int:
        """Bytes held by the accumulator's own tensors and arrays (for bounded-memory checks)."""
        return _nbytes(vars(self), set())

    def update(self, batch) -> None:
        if isinstance(batch, pa.RecordBatch):
            batch = TokenBatch.from_record_batch(batch, self.device)
        if not self.special_tokens:
            batch = batch.select(~batch.special)
        if len(batch):
            self._check_finite(batch)
            self._update(batch)

    def _check_finite(self, batch: TokenBatch) -> None:
        """NaN or Inf vectors would silently poison every sum; name the metric, model and layer instead."""
        import torch

        bad = ~torch.isfinite(batch.x).all(dim=1)
        if bool(bad.any()):
            model = self.metadata.get("model_id") or "?"
            layer = "?" if self.layer is None else self.layer
            first = int(batch.sentence_id[bad][0])
            raise MetricError(
                f"metric {self.name}: model {model}, layer {layer} holds NaN or Inf vectors ({int(bad.sum())} "
                f"token(s), first in sentence_id {first}); the dump is damaged or the model overflowed: "
                "delete the dump and rerun the embed step (in float32 if it was float16)")

    @abstractmethod
    def _update(self, batch: TokenBatch) -> None: ...

    @abstractmethod
    def compute(self) -> list[MetricValue]: ...


def _nbytes(obj, seen: set) -> int:
    import torch

    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.element_size() * obj.nelement()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, type):
        return _nbytes(vars(obj), seen)
    return 0


_MASK64 = (1 << 64) - 1


def token_hash(seed: int, sentence_id, position):
    """A seeded 64-bit hash (splitmix64) of (sentence_id, position), as int64 tensors; order-free."""
    import torch

    def mix(z):
        z = z.to(torch.int64)
        z = (z ^ ((z >> 30) & 0x3FFFFFFFF)) * _signed(0xBF58476D1CE4E5B9)
        z = (z ^ ((z >> 27) & 0x1FFFFFFFFF)) * _signed(0x94D049BB133111EB)
        return z ^ ((z >> 31) & 0x1FFFFFFFF)

    key = sentence_id.to(torch.int64) * 1_000_003 + position.to(torch.int64)
    return mix(key + _signed((int(seed) * 0x9E3779B97F4A7C15) & _MASK64))


def _signed(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


class ReservoirSample:
    """A seeded, batching-independent sample of at most ``size`` tokens of a stream.

    Keeps the tokens whose :func:`token_hash` is smallest (bottom-k sampling), so every layer of a
    dump samples the same tokens and the result does not depend on batch boundaries. Memory is at
    most 2 × size rows. :meth:`rows` returns the kept rows in (sentence_id, position) order.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = int(seed)
        self.keys = None
        self.columns: dict = {}
        self.seen = 0

    def update(self, batch: TokenBatch, **extra) -> None:
        """Offer the tokens of ``batch`` (``extra``: further per-token tensors to keep alongside)."""
        import torch

        position = batch.positions()
        columns = {"x": batch.x, "sentence_id": batch.sentence_id, "position": position,
                   "token_id": batch.token_id, "frequency": batch.frequency, **extra}
        keys = token_hash(self.seed, batch.sentence_id, position)
        self.seen += len(keys)
        if self.keys is None:
            self.keys, self.columns = keys, dict(columns)
        else:
            self.keys = torch.cat([self.keys, keys])
            self.columns = {k: torch.cat([v, columns[k]]) for k, v in self.columns.items()}
        if len(self.keys) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        import torch

        if len(self.keys) <= self.size:
            return
        keep = torch.topk(self.keys, self.size, largest=False).indices
        self.keys = self.keys[keep]
        self.columns = {k: v[keep] for k, v in self.columns.items()}

    def rows(self) -> dict:
        """The sample as a dict of tensors (``x``, ``sentence_id``, ``position``, ``token_id``, ...)."""
        import torch

        if self.keys is None:
            return {}
        self._shrink()
        order = torch.argsort(self.columns["sentence_id"] * 1_000_003 + self.columns["position"])
        return {k: v[order] for k, v in self.columns.items()}

    def __len__(self) -> int:
        return 0 if self.keys is None else min(len(self.keys), self.size)


class GramSums:
    """G = Σ x xᵀ, s = Σ x and N over a stream (float64, on the vectors' device): the exact sufficient
    statistics of the uncentred (G) and centred (G − s sᵀ / N) second moments of a layer."""

    def __init__(self):
        self.gram = None
        self.total = None
        self.count = 0

    def update(self, x) -> None:
        if self.gram is None:
            d = x.shape[1]
            self.gram = x.new_zeros((d, d))
            self.total = x.new_zeros(d)
        self.gram += x.T @ x
        self.total += x.sum(dim=0)
        self.count += len(x)

    def centred_gram(self):
        """Σ (x − μ)(x − μ)ᵀ = G − s sᵀ / N."""
        return self.gram - self.total.outer(self.total) / self.count


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
