"""Embedding dumps: one uncompressed Arrow IPC file per (model, corpus). (Pooled sentence-embedding files are
:mod:`tokenuni.sentence_store`.)

Layout (one row per token, rows grouped by sentence, positions in order):

=================  ==========================================  =====================================
column             type                                        meaning
=================  ==========================================  =====================================
``sentence_id``    int64                                       row of the corpus table
``position``       int32                                       0-based token position in the input
``token_id``       int32                                       tokenizer id
``token``          string                                      tokenizer piece
``special``        bool                                        a special token ([CLS], [SEP], <s> ...)
``frequency``      int64                                       occurrences of ``token_id`` in the tokenised corpus
``layer_<i>``      fixed_size_list<float32|float16|uint16>[d]  hidden state i (0 = embedding output)
=================  ==========================================  =====================================

Precision (metadata ``dtype``): ``float32`` (4 bytes per value), ``float16`` or ``bfloat16`` (2 bytes). Arrow has
no bfloat16 type, so a bfloat16 dump stores each value's 16 bits as ``uint16`` (the upper half of its float32
bits, rounded to nearest even); :func:`vectors` turns them back into float32 exactly. Readers always see
float32 (and metrics float64) whatever the precision.

The token index lives in the same record batches as the vectors, so row alignment is structural;
:func:`validate_dump` checks it anyway (counts, contiguous positions, metadata). Files are written
uncompressed so that :func:`open_dump` can memory-map them and hand out zero-copy numpy views;
readers stream record batches and never load a whole layer.
"""
from __future__ import annotations

import json
import mmap
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path, disk_full

INDEX_FIELDS = [
    pa.field("sentence_id", pa.int64(), nullable=False),
    pa.field("position", pa.int32(), nullable=False),
    pa.field("token_id", pa.int32(), nullable=False),
    pa.field("token", pa.string()),
    pa.field("special", pa.bool_(), nullable=False),
    pa.field("frequency", pa.int64(), nullable=False),
]
INDEX_COLUMNS = [f.name for f in INDEX_FIELDS]
LAYER_CONVENTION = "layer 0 = embedding output (hidden_states[0]); layer i = output of block i"
META_PREFIX = "tokenuni."
_ARROW_DTYPES = {"float32": pa.float32(), "float16": pa.float16(), "bfloat16": pa.uint16()}
#: dump precisions (metadata ``dtype``) and bytes per stored value
DUMP_PRECISIONS = {"float32": 4, "bfloat16": 2, "float16": 2}


def bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even, as torch), as their 16 bits (uint16)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def bfloat16_values(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bits (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
#: bytes of a dump streamed between two releases of its mapped pages (:meth:`Dump.release`)
RELEASE_BYTES = 64 * 2**20


class DumpError(TokenuniError, ValueError):
    """A dump that cannot be written or read as promised; the message names the file (and layer)."""


def layer_column(layer: int) -> str:
    return f"layer_{layer}"


def dump_schema(n_layers: int, hidden_size: int, dtype: str, metadata: dict) -> pa.Schema:
    if dtype not in _ARROW_DTYPES:
        raise DumpError(f"dump dtype {dtype!r} not supported (choose {', '.join(_ARROW_DTYPES)})")
    vector = pa.list_(_ARROW_DTYPES[dtype], hidden_size)
    fields = INDEX_FIELDS + [pa.field(layer_column(i), vector, nullable=False) for i in range(n_layers)]
    meta = {f"{META_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta.update({
        f"{META_PREFIX}n_layers": str(n_layers),
        f"{META_PREFIX}hidden_size": str(hidden_size),
        f"{META_PREFIX}dtype": dtype,
        f"{META_PREFIX}layer_convention": LAYER_CONVENTION,
    })
    return pa.schema(fields, metadata=meta)


class DumpWriter:
    """Write a dump batch by batch to a temporary file; :meth:`close` renames it into place.

    Used as a context manager: an exception inside the block removes the temporary file and leaves
    any previous dump at ``path`` untouched.
    """

    def __init__(self, path: str | Path, *, n_layers: int, hidden_size: int, dtype: str = "float32",
                 metadata: dict | None = None):
        self.path = Path(path)
        self.schema = dump_schema(n_layers, hidden_size, dtype, metadata or {})
        self.n_layers, self.hidden_size, self.dtype = n_layers, hidden_size, dtype
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        self._sink = pa.OSFile(str(self._tmp), "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)  # uncompressed: memory-mappable
        self.rows = 0

    def write(self, index: dict[str, np.ndarray], layers: list[np.ndarray]) -> None:
        """Append one batch: ``index`` holds the index columns, ``layers[i]`` the (n, d) states of layer i."""
        if len(layers) != self.n_layers:
            raise DumpError(f"{self.path}: expected {self.n_layers} layers, got {len(layers)}")
        n = len(index["sentence_id"])
        columns = [pa.array(index[f.name], type=f.type) for f in INDEX_FIELDS]
        for i, states in enumerate(layers):
            if states.shape != (n, self.hidden_size):
                raise DumpError(f"{self.path}: layer {i} has shape {states.shape}, expected ({n}, {self.hidden_size})")
            values = self._stored(i, states)
            flat = pa.array(values.reshape(-1), type=_ARROW_DTYPES[self.dtype])
            columns.append(pa.FixedSizeListArray.from_arrays(flat, self.hidden_size))
        try:
            self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        except OSError as error:
            raise disk_full(self.path, error) from error
        self.rows += n

    def _stored(self, layer: int, states: np.ndarray) -> np.ndarray:
        """The values as stored: float32, float16, or bfloat16 bits (``states`` may already be those bits, uint16)."""
        if self.dtype == "bfloat16" and states.dtype == np.uint16:
            if ((states >> np.uint16(7)) & np.uint16(0xFF) == np.uint16(0xFF)).any():
                raise DumpError(f"{self.path}: layer {layer} holds NaN or Inf hidden states")
            return np.ascontiguousarray(states)
        if not np.isfinite(states).all():
            raise DumpError(f"{self.path}: layer {layer} holds NaN or Inf hidden states")
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the layer
            if self.dtype == "bfloat16":
                values = bfloat16_bits(states)
                finite = np.isfinite(bfloat16_values(values)).all()
            else:
                values = np.ascontiguousarray(states, dtype=np.dtype(self.dtype))
                finite = values.dtype == states.dtype or np.isfinite(values).all()
        if not finite:
            raise DumpError(f"{self.path}: layer {layer} overflows {self.dtype} (max |x| = {np.abs(states).max():.3g})")
        return values

    def close(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        except OSError as error:
            raise disk_full(self.path, error) from error
        self._atomic.__exit__(None, None, None)

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        except OSError:  # e.g. the disk is full: the original error is the one to report
            pass
        finally:
            self._atomic.__exit__(DumpError, None, None)

    def __enter__(self) -> DumpWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@dataclass
class Dump:
    """A memory-mapped dump: metadata and streaming access to layers and the token index."""

    path: Path
    reader: pa.ipc.RecordBatchFileReader
    #: the file's read-only shared mapping (the reader's buffers are zero-copy views of it)
    mapping: mmap.mmap | None = None

    def release(self) -> None:
        """Drop the mapped pages from this process's resident set (``madvise(MADV_DONTNEED)``).

        The pages stay in the OS page cache and are mapped again on the next access, so views
        already handed out stay valid; streaming a dump therefore holds about
        :data:`RELEASE_BYTES` of it resident, not the whole file (peak RSS flat in the dump size).
        """
        if self.mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)

    @property
    def metadata(self) -> dict[str, str]:
        raw = self.reader.schema.metadata or {}
        return {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items() if k.decode().startswith(META_PREFIX)}

    @property
    def n_layers(self) -> int:
        return int(self.metadata["n_layers"])

    @property
    def hidden_size(self) -> int:
        return int(self.metadata["hidden_size"])

    @property
    def num_rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches(INDEX_COLUMNS[:1]))

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream record batches (zero-copy views of the mapped file), optionally only ``columns``.

        Every :data:`RELEASE_BYTES` streamed, the pages read so far are released (:meth:`release`).
        """
        streamed = 0
        for i in range(self.reader.num_record_batches):
            try:
                batch = self.reader.get_batch(i)
                batch.validate()  # cheap (no data scan): catches corrupted offsets/lengths before they are used
            except (pa.ArrowInvalid, OSError) as error:
                raise DumpError(f"dump {self.path} is corrupted (record batch {i}: {error}); "
                                "delete it and rerun the embed step") from None
            yield batch.select(columns) if columns is not None else batch
            streamed += batch.nbytes
            if streamed >= RELEASE_BYTES:
                self.release()
                streamed = 0

    def read_index(self) -> pa.Table:
        """The token index (small: no vectors)."""
        return pa.Table.from_batches(list(self.batches(INDEX_COLUMNS)))


def vectors(column: pa.Array) -> np.ndarray:
    """(n, d) numpy view of a fixed-size-list column (zero copy when the column is not sliced; a bfloat16 dump's
    bits are converted to float32)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    d = column.type.list_size
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)
    return bfloat16_values(values) if values.dtype == np.uint16 else values


