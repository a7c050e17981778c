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
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Iterator

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
    """One row of a corpus before ids are assigned: a sentence, or a pair of sentences.

    ``where`` (``<file>:<line>`` or ``hub <id> (<split>) row <i>``) and ``fields`` (the names of the
    text fields, in ``texts`` order) say where it came from, for messages about its texts.
    """

    texts: tuple[str, ...]
    score: float | None = None
    label: str | None = None
    subset: str | None = None
    where: str | None = None
    fields: tuple[str, ...] | None = None


# -- what counts as a text, a number, a label -------------------------------------------------------
#: Unicode categories that show nothing on their own: separators (Zs, Zl, Zp), controls (Cc), format
#: characters (Cf: zero-width space and joiners, soft hyphen, BOM, bidi marks), surrogates (Cs) and
#: combining marks (Mn, Me), which only modify a preceding character
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Mn", "Me"})
#: letters and symbols that render as blank space: the Hangul fillers and the blank Braille pattern
_INVISIBLE_CHARACTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_text(text: str | None) -> bool:
    """True when ``text`` shows at least one character after NFKC normalisation.

    NFKC (not NFC) so that compatibility forms are judged by what they display as (the ideographic
    space, fullwidth forms, ...). Whitespace, controls, format characters such as zero-width spaces,
    lone combining marks and the blank-looking fillers of :data:`_INVISIBLE_CHARACTERS` do not
    count. The text itself is never changed: this only decides whether it is empty.
    """
    if not text:
        return False
    return any(unicodedata.category(c) not in _INVISIBLE_CATEGORIES and c not in _INVISIBLE_CHARACTERS
               for c in unicodedata.normalize("NFKC", text))


#: a decimal number as the release files write one (no "nan", "inf", "1_000" or hexadecimal)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

#: documented range of each format's gold score (inclusive)
SCORE_RANGES: dict[str, tuple[float, float, str]] = {
    "stsb": (0.0, 5.0, "STS-B"),
    "sts_semeval": (0.0, 5.0, "SemEval STS"),
    "sick": (1.0, 5.0, "SICK relatedness"),
}
#: the label set of each labelled format, in class-id order (GLUE / Hugging Face convention)
FORMAT_LABELS: dict[str, tuple[str, ...]] = {
    "sick": ("NEUTRAL", "ENTAILMENT", "CONTRADICTION"),
    "sst2": ("0", "1"),
    "mrpc": ("0", "1"),
    "rte": ("entailment", "not_entailment"),
    "cola": ("0", "1"),
}


@dataclass
class _Lines:
    path: Path
    name: str
    lines: list[tuple[int, str]] = field(default_factory=list)
    #: rows skipped as the format documents (reason -> count)
    skipped: dict[str, int] = field(default_factory=dict)

    def at(self, number: int) -> str:
        return f"{self.path}:{number}"

    def error(self, number: int, message: str) -> CorpusError:
        return CorpusError(f"{self.path}:{number}: {message}")

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


# -- reading files ---------------------------------------------------------------------------------
def read_file_lines(path: Path, name: str) -> _Lines:
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


def _blank(line: str) -> bool:
    """A line with nothing on it (a row whose fields are all empty still has its tabs: not blank)."""
    return "\t" not in line and not line.strip()


def _table_rows(source: _Lines, header: bool) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated rows (no quoting, so a tab always separates fields); the header (if any) and blank
    lines skipped (blank lines counted as ``blank_line``)."""
    for number, line in (source.lines[1:] if header else source.lines):
        if _blank(line):
            source.skip("blank_line")
            continue
        yield number, line.split("\t")


def _field_count_error(source: _Lines, number: int, fields: tuple[str, ...], found: int, also: str = "") -> CorpusError:
    hint = ("; a tab inside a text would shift every later field (the file is read without quoting, so each tab "
            "separates two fields): remove it" if found > len(fields) else "")
    return source.error(number, f"expected {len(fields)} tab-separated fields ({', '.join(fields)}{also}), "
                                f"found {found}{hint}")


def _rows(source: _Lines, fields: tuple[str, ...], header: bool) -> Iterator[tuple[int, list[str]]]:
    """Rows of exactly ``len(fields)`` fields; any other count is an error naming the file and line."""
    for number, cells in _table_rows(source, header):
        if len(cells) != len(fields):
            raise _field_count_error(source, number, fields, len(cells))
        yield number, cells


def _score(value: str, source: _Lines, number: int, field_name: str, column: int, fmt: str) -> float:
    """A gold score: a decimal number, finite, within the format's documented range."""
    low, high, scale = SCORE_RANGES[fmt]
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        raise source.error(number, f"{field_name} {value!r} (field {column}) is not a number")
    score = float(text)
    if not math.isfinite(score):
        raise source.error(number, f"{field_name} {value!r} (field {column}) is not a finite number")
    if not low <= score <= high:
        raise source.error(number, f"{field_name} {value!r} (field {column}) is outside the {scale} range "
                                   f"{low:g}-{high:g}")
    return score


