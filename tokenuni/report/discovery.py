"""Which figures a results folder holds, where each goes in the report, its caption and its MLflow run:
nothing is hard-wired to a list of figures."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from tokenuni.metrics.rows import VIEWS, catalogue
from tokenuni.metrics.rows import row as catalogue_row
from tokenuni.metrics.rows import label as _metric_label
from tokenuni.report.markup import rst_to_html
from tokenuni.resources import resource_path

log = logging.getLogger("tokenuni.report")
#: headline scalar metrics, in the order of the figures and of the per-layer table (the row catalogue's view)
HEADLINE_METRICS = list(VIEWS["headline"])
#: per-(model, corpus) figures shown first, in this order; others follow by name
PER_MODEL_ORDER = ["singular_value_cdf"]
PROJECTION_WORDS = ("pca", "projection", "umap", "tsne", "scatter")
#: folders of results/ never searched for figures
SKIP_FOLDERS = {"report", "screenshots", "mlartifacts", "dumps", "logs", "runs", "sentences", "mlflow"}
#: the figure captions, package data (also the workflow's ``workflow/report``, a link to them)
CAPTIONS_DIR = resource_path("captions")
#: the workflow's rules in a source checkout (absent from an installed package): rule -> caption file
RULES_DIR = Path(__file__).resolve().parents[2] / "workflow" / "rules"


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Figure:
    path: Path  # the PNG
    rel: str  # its path relative to results/
    section: str  # geometry | sts | finetune
    group: str  # subsection title
    order: tuple
    title: str
    caption_html: str = ""
    record: dict | None = None
    run_id: str | None = None


def rule_captions(rules_dir: Path) -> dict[str, Path]:
    """rule name -> its figure caption file, read from the ``report(..., caption=...)`` of ``*.smk``, and from the
    entries of figures.smk's ``FIGURE_RULES`` table (``"<rule>": dict(... caption="<name>" ...)`` ->
    ``workflow/report/<name>.rst``)."""
    captions = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")) if rules_dir and Path(rules_dir).is_dir() else []:
        text = smk.read_text(encoding="utf-8")
        for block in re.split(r"^(?=rule\s+\w+\s*:)", text, flags=re.M):
            rule = re.match(r"rule\s+(\w+)\s*:", block)
            caption = re.search(r"caption\s*=\s*[\"']([^\"'{}]+)[\"']", block)
            if rule and caption:
                captions[rule.group(1)] = (smk.parent / caption.group(1)).resolve()
        for entry in re.split(r"^(?=\s*\"\w+\": dict\()", text, flags=re.M):
            rule = re.match(r"\s*\"(\w+)\": dict\(", entry)
            caption = re.search(r"\bcaption=\"(\w+)\"", entry)
            if rule and caption:
                captions[rule.group(1)] = (smk.parent.parent / "report" / f"{caption.group(1)}.rst").resolve()
    return captions


def render_caption(path: Path, wildcards: dict, config: dict) -> str:
    """A Snakemake report caption (reStructuredText with Jinja) rendered as Snakemake would, as HTML."""
    text = path.read_text(encoding="utf-8")
    if "{{" in text or "{%" in text:
        try:
            import jinja2

            snakemake = SimpleNamespace(wildcards=SimpleNamespace(**wildcards), config=config, params=SimpleNamespace())
            text = jinja2.Template(text).render(snakemake=snakemake)
        except Exception as error:  # a template for Snakemake's own renderer only: keep its prose
            log.debug("caption %s not rendered (%s)", path, error)
            text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}", "", text, flags=re.S)
    return rst_to_html(text)


def caption_from_file(figure: Figure, captions_dir: Path | None, by_rule: dict[str, Path], config: dict) -> str | None:
    """The Snakemake report caption of ``figure``: the one its rule names, else ``<stem>.rst`` or
    ``<rule without figure_>.rst`` in ``captions_dir``; rendered with the job's wildcards. None if none."""
    rule = (figure.record or {}).get("rule")
    candidates = [by_rule.get(rule)] if rule in by_rule else []
    if captions_dir is not None and captions_dir.is_dir():
        candidates += [captions_dir / f"{figure.path.stem}.rst"]
        if rule:
            candidates += [captions_dir / f"{rule.removeprefix('figure_')}.rst"]
    for path in candidates:
        if path is not None and path.is_file():
            return render_caption(path, (figure.record or {}).get("wildcards", {}), config)
    return None