def vector_tensor(column: pa.Array, device):
    """A fixed-size-list column as an (n, d) float64 torch tensor on ``device``."""
    import torch

    return torch.from_numpy(np.array(vectors(column), dtype=np.float64)).to(device)


def open_dump(path: str | Path) -> Dump:
    """Memory-map a dump; a file that is not a complete Arrow IPC file raises :class:`DumpError`."""
    path = Path(path)
    if not path.exists():
        raise DumpError(f"dump {path} does not exist")
    try:
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        reader = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapping)))
    except (pa.ArrowInvalid, OSError, ValueError) as error:  # ValueError: an empty file cannot be mapped
        raise DumpError(f"dump {path} is not a readable Arrow IPC file ({error}); delete it and rerun the embed step") from None
    missing = [c for c in INDEX_COLUMNS if c not in reader.schema.names]
    if missing or f"{META_PREFIX}n_layers".encode() not in (reader.schema.metadata or {}):
        raise DumpError(f"dump {path} lacks the tokenuni columns/metadata ({', '.join(missing) or 'metadata'})")
    return Dump(path, reader, mapping)


def validate_dump(path: str | Path) -> dict:
    """Check a dump end to end: layers present, rows aligned, positions contiguous per sentence.

    Returns counts (rows, sentences, layers). Raises :class:`DumpError` naming the file and what is wrong.
    """
    dump = open_dump(path)
    meta = dump.metadata
    layers = [layer_column(i) for i in range(dump.n_layers)]
    absent = [c for c in layers if c not in dump.reader.schema.names]
    if absent:
        raise DumpError(f"dump {path}: metadata says {dump.n_layers} layers but columns {absent} are missing")
    index = dump.read_index()
    sentence = index["sentence_id"].to_numpy()
    position = index["position"].to_numpy()
    starts = np.flatnonzero(np.r_[True, sentence[1:] != sentence[:-1]])
    if len(np.unique(sentence[starts])) != len(starts):
        raise DumpError(f"dump {path}: a sentence's tokens are not contiguous")
    expected = np.arange(len(sentence)) - np.repeat(starts, np.diff(np.r_[starts, len(sentence)]))
    if not np.array_equal(position, expected):
        raise DumpError(f"dump {path}: token positions are not 0..n-1 within each sentence (rows misaligned)")
    if "tokens" in meta and int(meta["tokens"]) != len(sentence):
        raise DumpError(f"dump {path}: metadata says {meta['tokens']} tokens, file has {len(sentence)} rows")
    return {"rows": len(sentence), "sentences": len(starts), "layers": dump.n_layers, "hidden_size": dump.hidden_size}


class ProvenanceError(TokenuniError, ValueError):
    """A dump or sentence file written for another model, model version or corpus than the job expects."""


#: metadata keys a dump or sentence file must agree on with the job that reads it
PROVENANCE_KEYS = ("model_id", "revision", "model_fingerprint", "corpus", "n_layers", "hidden_size")


def check_provenance(path: str | Path, metadata: dict[str, str], expected: dict[str, str] | None,
                     what: str = "dump") -> None:
    """Stop when the file at ``path`` was not written for what the job expects.

    ``metadata``: the file's ``tokenuni.*`` metadata; ``expected``: what the job processes
    (:func:`tokenuni.sources.expected_provenance`: model id, revision, fingerprint of the weights, corpus
    key, layer count, hidden size). Keys the job leaves empty are not compared; a file that lacks a key
    the job expects (written before it was recorded) does not match. The message names both sides and
    the fix: delete the file and rerun, so that the stage that writes it runs again.
    """
    if not expected:
        return
    keys = [key for key in PROVENANCE_KEYS if str(expected.get(key) or "")]
    wrong = [key for key in keys if str(metadata.get(key) or "") != str(expected[key])]
    if wrong:
        holds = "; ".join(f"{key} {metadata.get(key) or '(none)'}" for key in wrong)
        wants = "; ".join(f"{key} {expected[key]}" for key in wrong)
        raise ProvenanceError(f"{what} {path} was written for something else than this job reads: it holds {holds}, "
                              f"but the job expects {wants}. Delete {path} and rerun (the step that writes it runs "
                              "again)")
