"""A corpus from its config entry: :func:`load_examples` (mirror, hub or in-memory texts; empty texts dropped;
sampled; summarised) and :func:`import_corpus` (the same, written as the corpus table)."""
from __future__ import annotations

import logging
from pathlib import Path

from tokenuni.corpora.hub import read_hub
from tokenuni.corpora.readers import read_mirror, wikitext_sentences
from tokenuni.corpora.table import _sha256, examples_to_table, sample_examples, write_corpus
from tokenuni.corpora.text import CorpusError, Example, has_visible_text

log = logging.getLogger("tokenuni.corpora")


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
