"""Tidy tables (Parquet, or TSV for reading by eye): atomic writes, merging, reading."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tokenuni.files import atomic_path


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Write ``table`` as Parquet (``.parquet``) or TSV (``.tsv``), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".tsv":
            table.to_csv(tmp, sep="\t", index=False)
        else:
            table.to_parquet(tmp, index=False)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix == ".tsv":
        return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
    return pd.read_parquet(path)


def merge_tables(paths) -> pd.DataFrame:
    """Concatenate tidy metric tables (same columns), sorted by model, corpus, metric, variant, layer, component."""
    from tokenuni.metrics import normalise_tidy

    frames = [read_table(p) for p in paths]
    table = normalise_tidy(pd.concat(frames, ignore_index=True)) if frames else normalise_tidy(pd.DataFrame())
    keys = ["model", "corpus", "metric", "variant", "layer", "component"]
    return table.sort_values(keys, na_position="first", kind="stable").reset_index(drop=True)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (index levels become the first columns)."""
    frame = table.reset_index()
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = ["" if (isinstance(v, float) and np.isnan(v)) else (f"{v:.4g}" if isinstance(v, float) and abs(v) < 1 else
                 f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
