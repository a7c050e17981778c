"""The whole study: every problem :mod:`tokenuni.check` finds, as one list (:func:`study_problems`) or
one :class:`StudyCheckError` (:func:`require_study`)."""
from __future__ import annotations

from pathlib import Path

from tokenuni.check.data import _Quiet, corpus_problems, glue_problems
from tokenuni.check.models import ModelFacts, model_facts
from tokenuni.check.references import reference_problems, transform_problems
from tokenuni.errors import TokenuniError


class StudyCheckError(TokenuniError, RuntimeError):
    """The study cannot run as configured; the message lists every problem found before the first job."""


def study_problems(config: dict, mirror: str | None, probe_hub: bool = True) -> list[str]:
    """Everything that would stop the study's jobs, found before the first one (see the module docstring).

    ``config`` is validated (:func:`tokenuni.config.validate_config`) already.
    """
    sources, others = _problems(config, mirror, probe_hub)
    return sources + others


def _problems(config: dict, mirror: str | None, probe_hub: bool) -> tuple[list[str], list[str]]:
    from tokenuni.config import model_specs
    from tokenuni.sources import SourceError, check_sources, resolve_model

    sources = check_sources(config, mirror, probe_hub=probe_hub)
    problems: list[str] = []
    seen: dict[tuple, ModelFacts | None] = {}
    for key, spec in model_specs(config).items():
        try:
            source = resolve_model(spec)
        except SourceError:
            continue  # reported by check_sources
        if not source.local:
            continue  # from the hub: its files are only known once downloaded
        folder = Path(source.location)
        if (folder, spec.get("trust_remote_code")) not in seen:
            facts, found = model_facts(key, spec, folder)
            seen[folder, spec.get("trust_remote_code")] = facts
            problems += found
        facts = seen[folder, spec.get("trust_remote_code")]
        if facts is not None:
            facts = ModelFacts(key, spec, facts.folder, facts.hf_config, facts.depth, facts.hidden_size, facts.shapes)
            problems += reference_problems(facts, config)
    problems += transform_problems(config)
    with _Quiet():
        problems += corpus_problems(config, mirror)[1]
        problems += glue_problems(config, mirror)
    return sources, list(dict.fromkeys(problems))


def require_study(config: dict, mirror: str | None, probe_hub: bool = True) -> None:
    """Raise one :class:`StudyCheckError` listing everything :func:`study_problems` finds."""
    sources, others = _problems(config, mirror, probe_hub)
    problems = sources + others
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        hint = ("\nProvide a local data mirror (TOKENUNI_DATA=/path/to/mirror or data_mirror in the config), local "
                "model folders (models.<key>.path), or network access to the Hugging Face hub." if sources else "")
        raise StudyCheckError(f"this study cannot run as configured: {len(problems)} problem(s) found before the "
                              f"first job:\n{lines}{hint}")
