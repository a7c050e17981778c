"""The study's data read as its jobs read it: mirror corpora and the GLUE tasks' mirror files
(item 4 of :mod:`tokenuni.check`)."""
from __future__ import annotations

import logging


def corpus_problems(config: dict, mirror: str | None) -> tuple[dict[str, dict], list[str]]:
    """Every mirror corpus read as its import job reads it: summaries by corpus key, and the problems."""
    from tokenuni.corpora import CorpusError, load_examples
    from tokenuni.sources import corpus_uses_mirror

    summaries, problems = {}, []
    for key, spec in config["corpora"].items():
        if not corpus_uses_mirror(spec, mirror):
            continue  # the hub (or nothing: the sources check says so)
        try:
            summaries[key] = load_examples({"name": key, **spec}, mirror)[1]
        except CorpusError as error:
            problems.append(f"corpus '{key}': {error}" if not str(error).startswith(f"corpus '{key}'") else str(error))
    sts = config.get("sts", {})
    if sts.get("enabled", True) and sts.get("datasets"):
        for dataset in sts["datasets"]:
            summary = summaries.get(dataset)
            if summary is not None and not (summary["pairs"] and summary["scored"]):
                problems.append(f"config key sts.datasets: corpus '{dataset}' read from {summary['source']} holds "
                                f"{summary['pairs']} pairs{'' if summary['scored'] else ' and no gold scores'}; STS "
                                "evaluates paired, scored corpora: remove it from sts.datasets")
        for name, transform in (sts.get("transforms") or {}).items():
            clusters = (transform.get("params") or {}).get("clusters", 27) if transform["type"] == "cluster_removal" \
                else None
            if clusters is None:
                continue
            fit_on = transform.get("fit_on", "pool")
            fit_sets = sts["datasets"] if fit_on == "pool" else [fit_on]
            for fit_set in fit_sets:
                rows = summaries.get(fit_set, {}).get("rows_after")
                if rows is not None and rows < clusters:
                    problems.append(f"config key sts.transforms.{name}.params.clusters: {clusters} clusters need at "
                                    f"least {clusters} sentences to fit on, and corpus '{fit_set}' has {rows}; lower "
                                    "clusters or fit on a larger corpus (fit_on)")
    return summaries, problems


def glue_problems(config: dict, mirror: str | None) -> list[str]:
    """The fine-tuning tasks' mirror files, read (every row checked) as the fine-tuning job reads them."""
    from tokenuni.glue import SPLITS, GlueDataError, load_task

    finetune = config.get("finetune", {})
    if not (finetune.get("enabled", True) and finetune.get("tasks")):
        return []
    problems = []
    for task in finetune["tasks"]:
        for split in SPLITS:
            try:
                load_task(task, split, mirror)
            except GlueDataError as error:
                problems.append(f"config key finetune.tasks: {task}: {error}")
    return problems


class _Quiet:
    """Readers log one INFO line per file; a check of a whole study keeps only their warnings."""

    NAMES = ("tokenuni.corpora", "tokenuni.glue")

    def __enter__(self):
        self.levels = [logging.getLogger(name).level for name in self.NAMES]
        for name in self.NAMES:
            logging.getLogger(name).setLevel(logging.WARNING)

    def __exit__(self, *exc):
        for name, level in zip(self.NAMES, self.levels):
            logging.getLogger(name).setLevel(level)