# ------------------------------------------------------------------------------------------ figures
def _metric_rows() -> set[str]:
    """Every row name a metric produces (``<row>_by_layer.png`` is then a one-metric figure)."""
    return set(catalogue())
#: subsection titles (and their order) of the STS and fine-tuning figures, by file stem
FIGURE_GROUPS = {"sts_table": (0, "STS tables"), "scores": (1, "Scores"), "geometry": (2, "Geometry of the embeddings"),
                 "isotropy_vs_score": (3, "Isotropy against score")}


def _classify(path: Path, results: Path, metric_rows: set[str]) -> Figure:
    relative = path.relative_to(results)
    rel = relative.as_posix()
    stem = path.stem
    tokens = set(re.split(r"[^a-z0-9]+", rel.lower()))  # "stsb-test" is a corpus, not STS
    if tokens & {"sts", "pooling", "poolings", "transform", "transforms"}:
        section = "sts"
    elif tokens & {"finetune", "glue", "finetuning"}:
        section = "finetune"
    else:
        section = "geometry"
    inner = [p for p in (relative.parts[1:-1] if relative.parts[0] == "figures" else relative.parts[:-1])
             if p.lower() not in ("sts", "finetune", "glue")]
    where = " · ".join(inner)
    words = stem.replace("_", " ")
    if section != "geometry":
        rank, group = FIGURE_GROUPS.get(stem, (len(FIGURE_GROUPS), words.capitalize()))
        return Figure(path, rel, section, group, (rank, stem, rel), words + (f" · {where}" if where else ""))
    row = stem[: -len("_by_layer")] if stem.endswith("_by_layer") else None
    if row is not None and not inner and (row in metric_rows or path.with_suffix(".tsv").exists()):
        rank = (HEADLINE_METRICS.index(row) if row in HEADLINE_METRICS
                else 10_000 if catalogue_row(row).diagnostic else 1_000)
        return Figure(path, rel, section, "Each metric by layer", (2, rank, stem), f"{_metric_label(row)} by layer")
    if not inner:  # study-wide figures: panels of several metrics, metrics by training step, ...
        return Figure(path, rel, section, "Overview", (1, stem), words)
    if any(w in stem for w in PROJECTION_WORDS):
        return Figure(path, rel, section, "Token projections", (4, *inner, stem), f"{words} · {where}")
    rank = PER_MODEL_ORDER.index(stem) if stem in PER_MODEL_ORDER else len(PER_MODEL_ORDER)
    title = "normalised singular-value CDF per layer" if stem == "singular_value_cdf" else words
    return Figure(path, rel, section, "Per model and corpus", (3, rank, stem, *inner), f"{title} · {where}")


def discover_figures(results: Path) -> list[Figure]:
    """Every PNG under ``results`` (outside report/, dumps/, mlartifacts/, …), classified and ordered."""
    found, metric_rows = [], _metric_rows()
    for path in sorted(results.rglob("*.png")):
        rel_parts = path.relative_to(results).parts
        if rel_parts[0] in SKIP_FOLDERS or any(p.startswith(".") for p in rel_parts):
            continue
        found.append(_classify(path, results, metric_rows))
    return sorted(found, key=lambda f: (f.section, f.order))


def link_runs(figures: list[Figure], records: list[dict], mapping: dict[str, str]) -> None:
    """Attach to each figure the record (and MLflow run) whose artifacts include it."""
    by_path: dict[str, dict] = {}
    for record in records:
        for artifact in record.get("artifacts", []):
            by_path.setdefault(str(artifact.get("path", "")), record)
    for figure in figures:
        record = by_path.get(str(figure.path.resolve()))
        if record is None:  # results moved since the job ran: match the path inside results/
            suffix = "/" + figure.rel
            record = next((r for p, r in by_path.items() if p.replace("\\", "/").endswith(suffix)), None)
        figure.record = record
        figure.run_id = mapping.get(record["record_id"]) if record else None
#: PNGs at least this wide (multi-panel grids, 13 in × 150 dpi) take a whole row of the report
WIDE_PNG = 1500


def png_width(data: bytes) -> int:
    """Pixel width from a PNG's IHDR chunk (0 when ``data`` is not a PNG)."""
    return int.from_bytes(data[16:20], "big") if data[:8] == b"\x89PNG\r\n\x1a\n" else 0


def figure_anchor(rel: str) -> str:
    """The id of the report's ``<figure>`` of the PNG at ``rel`` (relative to results/)."""
    return "fig-" + re.sub(r"[^A-Za-z0-9_-]+", "-", rel)
