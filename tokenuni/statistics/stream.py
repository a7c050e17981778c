"""The streamed pass: :class:`StatisticsPass` over token batches, and :func:`stream_dump`, the one read of a dump."""
from __future__ import annotations

import logging

import numpy as np

from tokenuni.errors import TokenuniError
from tokenuni.statistics.file import json_array
from tokenuni.statistics.moments import LayerMoments, moments_path
from tokenuni.statistics.sample import SharedSample

log = logging.getLogger("tokenuni.statistics")


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