def _label(value: str, source: _Lines, number: int, field_name: str, column: int, labels) -> str:
    if value not in labels:
        raise source.error(number, f"{field_name} {value!r} (field {column}) is not one of the labels "
                                   f"{', '.join(labels)}")
    return value


def _example(source: _Lines, number: int, texts, fields, **values) -> Example:
    return Example(tuple(texts), subset=source.name, where=source.at(number), fields=tuple(fields), **values)


def _header(source: _Lines) -> list[str]:
    return source.lines[0][1].split("\t") if source.lines else []


# -- the mirror formats ----------------------------------------------------------------------------
STSB_FIELDS = ("genre", "filename", "year", "id", "score", "sentence1", "sentence2")


def read_stsb(source: _Lines, options: dict) -> Iterator[Example]:
    """STS Benchmark ``sts-*.csv``: genre, filename, year, id, score (0-5), sentence1, sentence2.

    The release's readme allows "license-related fields after sentence2": its 2016 rows (answer-answer,
    headlines) carry two, source1 and source2. So a row has 7 fields, or 9 on a 2016 row; any other
    count (a tab inside a sentence) is an error naming the file and line.
    """
    for number, cells in _table_rows(source, header=False):
        if len(cells) == 9 and not cells[2].startswith("2016"):
            raise _field_count_error(source, number, STSB_FIELDS, 9, "; 9 only on the 2016 rows, which add source1, "
                                     f"source2, and this row's year is {cells[2]!r}")
        if len(cells) not in (7, 9):
            raise _field_count_error(source, number, STSB_FIELDS, len(cells),
                                     "; 9 on the 2016 rows, which add source1, source2")
        yield _example(source, number, cells[5:7], STSB_FIELDS[5:7],
                       score=_score(cells[4], source, number, "score", 5, "stsb"))


SICK_FIELDS = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")


def read_sick(source: _Lines, options: dict) -> Iterator[Example]:
    """SICK ``SICK_*.txt``: pair_ID, sentence_A, sentence_B, relatedness_score (1-5), entailment_judgment."""
    header = _header(source)
    if header[:3] != ["pair_ID", "sentence_A", "sentence_B"]:
        raise CorpusError(f"{source.path}:1: not a SICK file (header {header[:3]})")
    for number, cells in _rows(source, SICK_FIELDS, header=True):
        yield _example(source, number, cells[1:3], SICK_FIELDS[1:3],
                       score=_score(cells[3], source, number, "relatedness_score", 4, "sick"),
                       label=_label(cells[4], source, number, "entailment_judgment", 5, FORMAT_LABELS["sick"]))


