"""Import a corpus into one normalised Parquet table.

A corpus comes from a local mirror (files in their original release format, read without CSV
quoting) when the mirror has them, and from the Hugging Face hub otherwise. Either way it becomes
one table with the columns of :data:`CORPUS_SCHEMA`, one row per sentence:

``sentence_id``  0..n-1 in corpus order (after sampling)
``text``         the sentence (or paragraph, or line)
``pair_id``      the pair a sentence belongs to, for paired corpora (STS, SICK, MRPC, RTE); else null
``side``         0 for the first sentence of a pair, 1 for the second; else null
``score``        gold similarity score of the pair (STS 0-5, SICK 1-5); else null
``label``        gold label as a string (GLUE labels, SICK entailment); else null
``subset``       the mirror file (relative path) or hub split the row came from

Sampling to ``max_sentences`` is seeded and keeps pairs whole.

Every row is checked where it enters, by its format: the exact field count (a tab inside a text is an
error, never a shifted column), every score a finite decimal number in the format's documented range
(:data:`SCORE_RANGES`), every label in its label set (:data:`FORMAT_LABELS`). A violation raises
:class:`CorpusError` naming the file, the line and the field; rows the format itself says to skip
(SemEval's unscored pairs, blank lines) are skipped and counted (``rows_skipped``). A text without a
visible character (:func:`has_visible_text`, NFKC) counts as empty: ``drop_empty`` drops it with its
pair partner, counted and warned with its first locations.

The modules (every name below is importable from ``tokenuni.corpora``; they log as ``tokenuni.corpora``):

* :mod:`.text` -- :class:`CorpusError`, :class:`Example`, :func:`has_visible_text`, :data:`SCORE_RANGES`,
  :data:`FORMAT_LABELS`, :func:`read_file_lines` and the row / field / score / label helpers of the readers;
* :mod:`.readers` -- one reader per mirror format (:data:`MIRROR_FORMATS`), :func:`wikitext_sentences` and
  :func:`read_mirror`;
* :mod:`.hub` -- :func:`read_hub`, a corpus from the Hugging Face hub;
* :mod:`.table` -- :data:`CORPUS_SCHEMA`, :func:`sample_examples`, :func:`examples_to_table`,
  :func:`content_digest`, :func:`write_corpus`, :func:`read_corpus`, :func:`corpus_metadata`;
* :mod:`.load` -- :func:`load_examples` (everything short of writing) and :func:`import_corpus`.
"""
from __future__ import annotations

from tokenuni.corpora.hub import read_hub
from tokenuni.corpora.load import SKIP_REASONS, import_corpus, load_examples
from tokenuni.corpora.readers import (COLA_FIELDS, MIRROR_FORMATS, SICK_FIELDS, STSB_FIELDS, read_cola, read_glue_pairs,
                                      read_lines, read_mirror, read_mrpc, read_rte, read_sick, read_sst2, read_stsb,
                                      read_sts_semeval, read_wikitext, wikitext_sentences)
from tokenuni.corpora.table import (CORPUS_SCHEMA, content_digest, corpus_metadata, examples_to_table, read_corpus,
                                    sample_examples, write_corpus)
from tokenuni.corpora.text import (FORMAT_LABELS, SCORE_RANGES, CorpusError, Example, has_visible_text,
                                   read_file_lines)

__all__ = [
    "CorpusError", "Example", "has_visible_text", "SCORE_RANGES", "FORMAT_LABELS", "read_file_lines",
    "STSB_FIELDS", "SICK_FIELDS", "COLA_FIELDS", "MIRROR_FORMATS", "read_stsb", "read_sick", "read_sts_semeval",
    "read_sst2", "read_glue_pairs", "read_mrpc", "read_rte", "read_cola", "wikitext_sentences", "read_wikitext",
    "read_lines", "read_mirror",
    "read_hub",
    "CORPUS_SCHEMA", "sample_examples", "examples_to_table", "content_digest", "write_corpus", "read_corpus",
    "corpus_metadata",
    "SKIP_REASONS", "load_examples", "import_corpus",
]
