"""The normalised corpus table: :data:`CORPUS_SCHEMA`, seeded sampling of whole examples
(:func:`sample_examples`), one row per sentence (:func:`examples_to_table`), its :func:`content_digest`, and
writing / reading the Parquet file (:func:`write_corpus`, :func:`read_corpus`, :func:`corpus_metadata`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenuni.corpora.text import CorpusError, Example
from tokenuni.files import atomic_path, disk_full

CORPUS_SCHEMA = pa.schema([
    pa.field("sentence_id", pa.int64(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("pair_id", pa.int64()),
    pa.field("side", pa.int8()),
    pa.field("score", pa.float64()),
    pa.field("label", pa.string()),
    pa.field("subset", pa.string()),
])


def sample_examples(examples: list[Example], max_sentences: int | None, seed: int) -> list[Example]:
    """A seeded sample of whole examples holding at most ``max_sentences`` sentences, in corpus order."""
    if not examples or max_sentences is None:
        return examples
    per_example = len(examples[0].texts)
    keep = max_sentences // per_example
    if keep >= len(examples):
        return examples
    chosen = np.sort(np.random.default_rng(seed).choice(len(examples), size=keep, replace=False))
    return [examples[i] for i in chosen]


def examples_to_table(examples: list[Example]) -> pa.Table:
    """Flatten examples to one row per sentence with fresh ids."""
    columns: dict[str, list] = {f.name: [] for f in CORPUS_SCHEMA}
    paired = bool(examples) and len(examples[0].texts) == 2
    for pair_id, example in enumerate(examples):
        for side, text in enumerate(example.texts):
            columns["sentence_id"].append(len(columns["sentence_id"]))
            columns["text"].append(text)
            columns["pair_id"].append(pair_id if paired else None)
            columns["side"].append(side if paired else None)
            columns["score"].append(example.score)
            columns["label"].append(example.label)
            columns["subset"].append(example.subset)
    return pa.Table.from_pydict(columns, schema=CORPUS_SCHEMA)


def content_digest(table: pa.Table) -> str:
    """SHA-256 of the table's ids, texts, scores and labels (independent of Parquet encoding)."""
    digest = hashlib.sha256()
    for name in ("sentence_id", "text", "pair_id", "score", "label"):
        digest.update(json.dumps(table[name].to_pylist(), ensure_ascii=False).encode())
    return digest.hexdigest()


def write_corpus(table: pa.Table, out: str | Path, metadata: dict | None = None) -> None:
    """Write the corpus as Parquet through a temporary name; ``metadata`` goes into the schema as ``tokenuni.*``."""
    meta = {f"tokenuni.{k}": v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta["tokenuni.digest"] = content_digest(table)
    table = table.replace_schema_metadata(meta)
    with atomic_path(out) as tmp:
        try:
            pq.write_table(table, tmp)
        except OSError as error:
            raise disk_full(out, error) from error


def read_corpus(path: str | Path) -> pa.Table:
    """Read a corpus written by :func:`write_corpus`, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    table = pq.read_table(path)
    missing = [f.name for f in CORPUS_SCHEMA if f.name not in table.column_names]
    if missing:
        raise CorpusError(f"{path} is not a tokenuni corpus: missing column(s) {missing}")
    return table


def corpus_metadata(path: str | Path) -> dict[str, str]:
    """The ``tokenuni.*`` schema metadata of a corpus file, keys without the prefix."""
    meta = pq.read_schema(path).metadata or {}
    return {k.decode()[len("tokenuni."):]: v.decode() for k, v in meta.items() if k.startswith(b"tokenuni.")}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
