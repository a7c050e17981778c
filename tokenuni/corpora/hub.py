"""A corpus from the Hugging Face hub (:func:`read_hub`): the dataset's columns mapped to texts, score and
label, every row checked."""
from __future__ import annotations

import math

from tokenuni.corpora.text import CorpusError, Example


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
