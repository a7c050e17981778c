"""The sufficient statistics of a stream of token batches: per-layer moments, seeded samples, and their file.

The ground the one-pass metrics suite (:mod:`tokenuni.metrics.suite`) and the projection (:mod:`tokenuni.projection`)
stand on, below both (neither imports the other):

* :func:`moment_rows` / :class:`LayerMoments` -- per layer, the :class:`~tokenuni.numerics.MomentSums` of
  z = (x, f, log f, ‖x‖) of the regular and of the special tokens. The embed stage accumulates them while it
  writes a dump and saves them beside it (:func:`moments_path`), so everything that needs the moments before it
  sees the data (partition isotropy's directions, the cosine family's centring) can run in the one read of the
  dump.
* :class:`StatisticsPass` -- a consumer of token batches (from a dump, or from the embed stage when no dump is
  written) that keeps the moments (unless given) and one seeded bottom-k sample per (seed, token set) with every
  layer's vectors; the metrics suite extends it with the metrics' own accumulators.
* :func:`stream_dump` -- the one read of a dump (two when a consumer needs the moments first and the dump has no
  moments file), one float64 conversion per (batch, layer).
* :func:`save_statistics` / :func:`load_statistics` -- one uncompressed ``.npz`` (no pickles): ``plan.json``,
  ``metadata.json`` (the dump's metadata, or the embed stage's without a dump: the provenance that the jobs reading
  the file check, :func:`check_statistics_provenance`), ``reads``, ``n_layers``, ``hidden_size``, ``moments/<set>/<layer>/*``,
  ``sample/<seed>_<set>/*`` (vectors as float32: dump values are float32, bfloat16 or float16, all exact in
  float32); the suite adds ``state/<metric>/<layer>/*`` and ``rows/<metric>.json``.
"""
from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import numpy as np

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path
from tokenuni.numerics import MomentSums, ReservoirSample, token_hash

log = logging.getLogger(__name__)

TOKEN_SETS = ("regular", "special")


class StatisticsError(TokenuniError, ValueError):
    """Statistics that do not match what a job expects (stale file, other plan, other dump): rerun its pass."""


# -- moments -----------------------------------------------------------------------------------------

def moment_rows(x, frequency):
    """z = (x, f, log f, ‖x‖) per token (float64): every second moment a metric or the projection uses is a
    block of z's moments (f = in-corpus frequency, log f with f clamped at 1)."""
    import torch

    f = frequency.to(torch.float64)[:, None]
    return torch.cat([x, f, f.clamp_min(1.0).log(), torch.linalg.vector_norm(x, dim=1, keepdim=True)], dim=1)


class LayerMoments:
    """Per layer, the moments of z (:func:`moment_rows`) of the regular and of the special tokens."""

    def __init__(self, n_layers: int, device="cpu"):
        self.n_layers = int(n_layers)
        self.device = device
        self.sums = {group: [MomentSums(device) for _ in range(self.n_layers)] for group in TOKEN_SETS}

    #: passes over the corpus it needs as a consumer of the embed stage (:func:`tokenuni.embed.embed_corpus`)
    reads = 1

    def update(self, index: dict, layers: list) -> None:
        """One batch of every layer (the embed stage's consumer protocol, see :meth:`Suite.update`)."""
        special = index["special"].bool()
        for layer, x in enumerate(layers):
            self.add(layer, x, index["frequency"], special)

    def add(self, layer: int, x, frequency, special) -> None:
        """Add one batch of a layer: ``x`` (n, d) float64, ``frequency`` (n,), ``special`` (n,) bool tensors."""
        z = moment_rows(x, frequency)
        regular = ~special
        if bool(regular.all()):
            self.sums["regular"][layer].update(z)
            return
        self.sums["regular"][layer].update(z[regular])
        if bool(special.any()):
            self.sums["special"][layer].update(z[special])

    def of(self, layer: int, token_set: str) -> MomentSums:
        """The moments of z over the regular tokens, or over all tokens (regular merged with special)."""
        regular = self.sums["regular"][layer]
        if token_set == "regular":
            return regular
        merged = MomentSums.from_state_dict(regular.state_dict(), regular.device) if regular.count else MomentSums()
        return merged.merge(self.sums["special"][layer])

    def hidden_size(self) -> int:
        dim = self.sums["regular"][0].dim
        return 0 if dim is None else dim - 3

    def state_dict(self) -> dict:
        return {f"moments/{group}/{layer}/{key}": value
                for group, layers in self.sums.items() for layer, sums in enumerate(layers) if sums.count
                for key, value in sums.state_dict().items()}

    @classmethod
    def from_state_dict(cls, state, n_layers: int, device="cpu") -> LayerMoments:
        moments = cls(n_layers, device)
        for group in TOKEN_SETS:
            for layer in range(n_layers):
                prefix = f"moments/{group}/{layer}/"
                if prefix + "count" in state:
                    moments.sums[group][layer] = MomentSums.from_state_dict(
                        {k: state[prefix + k] for k in ("count", "shift", "mean", "scatter")}, device)
        return moments

    def save(self, path, metadata: dict | None = None) -> None:
        """Write ``<dump>.moments.npz`` (atomically), with the dump's row count to check it against."""
        arrays = {**self.state_dict(), "n_layers": np.asarray(self.n_layers),
                  "metadata.json": json_array(metadata or {})}
        _save_npz(path, arrays)

    @classmethod
    def load(cls, path, device="cpu") -> tuple[LayerMoments, dict]:
        state = _load_npz(path)
        return cls.from_state_dict(state, int(state["n_layers"]), device), json_value(state["metadata.json"])