def read_sts_semeval(source: _Lines, options: dict) -> Iterator[Example]:
    """SemEval STS 2012-2016 ``STS*.input.<name>.txt`` with its aligned ``.gs.`` file.

    Input rows: sentence1, sentence2 (the raw ``STS2016.input.*`` files add source1, source2). Gold:
    one score (0-5) per line; an empty gold line marks an unscored pair, which the task description
    says to skip: skipped and counted (``unscored_pair``).
    """
    gold_path = source.path.with_name(source.path.name.replace(".input.", ".gs."))
    if gold_path == source.path:
        raise CorpusError(f"{source.path}: an STS input file is named STS*.input.<name>.txt")
    gold = read_file_lines(gold_path, source.name)
    if len(gold.lines) != len(source.lines):
        raise CorpusError(f"{source.path} has {len(source.lines)} lines but its gold file {gold_path} "
                          f"has {len(gold.lines)}")
    fields = ("sentence1", "sentence2")
    if source.path.name.startswith("STS2016."):
        fields += ("source1", "source2")
    for (number, line), (_, score) in zip(source.lines, gold.lines):
        if not score.strip():
            source.skip("unscored_pair")
            continue
        cells = line.split("\t")
        if len(cells) != len(fields):
            raise _field_count_error(source, number, fields, len(cells))
        yield _example(source, number, cells[:2], fields[:2],
                       score=_score(score, gold, number, "gold score", 1, "sts_semeval"))


