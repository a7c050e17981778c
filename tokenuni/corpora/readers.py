"""The mirror formats: one reader per release format (STS-B, SICK, SemEval STS, GLUE SST-2 / MRPC / RTE /
CoLA, WikiText, plain lines), :data:`MIRROR_FORMATS` (format name -> reader) and :func:`read_mirror`, which reads
a corpus's files in their format, checking every row.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from tokenuni.corpora.text import (FORMAT_LABELS, CorpusError, Example, _example, _field_count_error, _header, _label,
                                   _Lines, _rows, _score, _table_rows, read_file_lines)

log = logging.getLogger("tokenuni.corpora")


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