def moments_path(dump_path) -> Path:
    """Where the embed stage saves a dump's moments: ``<dump>.moments.npz`` beside it."""
    dump_path = Path(dump_path)
    return dump_path.with_name(dump_path.name + ".moments.npz")


class SharedSample:
    """A streamed bottom-k sample of one (seed, token set), with each sampled token's vector in every layer."""

    def __init__(self, size: int, seed: int, n_layers: int):
        self.size, self.seed, self.n_layers = int(size), int(seed), int(n_layers)
        self.keys = None
        self.columns: dict = {}
        self.vectors: list = []
        self.seen = 0

    def offer(self, rows: dict, layers: list) -> None:
        """``rows``: index tensors of the batch's tokens of this set (incl. ``row``, ``token``), ``layers``: their
        (n, d) float64 vectors per layer."""
        import torch

        keys = token_hash(self.seed, rows["sentence_id"], rows["position"])
        self.seen += len(keys)
        if self.keys is not None and len(self.keys) >= self.size:  # only tokens that can still enter
            threshold = torch.kthvalue(self.keys, self.size).values
            keep = keys < threshold
            if not bool(keep.any()):
                return
            keys = keys[keep]
            rows = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()]) for k, v in rows.items()}
            layers = [x[keep] for x in layers]
        layers = [x.to(torch.float32) for x in layers]  # exact: dump values are float32 / bfloat16 / float16
        if self.keys is None:
            self.keys, self.columns, self.vectors = keys, dict(rows), layers
        else:
            self.keys = torch.cat([self.keys, keys])
            self.columns = {k: (torch.cat([v, rows[k]]) if isinstance(v, torch.Tensor) else np.concatenate([v, rows[k]]))
                            for k, v in self.columns.items()}
            self.vectors = [torch.cat([a, b]) for a, b in zip(self.vectors, layers)]
        if len(self.keys) > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        import torch

        if self.keys is None or len(self.keys) <= self.size:
            return
        keep = torch.topk(self.keys, self.size, largest=False).indices
        self.keys = self.keys[keep]
        self.columns = {k: (v[keep] if isinstance(v, torch.Tensor) else v[keep.cpu().numpy()])
                        for k, v in self.columns.items()}
        self.vectors = [x[keep] for x in self.vectors]

    def state_dict(self, prefix: str) -> dict:
        import torch

        self._shrink()
        state = {f"{prefix}/size": np.asarray(self.size), f"{prefix}/seed": np.asarray(self.seed),
                 f"{prefix}/seen": np.asarray(self.seen)}
        if self.keys is None:
            return state
        order = torch.argsort(self.columns["sentence_id"] * 1_000_003 + self.columns["position"]).cpu()
        state[f"{prefix}/keys"] = self.keys.cpu()[order].numpy()
        for name, values in self.columns.items():
            values = values.cpu()[order].numpy() if isinstance(values, torch.Tensor) else values[order.numpy()]
            state[f"{prefix}/{name}"] = values
        for layer, x in enumerate(self.vectors):
            state[f"{prefix}/x/{layer}"] = x.cpu()[order].numpy()
        return state


def sample_for_layer(state, key: str, layer: int, device="cpu") -> ReservoirSample:
    """The shared sample of ``key`` at ``layer`` as a :class:`ReservoirSample` (the columns a SampledMetric reads)."""
    import torch

    prefix = f"sample/{key}"
    sample = ReservoirSample(int(state[f"{prefix}/size"]), int(state[f"{prefix}/seed"]))
    sample.seen = int(state[f"{prefix}/seen"])
    if f"{prefix}/keys" not in state:
        return sample

    def tensor(name, dtype):
        return torch.as_tensor(np.asarray(state[f"{prefix}/{name}"]), dtype=dtype, device=device)

    sample.keys = tensor("keys", torch.int64)
    sample.columns = {"sentence_id": tensor("sentence_id", torch.int64), "position": tensor("position", torch.int64),
                      "x": tensor(f"x/{layer}", torch.float64), "token_id": tensor("token_id", torch.int64),
                      "frequency": tensor("frequency", torch.int64)}
    return sample


