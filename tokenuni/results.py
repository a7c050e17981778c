"""What a stage returns: :class:`StageResult`, the stage's work as data, which one function records.

A stage (``tokenuni.stages``: import a corpus, embed, the metrics pass, a metric's table, STS, fine-tuning, the
merged tables) does its work and returns a result: the files it wrote, the values it measured (per layer with
their step), the parameters it settled at run time, the inputs it read and the artifacts worth keeping. It does
not know MLflow. :func:`tokenuni.tracking.record` is the one place where a result becomes an MLflow run and a
run record, whether the stage ran as a workflow job (``python -m tokenuni <stage>``) or from a notebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class StageResult:
    """One stage's outcome.

    * ``outputs``: name -> file the stage wrote;
    * ``metrics``: scalar values (MLflow metrics at step 0);
    * ``steps``: ``(key, value, step)`` values that vary along a step (per layer: step = layer);
    * ``params``: parameters settled while running (the sample actually drawn, the transform's fit set), beside
      the ones the job was asked with;
    * ``tags``: run tags (device, precision, model source);
    * ``inputs``: ``(path, context)`` files read, recorded by size and digest, never copied (dumps, corpora);
    * ``artifacts``: ``(path, folder)`` small files kept with the run (tables, fitted transforms);
    * ``message``: the one line the stage's log ends with;
    * ``value``: the stage's product for a caller (a table, a summary), not recorded.
    """

    outputs: dict[str, Path] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    steps: list[tuple[str, float, int]] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    inputs: list[tuple[Path, str]] = field(default_factory=list)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)
    message: str = ""
    value: object = None

    def add_tidy(self, table) -> None:
        """A tidy metrics table's scalar rows as steps ``<metric>[.<variant>]`` at ``step = layer``, with the spread
        of a sampled value as ``<key>.spread`` (what the workflow's metric jobs log)."""
        import pandas as pd

        for row in table[table["component"].isna()].itertuples():
            key = row.metric + (f".{row.variant}" if row.variant else "")
            self.steps.append((key, float(row.value), int(row.layer)))
            if pd.notna(row.spread):
                self.steps.append((f"{key}.spread", float(row.spread), int(row.layer)))


__all__ = ["StageResult"]
