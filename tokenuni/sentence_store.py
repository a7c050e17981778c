"""Sentence-embedding files: the format, beside the dump's (:mod:`tokenuni.store`), opened once.

Layout (uncompressed Arrow IPC, one row per corpus sentence in corpus order): the corpus columns
:data:`CORPUS_COLUMNS` (``sentence_id, pair_id, side, score, label, subset``, typed as in
:data:`tokenuni.corpora.CORPUS_SCHEMA`) and one ``pooling_<name>: fixed_size_list<float32>[d]`` column
per pooling; schema metadata ``tokenuni.*`` with the model, the corpus, the poolings (JSON, absolute
layer indices) and the layer convention.

:func:`write_sentences` writes a file; :func:`open_sentences` reads and validates one once and returns a
:class:`SentenceFile` handle (metadata, provenance check, poolings, vectors, corpus columns). The model
run that pools the vectors is :mod:`tokenuni.sentences`.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa

from tokenuni.corpora import CORPUS_SCHEMA
from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path
from tokenuni.store import META_PREFIX, check_provenance, vectors

CORPUS_COLUMNS = ["sentence_id", "pair_id", "side", "score", "label", "subset"]
POOLING_PREFIX = "pooling_"


class SentenceEmbeddingError(TokenuniError, ValueError):
    """A pooling spec or sentence-embedding file that cannot be used; the message names it."""


def pooling_column(name: str) -> str:
    return f"{POOLING_PREFIX}{name}"


def write_sentences(out_path, corpus_columns: pa.Table, pooled: dict[str, np.ndarray],
                    metadata: dict[str, str]) -> None:
    """Write the corpus columns and one float32 vector column per pooling, atomically, uncompressed."""
    fields = [CORPUS_SCHEMA.field(name) for name in CORPUS_COLUMNS]
    columns = [corpus_columns[name].cast(field.type) for name, field in zip(CORPUS_COLUMNS, fields)]
    for name, values in pooled.items():
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.ndim != 2 or len(values) != corpus_columns.num_rows:
            raise SentenceEmbeddingError(f"{out_path}: pooling {name!r} has shape {values.shape}, "
                                         f"expected ({corpus_columns.num_rows}, d)")
        d = values.shape[1]
        fields.append(pa.field(pooling_column(name), pa.list_(pa.float32(), d), nullable=False))
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=pa.float32()), d))
    schema = pa.schema(fields, metadata={f"{META_PREFIX}{k}": v for k, v in metadata.items()})
    table = pa.Table.from_arrays(columns, schema=schema)
    with atomic_path(out_path) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:  # uncompressed
            writer.write_table(table, max_chunksize=65536)


class SentenceFile:
    """One sentence-embedding file, read and validated once (:func:`open_sentences`)."""

    def __init__(self, path: Path, table: pa.Table):
        self.path = path
        #: the whole file (memory-mapped): corpus columns and every pooling column
        self.table = table
        raw = table.schema.metadata or {}
        #: the ``tokenuni.*`` metadata, keys without the prefix, values as stored (``poolings`` and
        #: ``versions`` are JSON strings), like :func:`tokenuni.corpora.corpus_metadata`
        self.metadata: dict[str, str] = {k.decode()[len(META_PREFIX):]: v.decode() for k, v in raw.items()
                                         if k.decode().startswith(META_PREFIX)}

    def check(self, expected: dict | None) -> SentenceFile:
        """Stop when the file was not written for ``expected`` (:func:`tokenuni.store.check_provenance`)."""
        check_provenance(self.path, self.metadata, expected, what="sentence-embedding file")
        return self

    @cached_property
    def poolings(self) -> dict:
        """The file's poolings (name -> resolved spec: pool, absolute layers, special_tokens ...)."""
        return json.loads(self.metadata.get("poolings", "{}"))

    def pooling_layers(self, pooling: str) -> str:
        """The resolved layer indices of a pooling, joined by "+" ("0+6"; "" when the file does not say)."""
        layers = (self.poolings.get(pooling) or {}).get("layers") or []
        return "+".join(str(layer) for layer in layers)

    @property
    def sampled(self) -> bool:
        """Whether the corpus was a sample (``max_sentences`` set), so that a release may be incomplete."""
        return self.metadata.get("corpus_max_sentences", "null") not in ("null", "")

    def corpus_columns(self) -> pa.Table:
        return self.table.select(CORPUS_COLUMNS)

    def vectors(self, pooling: str) -> np.ndarray:
        """The (n, d) float64 vectors of ``pooling``; a pooling the file lacks raises, naming those it has."""
        column = pooling_column(pooling)
        if column not in self.table.column_names:
            available = [c[len(POOLING_PREFIX):] for c in self.table.column_names if c.startswith(POOLING_PREFIX)]
            raise SentenceEmbeddingError(f"{self.path} has no pooling {pooling!r}; it has {', '.join(available)}")
        return vectors(self.table[column]).astype(np.float64)


def open_sentences(path) -> SentenceFile:
    """Read a sentence-embedding file (memory-mapped) and check that it is one; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise SentenceEmbeddingError(f"sentence-embedding file {path} does not exist")
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise SentenceEmbeddingError(f"{path} is not a readable Arrow IPC file ({error})") from None
    if f"{META_PREFIX}poolings".encode() not in (table.schema.metadata or {}):
        raise SentenceEmbeddingError(
            f"{path} is not a tokenuni sentence-embedding file (no {META_PREFIX}poolings metadata)")
    return SentenceFile(path, table)
