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
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tokenuni.errors import TokenuniError
from tokenuni.files import atomic_path, disk_full

log = logging.getLogger(__name__)

CORPUS_SCHEMA = pa.schema([
    pa.field("sentence_id", pa.int64(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("pair_id", pa.int64()),
    pa.field("side", pa.int8()),
    pa.field("score", pa.float64()),
    pa.field("label", pa.string()),
    pa.field("subset", pa.string()),
])


class CorpusError(TokenuniError, ValueError):
    """A corpus file or hub dataset that cannot be read as its declared format."""


@dataclass
class Example:
    """One row of a corpus before ids are assigned: a sentence, or a pair of sentences."""

    texts: tuple[str, ...]
    score: float | None = None
    label: str | None = None
    subset: str | None = None


@dataclass
class _Lines:
    path: Path
    name: str
    lines: list[tuple[int, str]] = field(default_factory=list)


# -- reading files ---------------------------------------------------------------------------------
def _read_lines(path: Path, name: str) -> _Lines:
    """Decode ``path`` as strict UTF-8, strip a BOM and line endings; error names the file and line."""
    if not path.is_file():
        raise CorpusError(f"mirror file not found: {path}")
    raw = path.read_bytes()
    out = _Lines(path, name)
    offset = 0  # of the line in the file
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            raise CorpusError(f"{path}:{number}: not valid UTF-8 ({error.reason} at byte {error.start} of the line, "
                              f"byte offset {offset + error.start} in the file: "
                              f"{line[error.start:error.end + 3]!r}); re-encode the file as UTF-8") from None
        offset += len(line) + 1
        if number == 1:
            text = text.lstrip("\ufeff")
        out.lines.append((number, text.rstrip("\r")))
    if out.lines and out.lines[-1][1] == "":
        out.lines.pop()  # the final newline
    return out


def _rows(source: _Lines, min_columns: int, header: bool) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated rows (no quoting); the header (if any) skipped; short rows are an error."""
    lines = source.lines[1:] if header else source.lines
    for number, line in lines:
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) < min_columns:
            raise CorpusError(f"{source.path}:{number}: expected at least {min_columns} tab-separated "
                              f"columns, found {len(cells)}")
        yield number, cells


def _float(value: str, source: _Lines, number: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise CorpusError(f"{source.path}:{number}: score {value!r} is not a number") from None


def _header(source: _Lines) -> list[str]:
    return source.lines[0][1].split("\t") if source.lines else []


# -- the mirror formats ----------------------------------------------------------------------------
def read_stsb(source: _Lines, options: dict) -> Iterator[Example]:
    """STS Benchmark ``sts-*.csv``: genre, file, year, id, score, sentence1, sentence2 [, source1, source2]."""
    for number, cells in _rows(source, 7, header=False):
        yield Example((cells[5], cells[6]), score=_float(cells[4], source, number), subset=source.name)


def read_sick(source: _Lines, options: dict) -> Iterator[Example]:
    """SICK ``SICK_*.txt``: pair_ID, sentence_A, sentence_B, relatedness_score, entailment_judgment."""
    header = _header(source)
    if header[:3] != ["pair_ID", "sentence_A", "sentence_B"]:
        raise CorpusError(f"{source.path}:1: not a SICK file (header {header[:3]})")
    for number, cells in _rows(source, 5, header=True):
        yield Example((cells[1], cells[2]), score=_float(cells[3], source, number), label=cells[4],
                      subset=source.name)


def read_sts_semeval(source: _Lines, options: dict) -> Iterator[Example]:
    """SemEval STS 2012-2016 ``STS*.input.<name>.txt`` with its aligned ``.gs.`` file; unscored pairs skipped."""
    gold_path = source.path.with_name(source.path.name.replace(".input.", ".gs."))
    if gold_path == source.path:
        raise CorpusError(f"{source.path}: an STS input file is named STS*.input.<name>.txt")
    gold = _read_lines(gold_path, source.name)
    if len(gold.lines) != len(source.lines):
        raise CorpusError(f"{source.path} has {len(source.lines)} lines but its gold file {gold_path} "
                          f"has {len(gold.lines)}")
    for (number, line), (_, score) in zip(source.lines, gold.lines):
        if not score.strip():
            continue  # an empty gold line marks an unscored pair
        cells = line.split("\t")
        if len(cells) < 2:
            raise CorpusError(f"{source.path}:{number}: expected two tab-separated sentences")
        yield Example((cells[0], cells[1]), score=_float(score.strip(), gold, number), subset=source.name)


def read_sst2(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE SST-2: ``sentence, label`` (train/dev) or ``index, sentence`` (test, unlabelled)."""
    header = _header(source)
    if header[:1] == ["index"]:
        for _, cells in _rows(source, 2, header=True):
            yield Example((cells[1],), subset=source.name)
    else:
        for _, cells in _rows(source, 2, header=True):
            yield Example((cells[0],), label=cells[1], subset=source.name)


def _read_glue_pairs(source: _Lines, first: str, second: str, label: str) -> Iterator[Example]:
    header = _header(source)
    try:
        a, b = header.index(first), header.index(second)
    except ValueError:
        raise CorpusError(f"{source.path}:1: header {header} lacks {first!r} / {second!r}") from None
    y = header.index(label) if label in header else None
    for _, cells in _rows(source, len(header), header=True):
        yield Example((cells[a], cells[b]), label=cells[y] if y is not None else None, subset=source.name)


def read_mrpc(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE MRPC: ``Quality, #1 ID, #2 ID, #1 String, #2 String`` (test: ``index`` for Quality)."""
    return _read_glue_pairs(source, "#1 String", "#2 String", "Quality")


def read_rte(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE RTE: ``index, sentence1, sentence2, label`` (test without label)."""
    return _read_glue_pairs(source, "sentence1", "sentence2", "label")


def read_cola(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE CoLA: no header, ``source, label, original_mark, sentence``; test: ``index, sentence``."""
    if _header(source)[:2] == ["index", "sentence"]:
        for _, cells in _rows(source, 2, header=True):
            yield Example((cells[1],), subset=source.name)
    else:
        for _, cells in _rows(source, 4, header=False):
            yield Example((cells[3],), label=cells[1], subset=source.name)


_WIKITEXT_TITLE = re.compile(r"^\s*=( =)* .* =( =)*\s*$")
_WIKITEXT_SENTENCE_END = re.compile(r"(?<= [.!?]) (?=\S)")


def wikitext_sentences(paragraphs, options: dict) -> Iterator[str]:
    """WikiText paragraphs to sentences; titles and blank lines skipped.

    Options: ``split_sentences`` (default true) splits paragraphs after a space-separated ``.``, ``!``
    or ``?`` token (the release tokenises numbers as ``1 @.@ 5``, so decimals never split);
    ``keep_titles`` (default false); ``min_words`` (default 3) drops shorter sentences.
    """
    split = options.get("split_sentences", True)
    keep_titles = options.get("keep_titles", False)
    min_words = int(options.get("min_words", 3))
    for line in paragraphs:
        line = line.strip()
        if not line or (not keep_titles and _WIKITEXT_TITLE.match(line)):
            continue
        for sentence in (_WIKITEXT_SENTENCE_END.split(line) if split else [line]):
            sentence = sentence.strip()
            if len(sentence.split()) >= min_words:
                yield sentence


def read_wikitext(source: _Lines, options: dict) -> Iterator[Example]:
    """WikiText (``wiki.*.tokens`` / ``.raw``): one paragraph per line, see :func:`wikitext_sentences`."""
    for sentence in wikitext_sentences((line for _, line in source.lines), options):
        yield Example((sentence,), subset=source.name)


def read_lines(source: _Lines, options: dict) -> Iterator[Example]:
    """Plain text, one sentence per line."""
    for _, line in source.lines:
        yield Example((line,), subset=source.name)


MIRROR_FORMATS: dict[str, Callable[[_Lines, dict], Iterator[Example]]] = {
    "stsb": read_stsb,
    "sick": read_sick,
    "sts_semeval": read_sts_semeval,
    "sst2": read_sst2,
    "mrpc": read_mrpc,
    "rte": read_rte,
    "cola": read_cola,
    "wikitext": read_wikitext,
    "lines": read_lines,
}


def read_mirror(fmt: str, files: list[str], root: str | Path, options: dict | None = None) -> list[Example]:
    """Read ``files`` (relative to ``root``) in mirror format ``fmt``, in order."""
    if fmt not in MIRROR_FORMATS:
        raise CorpusError(f"unknown mirror format {fmt!r}; known: {', '.join(MIRROR_FORMATS)}")
    root = Path(root).expanduser()
    examples: list[Example] = []
    for name in files:
        source = _read_lines(root / name, name)
        before = len(examples)
        examples.extend(MIRROR_FORMATS[fmt](source, options or {}))
        log.info("read %d %s examples from %s", len(examples) - before, fmt, root / name)
    return examples


def read_hub(hub: dict) -> list[Example]:
    """Load ``hub['id']`` / ``config`` / ``split`` with :func:`datasets.load_dataset` and map its columns."""
    import datasets

    columns = hub.get("columns") or {}
    if "text" in columns:
        text_columns = [columns["text"]]
    elif "text_a" in columns and "text_b" in columns:
        text_columns = [columns["text_a"], columns["text_b"]]
    else:
        raise CorpusError(f"hub corpus {hub['id']}: columns must map 'text', or 'text_a' and 'text_b'")
    try:
        data = datasets.load_dataset(hub["id"], hub.get("config"), split=hub["split"], revision=hub.get("revision"))
    except (OSError, ValueError) as error:  # ConnectionError offline / unreachable, FileNotFoundError: no such dataset
        raise CorpusError(f"hub corpus {hub['id']} ({hub['split']}): cannot load it from the Hugging Face hub "
                          f"({type(error).__name__}: {error}); provide its files in the data mirror "
                          "(TOKENUNI_DATA or data_mirror) or network access to the hub") from error
    wanted = text_columns + [columns[k] for k in ("score", "label") if k in columns]
    missing = [c for c in wanted if c not in data.column_names]
    if missing:
        raise CorpusError(f"hub corpus {hub['id']} ({hub['split']}) has no column(s) {missing}; "
                          f"it has {data.column_names}")
    examples = []
    for row in data:
        score = row[columns["score"]] if "score" in columns else None
        label = row[columns["label"]] if "label" in columns else None
        examples.append(Example(tuple(str(row[c] or "") for c in text_columns),
                                score=None if score is None else float(score),
                                label=None if label is None else str(label), subset=hub["split"]))
    return examples


# -- sampling and writing --------------------------------------------------------------------------
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


def import_corpus(spec: dict, mirror_root: str | Path | None, out: str | Path) -> dict:
    """Import the corpus described by ``spec`` (a config ``corpora`` entry plus ``name``) into ``out``.

    The mirror is used when it is set and holds every listed file; otherwise the hub entry.
    Returns a summary: source, files read (path and sha256), rows before and after sampling, pairs.
    """
    from tokenuni.sources import corpus_uses_mirror, mirror_files

    name = spec.get("name", Path(out).stem)
    mirror_root = mirror_root or None
    files: list[dict] = []
    if corpus_uses_mirror(spec, mirror_root):
        mirror = spec["mirror"]
        examples = read_mirror(mirror["format"], mirror["files"], mirror_root, mirror.get("options"))
        source = f"mirror:{mirror['format']}"
        files = [{"path": str(p), "sha256": _sha256(p)} for p in mirror_files(spec, mirror_root)]
    elif spec.get("hub"):
        try:
            examples = read_hub(spec["hub"])
        except CorpusError as error:
            raise CorpusError(f"corpus '{name}': {error}") from error.__cause__
        source = f"hub:{spec['hub']['id']}"
        if (spec.get("mirror") or {}).get("format") == "wikitext":  # same sentences online and offline
            options = spec["mirror"].get("options") or {}
            examples = [Example((s,), subset=e.subset) for e in examples
                        for s in wikitext_sentences([e.texts[0]], options)]
    else:
        listed = mirror_files(spec, mirror_root)
        why = (f"missing mirror file(s): {', '.join(str(p) for p in listed if not p.exists())}" if listed
               else "no data mirror set (TOKENUNI_DATA or data_mirror)")
        raise CorpusError(f"corpus '{name}': {why}, and it has no hub entry")
    read = ", ".join(item["path"] for item in files) or source
    if not examples:
        raise CorpusError(f"corpus '{name}': 0 sentences in {read} (format {source})")

    rows_before = sum(len(e.texts) for e in examples)
    if spec.get("drop_empty", True):
        examples = [e for e in examples if all(t.strip() for t in e.texts)]
    dropped = rows_before - sum(len(e.texts) for e in examples)
    if dropped:
        log.warning("corpus '%s': dropped %d of %d sentences as empty or whitespace-only (or their pair partner)",
                    name, dropped, rows_before)
    if not examples:
        raise CorpusError(f"corpus '{name}': 0 sentences left after dropping {dropped} of {rows_before} read from "
                          f"{read} as empty or whitespace-only")
    examples = sample_examples(examples, spec.get("max_sentences"), int(spec.get("seed", 0)))
    table = examples_to_table(examples)
    summary = {
        "name": name,
        "source": source,
        "files": files,
        "rows_before": rows_before,
        "rows_dropped_empty": dropped,
        "rows_after": table.num_rows,
        "pairs": len(examples) if table.num_rows and table["pair_id"][0].is_valid else 0,
    }
    write_corpus(table, out, {"name": name, "source": source, "seed": int(spec.get("seed", 0)),
                              "max_sentences": spec.get("max_sentences"), "rows_before": rows_before,
                              "rows_dropped_empty": dropped, "files": files})
    return summary