class StatisticsPass:
    """Moments and seeded samples of a stream of token batches, every layer (the consumer protocol of
    :func:`tokenuni.embed.embed_corpus`: :attr:`reads`, :meth:`begin_read`, :meth:`update`).

    ``plan``: ``{"samples": {"<seed>_<regular|all>": size, ...}, ...}``. ``moments``: a :class:`LayerMoments` known
    before the stream (from the embed stage), or None (accumulated in the first read). Subclasses add per-batch work
    (:meth:`_stream_layer`), declare whether some of it needs the moments first (:meth:`_needs_moments_first`; then
    :attr:`reads` is 2 without given moments) and add to :meth:`statistics`.
    """

    def __init__(self, plan: dict, n_layers: int, metadata: dict | None = None, *, moments: LayerMoments | None = None,
                 device="cpu"):
        self.plan, self.n_layers, self.device = plan, int(n_layers), device
        self.metadata = dict(metadata or {})
        self.given_moments = moments is not None
        self.moments = moments if moments is not None else LayerMoments(n_layers, device)
        self.samples = {key: SharedSample(size, int(key.split("_")[0]), self.n_layers)
                        for key, size in plan.get("samples", {}).items()}
        self.token_sets = {key.split("_")[1] for key in self.samples}
        self.read = 0
        self.rows = 0

    @property
    def reads(self) -> int:
        return 2 if self._needs_moments_first() and not self.given_moments else 1

    def _needs_moments_first(self) -> bool:
        return False

    def _prime(self) -> None:
        """The moments are complete (given, or after read 0): hand them to what needs them first."""

    def begin_read(self, index: int) -> None:
        """Before read ``index`` (0-based) of :attr:`reads`."""
        self.read = index
        self.rows = 0
        if index == 0 and self.given_moments or index == 1:
            self._prime()

    def stages(self) -> tuple[str, ...]:
        """The kinds of per-batch work this read does: "data" (needs the batch alone), "moments" (needs them first)."""
        if self.given_moments:
            return ("data", "moments")
        return ("data",) if self.read == 0 else ("moments",)

    def _stream_layer(self, layer: int, x, index: dict, regular, stages: tuple[str, ...]) -> None:
        """Subclasses: the per-batch work of one layer (``x`` its float64 rows, ``regular`` the non-special mask)."""

    def update(self, index: dict, layers: list) -> None:
        """One batch: ``index`` the token index as tensors on the device (``sentence_id``, ``position``,
        ``token_id``, ``special``, ``frequency``; ``token`` as a numpy array of strings), ``layers`` the (n, d)
        float64 tensors of every layer."""
        import torch

        n = int(index["sentence_id"].shape[0])
        special = index["special"].to(torch.bool)
        regular = ~special
        rows = torch.arange(self.rows, self.rows + n, device=special.device)
        self.rows += n
        stages = self.stages()
        update_moments = not self.given_moments and self.read == 0
        for layer, x in enumerate(layers):
            check_finite(x, self.metadata, layer, index["sentence_id"])
            if update_moments:
                self.moments.add(layer, x, index["frequency"], special)
            self._stream_layer(layer, x, index, regular, stages)
        if self.read == 0:
            for key, sample in self.samples.items():
                keep = None if key.endswith("_all") else regular
                picked = {name: index[name] for name in ("sentence_id", "position", "token_id", "frequency")}
                picked.update(special=special, row=rows, token=np.asarray(index["token"]))
                if keep is not None:
                    mask = keep.cpu().numpy()
                    picked = {k: (v[keep] if isinstance(v, torch.Tensor) else v[mask]) for k, v in picked.items()}
                sample.offer(picked, [x if keep is None else x[keep] for x in layers])

    def statistics(self) -> dict:
        """The moments and samples as numpy arrays (see the module docstring for the layout)."""
        state = {"plan.json": json_array(self.plan), "metadata.json": json_array(self.metadata),
                 "reads": np.asarray(self.reads), "n_layers": np.asarray(self.n_layers),
                 "hidden_size": np.asarray(self.moments.hidden_size()), **self.moments.state_dict()}
        for key, sample in self.samples.items():
            state.update(sample.state_dict(f"sample/{key}"))
        return state


def check_finite(x, metadata: dict, layer: int, sentence_id) -> None:
    import torch

    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        raise TokenuniError(
            f"metrics: model {metadata.get('model_id') or '?'}, layer {layer} holds NaN or Inf vectors "
            f"({int(bad.sum())} token(s), first in sentence_id {int(sentence_id[bad][0])}); the dump is damaged or the "
            "model overflowed: delete the dump and rerun the embed step (in float32 if it was float16)")


