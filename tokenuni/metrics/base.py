"""Streaming metric accumulators over the token batches of one layer.

Every metric follows the same protocol::

    metric = SomeMetric(device="cpu", **options)
    metric.bind(layer=3, metadata=dump.metadata)   # optional: the layer and the dump's metadata
    for p in range(metric.passes):                 # most metrics need one pass, a few two
        metric.begin_pass(p)
        for batch in record_batches:  # pyarrow RecordBatch with the token index and a `vector` column
            metric.update(batch)      # (or a TokenBatch already on the device)
    rows = metric.compute()           # list[MetricValue]

Sampled metrics (:class:`SampledMetric`) draw their sample with :class:`tokenuni.numerics.ReservoirSample`:
a token is kept when its seeded hash of (sentence_id, position) is among the smallest, so the sample is the
same whatever the batching, the same tokens for every layer, and reproducible from the seed.

Accumulation is in float64 on the metric's device (CUDA when present), so the CPU and GPU paths
agree to float tolerance. Exact metrics keep sufficient statistics only (sums; second moments in the
one accumulator :class:`tokenuni.numerics.MomentSums`); memory does not grow with the number of tokens.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from tokenuni.errors import TokenuniError
from tokenuni.numerics import ReservoirSample
from tokenuni.store import vector_tensor
from tokenuni.metrics.rows import Row

if TYPE_CHECKING:  # torch is imported lazily: a metric that never runs must not pay for it
    import torch


class MetricError(TokenuniError, ValueError):
    """A metric asked for with options it cannot take, or fed a dump it cannot use."""


#: every metric of the package, by config name, in the order their modules were imported (alphabetical: the
#: package imports its modules by name, :mod:`tokenuni.metrics`); a ``Metric`` subclass with a ``name`` in a module
#: of ``tokenuni.metrics`` registers itself, so a new metric is its file
REGISTRY: dict[str, type] = {}


def _register(cls) -> None:
    known = REGISTRY.get(cls.name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise MetricError(f"two metrics are named {cls.name!r}: {known.__module__}.{known.__qualname__} and "
                          f"{cls.__module__}.{cls.__qualname__}")
    REGISTRY[cls.name] = cls


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


def used_sample_size(metric: Metric, sample: ReservoirSample, logger) -> int:
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

    x: torch.Tensor  # (n, d) float64
    sentence_id: torch.Tensor  # (n,) int64
    token_id: torch.Tensor  # (n,) int64
    special: torch.Tensor  # (n,) bool
    frequency: torch.Tensor  # (n,) int64
    position: torch.Tensor | None = None  # (n,) int64, token position within its sentence

    @classmethod
    def from_record_batch(cls, batch: pa.RecordBatch, device, vector_column: str = "vector") -> TokenBatch:
        import torch

        def column(name, dtype):
            return torch.from_numpy(np.array(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)).to(device)

        return cls(
            x=vector_tensor(batch.column(vector_column), device),
            sentence_id=column("sentence_id", np.int64),
            token_id=column("token_id", np.int64),
            special=column("special", np.bool_),
            frequency=column("frequency", np.int64),
            position=column("position", np.int64) if "position" in batch.schema.names else None,
        )

    def select(self, keep: torch.Tensor) -> TokenBatch:
        return TokenBatch(self.x[keep], self.sentence_id[keep], self.token_id[keep], self.special[keep],
                          self.frequency[keep], None if self.position is None else self.position[keep])

    def positions(self) -> torch.Tensor:
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
    #: the rows it produces in the tidy table and what each means (:class:`tokenuni.metrics.rows.Row`: label,
    #: headline variant, isotropic end, component or diagnostic); the one place these facts are declared
    rows: tuple[Row, ...] = ()
    #: names of those rows (derived from :attr:`rows`)
    produces: tuple[str, ...] = ()
    #: those of them that are vector-valued (one row per ``component``: singular values, silhouette per k; derived)
    vector_rows: tuple[str, ...] = ()
    #: how many times the runner streams the dump through :meth:`update` (2: e.g. centre first)
    passes: int = 1
    #: options that only :meth:`compute` reads: the one-pass suite (:mod:`tokenuni.metrics.suite`) saves the
    #: accumulator's :meth:`state_dict` and re-derives the rows when one of them changes, without a read of the dump
    derived_options: tuple[str, ...] = ()
    #: statistics the suite keeps once for every metric of a layer: "moments" (the layer's
    #: :class:`~tokenuni.numerics.MomentSums`, given by :meth:`use_moments`) and/or "sample" (the seeded token
    #: sample, given by :meth:`use_sample`)
    shared: tuple[str, ...] = ()
    #: its config entry ``metrics.<name>``, written as YAML: a ``description`` and the ``properties`` of its options
    #: (JSON schema, with defaults); :meth:`config_schema` adds what every entry shares (an object of these keys only,
    #: default ``{}``, and ``enabled``), and the config validates and defaults it (:func:`tokenuni.config.load_schema`)
    options_schema: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "rows" in cls.__dict__:
            cls.produces = tuple(declared.name for declared in cls.rows)
            cls.vector_rows = tuple(declared.name for declared in cls.rows if declared.component)
        if cls.__dict__.get("name") and cls.__module__.startswith("tokenuni.metrics."):
            _register(cls)

    @classmethod
    def config_schema(cls) -> dict:
        """The JSON schema of the metric's config entry: :attr:`options_schema` plus what every entry shares."""
        import textwrap

        import yaml

        declared = yaml.safe_load(textwrap.dedent(cls.options_schema)) if cls.options_schema.strip() else None
        if not isinstance(declared, dict) or not declared.get("description") \
                or not isinstance(declared.get("properties") or {}, dict) or set(declared) - {"description", "properties"}:
            raise MetricError(f"metric {cls.name} ({cls.__module__}): options_schema must be YAML with a description "
                              "and (optionally) the properties of its options")
        return {"type": "object", "additionalProperties": False, "default": {}, "description": declared["description"],
                "properties": {"enabled": {"type": "boolean", "default": True}, **(declared.get("properties") or {})}}

    def __init__(self, device="cpu", special_tokens: bool = False, enabled: bool = True):
        import torch

        self.device = torch.device(device)
        self.special_tokens = special_tokens
        self.layer: int | None = None
        self.metadata: dict[str, str] = {}
        self.pass_index = 0

    def bind(self, layer: int | None = None, metadata: dict | None = None) -> Metric:
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

    # -- the one-pass suite (tokenuni.metrics.suite) -----------------------------------------------
    def token_set(self) -> str:
        """The tokens the metric streams: "regular" (special tokens dropped) or "all"."""
        return "all" if self.special_tokens else "regular"

    def needs_moments_first(self) -> bool:
        """Whether part of the per-batch work needs the layer's moments (mean, eigenvectors) before the batch."""
        return False

    def prime(self, moments) -> None:  # noqa: B027  # an optional hook: by default nothing to prime
        """The layer's moments (a MomentSums of the metric's tokens, coordinates x) are known before the read."""

    def stream(self, batch: TokenBatch, stage: str) -> None:
        """The suite's per-batch call: ``stage`` "data" (work that needs the batch alone) or "moments" (work that
        needs :meth:`prime` first). Special tokens are already dropped unless ``special_tokens``; the batch was
        checked for NaN. Default: the whole :meth:`_update` is "data" work."""
        if stage == "data":
            self._update(batch)

    def use_moments(self, moments, hidden_size: int) -> None:
        """Take the shared moments of z = (x, f, log f, ‖x‖) (:func:`tokenuni.metrics.suite.moment_rows`)."""
        self.sums = moments.select(range(hidden_size))

    def state_dict(self) -> dict:
        """The accumulator's own sufficient statistics (numpy arrays; shared statistics excluded)."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027  # an optional hook: no own state by default
        """Restore :meth:`state_dict` (then :meth:`compute` may run with other :attr:`derived_options`)."""

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


class SampledMetric(Metric):
    """A metric computed on a seeded :class:`~tokenuni.numerics.ReservoirSample` of ``sample_size`` of the layer's
    tokens, keyed by (sentence_id, position): the same tokens for every layer and whatever the batching.

    Subclasses read ``self.sample.rows()`` (``x``, ``sentence_id``, ``position``, ``token_id``, ``frequency``)
    in :meth:`compute`; ``sample_size`` and ``seed`` are recorded on their rows.
    """

    def __init__(self, device="cpu", sample_size: int = 5000, seed: int = 0, **options):
        super().__init__(device, **options)
        self.sample_size = int(sample_size)
        self.seed = int(seed)
        self.sample = ReservoirSample(self.sample_size, self.seed)

    shared = ("sample",)

    def _update(self, batch: TokenBatch) -> None:
        self.offer(batch)

    def stream(self, batch: TokenBatch, stage: str) -> None:
        """Nothing of its own per batch: the suite keeps the shared sample."""

    def use_sample(self, sample) -> None:
        """Take the shared sample of this seed (a :class:`ReservoirSample` of at least ``sample_size`` tokens):
        its ``sample_size`` smallest hashes are exactly the tokens this metric's own sample would keep."""
        self.sample = sample.bottom(self.sample_size)

    def offer(self, batch: TokenBatch) -> None:
        """Offer the tokens of ``batch`` to the sample."""
        self.sample.update(batch.sentence_id, batch.positions(), x=batch.x, token_id=batch.token_id,
                           frequency=batch.frequency)


def unit_rows(x):
    """Rows scaled to unit norm; zero rows stay zero and are reported by the mask."""
    import torch

    norms = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    nonzero = norms.squeeze(1) > 0
    return x / torch.where(norms > 0, norms, torch.ones_like(norms)), nonzero


def mean_pairwise_cosine(unit_sum_sq, count):
    """Mean cosine over ordered pairs i != j of unit vectors, from ‖Σ x̂‖² and N: (‖Σx̂‖² − N) / (N(N − 1))."""
    return (unit_sum_sq - count) / (count * (count - 1))