def read_sst2(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE SST-2: ``sentence, label`` (train/dev, label 0/1) or ``index, sentence`` (test, unlabelled)."""
    header = _header(source)
    if header == ["index", "sentence"]:
        for number, cells in _rows(source, ("index", "sentence"), header=True):
            yield _example(source, number, cells[1:], ("sentence",))
    elif header == ["sentence", "label"]:
        for number, cells in _rows(source, ("sentence", "label"), header=True):
            yield _example(source, number, cells[:1], ("sentence",),
                           label=_label(cells[1], source, number, "label", 2, FORMAT_LABELS["sst2"]))
    else:
        raise CorpusError(f"{source.path}:1: not a GLUE SST-2 file (header {header}; expected sentence, label "
                          "or index, sentence)")


def read_glue_pairs(source: _Lines, first: str, second: str, label: str,
                     labels: tuple[str, ...] | None = None) -> Iterator[Example]:
    """A GLUE file with a header: the pair and the label found by column name; every row has the header's
    field count; labels (when the file has the label column and ``labels`` is given) in that set."""
    header = _header(source)
    try:
        a, b = header.index(first), header.index(second)
    except ValueError:
        raise CorpusError(f"{source.path}:1: header {header} lacks {first!r} / {second!r}") from None
    y = header.index(label) if label in header else None
    for number, cells in _rows(source, tuple(header), header=True):
        value = None
        if y is not None:
            value = cells[y] if labels is None else _label(cells[y], source, number, label, y + 1, labels)
        yield _example(source, number, (cells[a], cells[b]), (first, second), label=value)


def read_mrpc(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE MRPC: ``Quality, #1 ID, #2 ID, #1 String, #2 String`` (test: ``index`` for Quality)."""
    return read_glue_pairs(source, "#1 String", "#2 String", "Quality", FORMAT_LABELS["mrpc"])


def read_rte(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE RTE: ``index, sentence1, sentence2, label`` (test without label)."""
    return read_glue_pairs(source, "sentence1", "sentence2", "label", FORMAT_LABELS["rte"])


COLA_FIELDS = ("source", "label", "original_mark", "sentence")


def read_cola(source: _Lines, options: dict) -> Iterator[Example]:
    """GLUE CoLA: no header, ``source, label, original_mark, sentence``; test: ``index, sentence``."""
    if _header(source)[:2] == ["index", "sentence"]:
        for number, cells in _rows(source, ("index", "sentence"), header=True):
            yield _example(source, number, cells[1:], ("sentence",))
    else:
        for number, cells in _rows(source, COLA_FIELDS, header=False):
            yield _example(source, number, cells[3:], ("sentence",),
                           label=_label(cells[1], source, number, "label", 2, FORMAT_LABELS["cola"]))


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
    for number, line in source.lines:  # paragraph by paragraph: the same sentences, with their line
        for sentence in wikitext_sentences([line], options):
            yield _example(source, number, (sentence,), ("paragraph",))


def read_lines(source: _Lines, options: dict) -> Iterator[Example]:
    """Plain text, one sentence per line."""
    for number, line in source.lines:
        yield _example(source, number, (line,), ("line",))


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


def read_mirror(fmt: str, files: list[str], root: str | Path, options: dict | None = None,
                skipped: dict[str, int] | None = None) -> list[Example]:
    """Read ``files`` (relative to ``root``) in mirror format ``fmt``, in order, checking every row.

    Rows the format itself says to skip (SemEval's unscored pairs, blank lines of a table) are
    skipped and counted into ``skipped`` (reason -> rows) when it is given; anything else that does
    not fit the format is a :class:`CorpusError` naming the file, the line and the field.
    """
    if fmt not in MIRROR_FORMATS:
        raise CorpusError(f"unknown mirror format {fmt!r}; known: {', '.join(MIRROR_FORMATS)}")
    root = Path(root).expanduser()
    examples: list[Example] = []
    for name in files:
        source = read_file_lines(root / name, name)
        before = len(examples)
        examples.extend(MIRROR_FORMATS[fmt](source, options or {}))
        log.info("read %d %s examples from %s%s", len(examples) - before, fmt, root / name,
                 "".join(f", skipped {n} {reason.replace('_', ' ')}(s)" for reason, n in source.skipped.items()))
        if skipped is not None:
            for reason, n in source.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
    return examples


def _hub_score(value, where: str, column: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise CorpusError(f"{where}: score column {column!r} holds {value!r}, not a number") from None
    if isinstance(value, bool) or not math.isfinite(score):
        raise CorpusError(f"{where}: score column {column!r} holds {value!r}, not a finite number")
    return score


def read_hub(hub: dict) -> list[Example]:
    """Load ``hub['id']`` / ``config`` / ``split`` with :func:`datasets.load_dataset` and map its columns.

    Every row is checked: a mapped score must be a finite number (the hub copies use their own scales,
    e.g. 0-1 for sentence-transformers/stsb, so no range is imposed); texts are strings (a missing
    text becomes empty, then ``drop_empty`` decides).
    """
    import datasets

    columns = hub.get("columns") or {}
    if "text" in columns:
        text_keys = ["text"]
    elif "text_a" in columns and "text_b" in columns:
        text_keys = ["text_a", "text_b"]
    else:
        raise CorpusError(f"hub corpus {hub['id']}: columns must map 'text', or 'text_a' and 'text_b'")
    text_columns = [columns[k] for k in text_keys]
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
    for index, row in enumerate(data):
        where = f"hub corpus {hub['id']} ({hub['split']}) row {index}"
        score = _hub_score(row[columns["score"]], where, columns["score"]) if "score" in columns else None
        label = row[columns["label"]] if "label" in columns else None
        examples.append(Example(tuple("" if row[c] is None else str(row[c]) for c in text_columns), score=score,
                                label=None if label is None else str(label), subset=hub["split"], where=where,
                                fields=tuple(text_columns)))
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


#: rows a format documents as skipped, as the corpus summary and its warning name them
SKIP_REASONS = {
    "unscored_pair": "unscored pair(s) (an empty line in the SemEval gold file marks a pair without a gold score)",
    "blank_line": "blank line(s)",
}


def _locations(examples: list[Example], limit: int = 3) -> str:
    """``file:line (field)`` of the first texts without visible characters in ``examples``."""
    places = []
    for example in examples:
        for index, text in enumerate(example.texts):
            if not has_visible_text(text) and len(places) < limit:
                field_name = example.fields[index] if example.fields else f"text {index + 1}"
                places.append(f"{example.where or example.subset} ({field_name})")
    return ", ".join(places)


def load_examples(spec: dict, mirror_root: str | Path | None) -> tuple[list[Example], dict]:
    """The examples of the corpus described by ``spec`` (a config ``corpora`` entry plus ``name``), every
    row checked, empty texts dropped (``drop_empty``), sampled (``max_sentences``), and their summary.

    The mirror is used when it is set and holds every listed file; otherwise the hub entry. A ``texts`` key
    (a list of strings, not a config key: :func:`tokenuni.measure` in a notebook) is read instead of both, one
    sentence per string, checked and sampled as a file's lines would be. A text
    without visible characters (:func:`has_visible_text`) counts as empty. This is everything
    :func:`import_corpus` does short of writing, so ``tokenuni check`` runs it too.
    """
    from tokenuni.sources import corpus_uses_mirror, mirror_files

    name = spec.get("name", "corpus")
    mirror_root = mirror_root or None
    files: list[dict] = []
    skipped: dict[str, int] = {}
    if spec.get("texts") is not None:  # in-memory texts (tokenuni.measure in a notebook), not a config entry
        examples = [Example((str(text),), subset=name, where=f"texts[{index}]", fields=("text",))
                    for index, text in enumerate(spec["texts"])]
        source = "texts"
    elif corpus_uses_mirror(spec, mirror_root):
        mirror = spec["mirror"]
        examples = read_mirror(mirror["format"], mirror["files"], mirror_root, mirror.get("options"), skipped)
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
            examples = [Example((s,), subset=e.subset, where=e.where, fields=e.fields) for e in examples
                        for s in wikitext_sentences([e.texts[0]], options)]
    else:
        listed = mirror_files(spec, mirror_root)
        why = (f"missing mirror file(s): {', '.join(str(p) for p in listed if not p.exists())}" if listed
               else "no data mirror set (TOKENUNI_DATA or data_mirror)")
        raise CorpusError(f"corpus '{name}': {why}, and it has no hub entry")
    read = ", ".join(item["path"] for item in files) or source
    if skipped:
        log.warning("corpus '%s': skipped %s, as its format says to", name,
                    "; ".join(f"{n:,} {SKIP_REASONS.get(reason, reason)}" for reason, n in skipped.items()))
    if not examples:
        raise CorpusError(f"corpus '{name}': 0 sentences in {read} (format {source})")

    rows_before = sum(len(e.texts) for e in examples)
    visible = [all(has_visible_text(t) for t in e.texts) for e in examples]
    empty = [e for e, ok in zip(examples, visible) if not ok]
    whitespace_only = all(not t.strip() for e in empty for t in e.texts if not has_visible_text(t))
    what = "empty or whitespace-only" if whitespace_only else "empty, whitespace-only or without visible characters"
    if spec.get("drop_empty", True):
        examples = [e for e, ok in zip(examples, visible) if ok]
    dropped = rows_before - sum(len(e.texts) for e in examples)
    if dropped:
        log.warning("corpus '%s': dropped %d of %d sentences as %s (or their pair partner); first: %s",
                    name, dropped, rows_before, what, _locations(empty))
    if not examples:
        raise CorpusError(f"corpus '{name}': 0 sentences left after dropping {dropped} of {rows_before} read from "
                          f"{read} as {what}")
    max_sentences = spec.get("max_sentences")
    per_example = len(examples[0].texts)
    if max_sentences is not None and max_sentences < per_example:
        raise CorpusError(f"corpus '{name}': max_sentences {max_sentences} keeps no pair (each pair is "
                          f"{per_example} sentences and pairs are kept whole); set corpora.{name}.max_sentences to "
                          f"at least {per_example}, or null for all {len(examples)} pairs")
    examples = sample_examples(examples, max_sentences, int(spec.get("seed", 0)))
    paired = per_example == 2
    summary = {
        "name": name,
        "source": source,
        "files": files,
        "rows_before": rows_before,
        "rows_dropped_empty": dropped,
        "rows_skipped": skipped,
        "rows_after": sum(len(e.texts) for e in examples),
        "pairs": len(examples) if paired else 0,
        "scored": bool(examples) and all(e.score is not None for e in examples),
    }
    return examples, summary


def import_corpus(spec: dict, mirror_root: str | Path | None, out: str | Path) -> dict:
    """Import the corpus described by ``spec`` (a config ``corpora`` entry plus ``name``) into ``out``.

    See :func:`load_examples`. Returns a summary: source, files read (path and sha256), rows before
    and after sampling, rows dropped as empty, rows skipped as the format documents (by reason), pairs.
    """
    spec = {"name": Path(out).stem, **spec}
    examples, summary = load_examples(spec, mirror_root)
    table = examples_to_table(examples)
    write_corpus(table, out, {"name": summary["name"], "source": summary["source"], "seed": int(spec.get("seed", 0)),
                              "max_sentences": spec.get("max_sentences"), "rows_before": summary["rows_before"],
                              "rows_dropped_empty": summary["rows_dropped_empty"],
                              "rows_skipped": summary["rows_skipped"], "files": summary["files"]})
    return summary