def index_tensors(batch, device) -> dict:
    """The token index of an Arrow record batch as tensors on ``device`` (tokens as a numpy array of strings)."""
    import torch

    def column(name, dtype):
        return torch.from_numpy(np.array(batch.column(name).to_numpy(zero_copy_only=False), dtype=dtype)).to(device)

    return {"sentence_id": column("sentence_id", np.int64), "position": column("position", np.int64),
            "token_id": column("token_id", np.int64), "special": column("special", np.bool_),
            "frequency": column("frequency", np.int64),
            "token": np.asarray(batch.column("token").to_numpy(zero_copy_only=False), dtype=str)}


def stream_dump(dump_path, statistics_pass, *, device="cpu", progress: bool = True, desc: str = "",
                expected: dict | None = None) -> dict:
    """Stream a dump into ``statistics_pass(n_layers, metadata, moments)`` (a :class:`StatisticsPass` factory) once,
    or twice when it needs the moments first and the dump has no moments file; returns its :meth:`statistics`.

    ``expected``: what the dump must have been written for (:func:`tokenuni.sources.expected_provenance`), checked
    before the read (:func:`tokenuni.store.check_provenance`). The statistics carry the dump's metadata, provenance
    included, for the jobs that read them (:func:`check_statistics_provenance`). A moments file that does not
    describe this dump (other row or layer count, or written for another model or corpus) is ignored with a
    warning: the moments are then accumulated in the read."""
    from tqdm.auto import tqdm

    from tokenuni.store import PROVENANCE_KEYS, check_provenance, layer_column, open_dump, vector_tensor

    dump = open_dump(dump_path)
    metadata = dump.metadata
    check_provenance(dump_path, metadata, expected)
    moments = None
    sidecar = moments_path(dump_path)
    if sidecar.exists():
        moments, moments_meta = LayerMoments.load(sidecar, device)
        rows = int(metadata.get("tokens") or dump.num_rows)
        foreign = [key for key in PROVENANCE_KEYS if key in moments_meta and moments_meta[key] != metadata.get(key)]
        if moments.n_layers != dump.n_layers or int(moments_meta.get("rows", -1)) != rows or foreign:
            log.warning("%s does not describe %s (%s layers / %s rows, dump %d / %d%s): accumulating the moments in "
                        "the read", sidecar, dump_path, moments.n_layers, moments_meta.get("rows"), dump.n_layers, rows,
                        "; other " + ", ".join(foreign) if foreign else "")
            moments = None
    consumer = statistics_pass(dump.n_layers, metadata, moments)
    for read in range(consumer.reads):
        consumer.begin_read(read)
        label = desc + (f" read {read + 1}/{consumer.reads}" if consumer.reads > 1 else "")
        for batch in tqdm(dump.batches(), total=dump.reader.num_record_batches, desc=label, unit="batch",
                          disable=not progress):
            index = index_tensors(batch, device)
            layers = [vector_tensor(batch.column(layer_column(layer)), device) for layer in range(dump.n_layers)]
            consumer.update(index, layers)
    return consumer.statistics()


# -- the file --------------------------------------------------------------------------------------------

def json_array(value) -> np.ndarray:
    return np.frombuffer(json.dumps(value, default=json_default).encode(), dtype=np.uint8)


def json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def json_value(array) -> object:
    return json.loads(bytes(np.asarray(array, dtype=np.uint8)).decode())


def _save_npz(path, arrays: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _load_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise StatisticsError(f"{path} is not a readable statistics file ({error}); delete it and rerun its job") from None


def save_statistics(statistics: dict, path) -> None:
    """Write the statistics (atomically) as one uncompressed ``.npz``."""
    _save_npz(path, statistics)


def load_statistics(path) -> dict:
    """Read a statistics file (numpy arrays by name)."""
    state = _load_npz(path)
    if "plan.json" not in state:
        raise StatisticsError(f"{path} is not a tokenuni statistics file (no plan); rerun its metrics pass")
    return state


def check_statistics_provenance(path, statistics: dict, expected: dict | None) -> None:
    """Stop unless the statistics at ``path`` were computed for what the job expects (model id, revision,
    fingerprint of the weights, corpus, layer count, hidden size: :func:`tokenuni.store.check_provenance`). They
    carry the metadata of the dump they were computed from, or of the embed stage that fed them (no dump)."""
    from tokenuni.store import check_provenance

    if expected:
        check_provenance(path, json_value(statistics["metadata.json"]), expected, what="statistics file")


def statistics_size(statistics: dict) -> int:
    """Bytes of the arrays (what the file holds, headers aside)."""
    return int(sum(np.asarray(v).nbytes for v in statistics.values()))
