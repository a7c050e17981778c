"""What a corpus row is and how a mirror file's lines become one: :class:`CorpusError`, :class:`Example`,
:func:`has_visible_text` (what counts as a text), the score and label rules of each format (:data:`SCORE_RANGES`,
:data:`FORMAT_LABELS`), :func:`read_file_lines` (strict UTF-8, file and line in every error) and the row, field,
score, label and header helpers the format readers (:mod:`tokenuni.corpora.readers`) share.
"""
from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tokenuni.errors import TokenuniError


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
