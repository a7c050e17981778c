"""The static HTML report of a study: one self-contained file a researcher reads instead of the JSON.

``build_report(results_dir, config, out_html)`` writes ``results/report/index.html``: inline CSS, no
JavaScript, no network; every PNG figure embedded as a ``data:image/png;base64`` URI, so the one file
opens offline and can be mailed. It discovers what the results folder holds — nothing is hard-wired
to a list of figures — and skips a missing optional part with a note in the report, never a crash.

Sections:

* **Findings** – a summary in words with the numbers, generated from the tables below (:func:`findings`):
  per model and corpus, the layers where the average cosine and IsoScore peak and bottom out; per model,
  the best and the worst STS transform against no transform; per fine-tuned model and task, which repairs
  were better, worse or gave no evidence against the baseline, with their intervals. Each sentence links
  to the figure behind it, and every number in it is in one of the report's tables.
* **Geometry** – the ``<row>_by_layer`` figures (headline metrics first: average cosine, skewness of
  the normalised singular values, IsoScore, I(V), LID, MMS k, token uniformity, …), other study-wide
  figures, per-(model, corpus) figures (singular-value CDFs, token projections, …), and a per-layer
  table of the headline scalar metrics pivoted from ``tables/metrics.parquet`` (rows: model, corpus,
  metric, variant; columns: layers; 3 significant digits).
* **Unsupervised STS** – ``tables/sts_summary.html`` (or ``.md``) and the STS figures.
* **Fine-tuning** – ``tables/finetune_summary.md`` and the fine-tuning figures.
* **Study** – study name, models (key, hub id, revision, training step), corpora (source, sentences
  imported), jobs per rule (from the run records, failed jobs counted apart), git commit(s) of the
  jobs, the time span of the jobs and the build date.
* **Config** – the exact YAML file(s) that produced the study.
* **MLflow** – tracking URI, experiment, the link to its runs table with the headline metrics, and one
  row per job: rule, wildcards, status, run id.

Run ids come from the MLflow sync's output (``mlflow/sync.json``: ``{"runs": {record_id: run_id}}``,
see :func:`tokenuni.tracking.sync_records`); each figure is linked to the run of the job that logged
it as an artifact (matched through the run records' ``artifacts``). Captions are the Snakemake
report's captions (``tokenuni/resources/captions/<figure>.rst`` or ``<rule>.rst``) when present, else the metric's
label (:func:`tokenuni.figures.metric_label`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml

from tokenuni.metrics.rows import VIEWS, catalogue, view
from tokenuni.metrics.rows import label as _metric_label
from tokenuni.resources import resource_path

log = logging.getLogger(__name__)

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
RULES_DIR = Path(__file__).resolve().parent.parent / "workflow" / "rules"
MLFLOW_UI = "http://127.0.0.1:5000"

CSS = """
:root{--fg:#1d2330;--muted:#5b6474;--line:#dde2ea;--bg:#f6f8fb;--accent:#2458a6}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);
background:#fff}
header{background:#1f3b63;color:#fff;padding:18px 32px 10px}
header h1{margin:0 0 4px;font-size:26px;font-weight:600}
header p{margin:0;color:#c9d6ea;font-size:13px}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px}
nav a{margin-right:18px;color:var(--accent);text-decoration:none;font-weight:500}
main{max-width:1500px;margin:0 auto;padding:8px 32px 48px}
h2{margin:36px 0 10px;padding-bottom:4px;border-bottom:2px solid var(--line);font-size:22px}
h3{margin:26px 0 8px;font-size:17px}
a{color:var(--accent)}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--bg);border:1px solid var(--line);border-radius:6px;padding:12px;overflow:auto;max-height:640px}
.note{color:var(--muted);font-style:italic}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:8px 0 14px}
.facts dt{color:var(--muted)}.facts dd{margin:0}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:18px}
figure{margin:0;border:1px solid var(--line);border-radius:8px;padding:10px;background:#fff}
figure img{display:block;width:100%;height:auto}
figure.wide{grid-column:1/-1}
figure.wide img{max-width:1400px;margin:0 auto}
figcaption{font-size:13px;color:var(--fg);margin-top:6px}
figcaption .meta{display:block;color:var(--muted);font-size:12px;margin-top:3px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:13px;margin:6px 0 18px}
th,td{border:1px solid var(--line);padding:3px 8px;vertical-align:top}
thead th{background:var(--bg);position:sticky;top:0}
td code{white-space:nowrap}
td.num{text-align:right;font-variant-numeric:tabular-nums;font-family:ui-monospace,Menlo,Consolas,monospace}
tbody tr:nth-child(even){background:#fafbfd}
.status-FAILED,.status-KILLED{color:#b3261e;font-weight:600}
.embedded table td{text-align:right;font-variant-numeric:tabular-nums}
.embedded tbody th{text-align:left;background:#fff}
figcaption p{margin:4px 0}
details summary{cursor:pointer;color:var(--accent);margin:8px 0}
"""


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


@dataclass
class Study:
    results: Path
    config_text: str
    config: dict
    config_note: str = ""
    records: list[dict] = field(default_factory=list)
    sync: dict | None = None
    notes: dict[str, list[str]] = field(default_factory=dict)

    def note(self, section: str, text: str) -> None:
        log.info("report: %s", text)
        self.notes.setdefault(section, []).append(text)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_config(config) -> tuple[str, dict, str]:
    """(exact YAML text, validated config (defaults filled) or the raw one, note) from path(s) or a dict."""
    from tokenuni.config import ConfigError, validate_config

    if isinstance(config, dict):
        raw, text = config, yaml.safe_dump(config, sort_keys=False)
    else:
        paths = [Path(p) for p in ([config] if isinstance(config, (str, Path)) else config)]
        texts, raw = [], {}
        for path in paths:
            body = path.read_text(encoding="utf-8")
            texts.append(body if len(paths) == 1 else f"# ---- {path} ----\n{body}")
            raw = _deep_merge(raw, yaml.safe_load(body) or {})
        text = "\n".join(texts)
    try:
        return text, validate_config(json.loads(json.dumps(raw))), ""
    except ConfigError as error:
        return text, raw, f"the config does not validate ({error}); shown as written"


def _read_records(folder: Path, study: Study) -> list[dict]:
    from tokenuni.tracking import read_record

    if not folder.is_dir():
        study.note("mlflow", f"no run records under {folder}")
        return []
    records = []
    for path in sorted(folder.glob("*/*.json")):
        if path.parent.name == "started":  # markers of running (or killed) jobs, not records
            continue
        try:
            records.append(read_record(path))
        except (ValueError, OSError) as error:
            study.note("mlflow", f"skipped {path.name}: {error}")
    return records


# ------------------------------------------------------------------------------------------ helpers
def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _ms_to_text(ms) -> str:
    if not ms:
        return ""
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: list[str], rows: list[list[str]], *, numeric: set[int] = frozenset(), row_ids=None) -> str:
    """An HTML table; cells are already-escaped HTML."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f"<td class='num'>{c}</td>" if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        rid = f" id='{row_ids[i]}'" if row_ids and row_ids[i] else ""
        body.append(f"<tr{rid}>{cells}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def _inline_markup(text: str) -> str:
    """Escape, then ``code``/`code`, **bold**, *italic* (Markdown and reStructuredText alike)."""
    text = _e(text)
    text = re.sub(r"``(.+?)``", r"<code>\1</code>", text)
    text = re.sub(r"`([^`]+?)`_?", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


def markdown_to_html(text: str, *, heading_offset: int = 2) -> str:
    """The Markdown the study writes (headings, paragraphs, pipe tables, lists) as HTML.

    ``# x`` becomes ``<h{1 + heading_offset}>`` so a summary's own title nests under the report's section.
    """
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6})\s+(.*)$", line):
            level = min(6, len(m.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline_markup(m.group(2))}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            rows = [r for r in block[1:] if not all(re.fullmatch(r":?-{2,}:?", c) for c in r)]
            numeric = {j for j in range(len(block[0]))
                       if rows and all(re.fullmatch(r"[-+−]?[\d.]+(\s*±\s*[\d.]+)?%?|", r[j] if j < len(r) else "")
                                       for r in rows)}
            out.append(_table([_inline_markup(c) for c in block[0]], [[_inline_markup(c) for c in r] for r in rows],
                              numeric=numeric))
        elif re.match(r"^\s*[-*]\s+", line):
            items = []
            while i < len(lines) and re.match(r"^\s*[-*]\s+", lines[i]):
                item = re.sub(r"^\s*[-*]\s+", "", lines[i])
                items.append(f"<li>{_inline_markup(item)}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#{1,6}\s|\s*\||\s*[-*]\s)", lines[i]):
                para.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline_markup(' '.join(para))}</p>")
    return "\n".join(out)


def _rst_to_html(text: str) -> str:
    """A Snakemake caption (reStructuredText, usually a paragraph or two) as HTML paragraphs."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for para in paragraphs:
        lines = [line for line in para.splitlines() if not re.fullmatch(r"\s*[=\-~^`'\"#*+]{3,}\s*", line)]
        if lines and not lines[0].lstrip().startswith(".."):
            out.append(f"<p>{_inline_markup(' '.join(line.strip() for line in lines))}</p>")
    return "".join(out)


def rule_captions(rules_dir: Path) -> dict[str, Path]:
    """rule name -> its figure caption file, read from the ``report(..., caption=...)`` of ``*.smk``."""
    captions = {}
    for smk in sorted(Path(rules_dir).glob("*.smk")) if rules_dir and Path(rules_dir).is_dir() else []:
        text = smk.read_text(encoding="utf-8")
        for block in re.split(r"^(?=rule\s+\w+\s*:)", text, flags=re.M):
            rule = re.match(r"rule\s+(\w+)\s*:", block)
            caption = re.search(r"caption\s*=\s*[\"']([^\"']+)[\"']", block)
            if rule and caption:
                captions[rule.group(1)] = (smk.parent / caption.group(1)).resolve()
    return captions


def _render_caption(path: Path, wildcards: dict, config: dict) -> str:
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
    return _rst_to_html(text)


def _caption_from_file(figure: Figure, captions_dir: Path | None, by_rule: dict[str, Path], config: dict) -> str | None:
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
            return _render_caption(path, (figure.record or {}).get("wildcards", {}), config)
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
                else 10_000 if catalogue().get(row) is not None and catalogue()[row].diagnostic else 1_000)
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


def _link_runs(figures: list[Figure], records: list[dict], mapping: dict[str, str]) -> None:
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


def _figure_html(figure: Figure, anchor_of) -> str:
    raw = figure.path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    wide = " class='wide'" if png_width(raw) >= WIDE_PNG else ""
    meta = [f"<code>{_e(figure.rel)}</code>"]
    if figure.record is not None:
        job = _e(figure.record["job_key"])
        if figure.run_id:
            meta.append(f"MLflow run <a href='#{anchor_of(figure.record)}'><code>{_e(figure.run_id)}</code></a> ({job})")
        else:
            meta.append(f"job <a href='#{anchor_of(figure.record)}'>{job}</a> (not yet in MLflow)")
    caption = figure.caption_html
    return (f"<figure id='{_e(figure_anchor(figure.rel))}'{wide}>"
            f"<img src='data:image/png;base64,{data}' alt='{_e(figure.title)}' loading='eager'>"
            f"<figcaption><strong>{_e(figure.title)}</strong>{caption}<span class='meta'>{' · '.join(meta)}</span>"
            f"</figcaption></figure>")


def _figures_html(figures: list[Figure], anchor_of) -> str:
    out, group = [], None
    for figure in figures:
        if figure.group != group:
            if group is not None:
                out.append("</div>")
            group = figure.group
            out.append(f"<h3>{_e(group)}</h3><div class='grid'>")
        out.append(_figure_html(figure, anchor_of))
    if group is not None:
        out.append("</div>")
    return "".join(out)


# ------------------------------------------------------------------------------------------ sections
def _notes_html(study: Study, section: str) -> str:
    return "".join(f"<p class='note'>{_e(n)}</p>" for n in study.notes.get(section, []))


def _study_section(study: Study, built: str) -> str:
    from tokenuni.config import model_specs

    config, records = study.config, study.records
    facts = [("study", _e(config.get("study", "?"))), ("results", f"<code>{_e(study.results.resolve())}</code>"),
             ("report built", _e(built))]
    commits = Counter((r.get("tags", {}).get("mlflow.source.git.commit", "unknown"),
                       r.get("tags", {}).get("tokenuni.git_dirty") == "true") for r in records)
    if commits:
        facts.append(("git commit", "<br>".join(
            f"<code>{_e(c)}</code>{' (uncommitted changes)' if dirty else ''} — {n} job(s)"
            for (c, dirty), n in commits.most_common())))
    times = [r["start_time"] for r in records if r.get("start_time")] + [r["end_time"] for r in records if r.get("end_time")]
    if times:
        facts.append(("jobs ran", f"{_e(_ms_to_text(min(times)))} – {_e(_ms_to_text(max(times)))}"))
    facts.append(("jobs", f"{len(records)} run record(s)"))
    out = ["<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]

    try:
        models = model_specs(config) if isinstance(config.get("models"), dict) else {}
    except Exception:
        models = {}
    if models:
        out.append("<h3>Models</h3>" + _table(
            ["key", "id", "revision", "training step", "path"],
            [[f"<code>{_e(k)}</code>", _e(s.get("id")), f"<code>{_e(s.get('revision') or 'default')}</code>",
              _e(s.get("training_step", "")), _e(s.get("path") or "")] for k, s in models.items()]))
    corpora = config.get("corpora") or {}
    if corpora:
        rows_by_corpus = {}
        for r in records:
            if r.get("rule") == "corpus":
                rows = [m["value"] for m in r.get("metrics", []) if m.get("key") == "rows"]
                if rows:
                    rows_by_corpus[r.get("wildcards", {}).get("corpus")] = int(rows[-1])
        body = []
        for key, spec in corpora.items():
            mirror = (spec or {}).get("mirror") or {}
            hub = (spec or {}).get("hub") or {}
            source = []
            if mirror:
                source.append(f"mirror {_e(mirror.get('format'))}: " + ", ".join(f"<code>{_e(f)}</code>" for f in mirror.get("files", [])))
            if hub:
                source.append(f"hub {_e(hub.get('id'))}" + (f" ({_e(hub.get('config'))})" if hub.get("config") else "")
                              + (f" [{_e(hub.get('split'))}]" if hub.get("split") else ""))
            body.append([f"<code>{_e(key)}</code>", "<br>".join(source),
                         "yes" if (spec or {}).get("geometry", True) else "STS only",
                         _e((spec or {}).get("max_sentences") or "all"), _e(rows_by_corpus.get(key, ""))])
        out.append("<h3>Corpora</h3>" + _table(["key", "source", "token geometry", "max sentences", "sentences imported"],
                                               body, numeric={4}))
    if records:
        per_rule = Counter(r.get("rule", "?") for r in records)
        failed = Counter(r.get("rule", "?") for r in records if r.get("status") not in ("FINISHED", None))
        out.append("<h3>Jobs per rule</h3>" + _table(
            ["rule", "jobs", "failed"],
            [[f"<code>{_e(rule)}</code>", str(n), str(failed.get(rule, 0)) if failed.get(rule) else ""]
             for rule, n in sorted(per_rule.items())], numeric={1, 2}))
    return "".join(out)


def headline_table(table, metrics=HEADLINE_METRICS) -> object:
    """The headline scalar metrics pivoted: index (model, corpus, metric, variant), one column per layer.

    Rows without a component (scalars) only; several rows of one (model, corpus, metric, variant, layer)
    – seeds, sample sizes – are averaged. Metrics in the order of ``metrics``.
    """
    import pandas as pd

    rows = table[table["component"].isna() & table["metric"].isin(metrics)].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["variant"] = rows["variant"].fillna("").astype(str)
    rows["model"] = rows["model"].astype(str)
    rows["corpus"] = rows["corpus"].astype(str)
    pivot = rows.pivot_table(index=["model", "corpus", "metric", "variant"], columns="layer", values="value",
                             aggfunc="mean")
    order = {m: i for i, m in enumerate(metrics)}
    keys = sorted(pivot.index, key=lambda k: (k[0], k[1], order.get(k[2], len(order)), k[3]))
    return pivot.loc[keys]


def _format_value(value) -> str:
    import math

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.3g}"


def _metrics_table_html(study: Study) -> str:
    from tokenuni.tables import read_table

    for name in ("metrics.parquet", "metrics.tsv"):
        path = study.results / "tables" / name
        if path.is_file():
            break
    else:
        study.note("geometry", "no tables/metrics.parquet: the per-layer table is skipped")
        return ""
    try:
        pivot = headline_table(read_table(path))
    except Exception as error:
        study.note("geometry", f"{path.name} could not be read as a tidy metrics table ({error})")
        return ""
    if pivot.empty:
        study.note("geometry", f"{path.name} holds none of the headline metrics")
        return ""
    layers = [int(c) for c in pivot.columns]
    rows = [[f"<code>{_e(m)}</code>", _e(c), f"<span title='{_e(_metric_label(metric))}'>{_e(metric)}</span>",
             _e(v or "–"), *[_format_value(x) for x in values]]
            for (m, c, metric, v), values in zip(pivot.index, pivot.to_numpy(dtype=float).tolist())]
    header = ["model", "corpus", "metric", "variant", *[f"L{layer}" for layer in layers]]
    return ("<h3 id='headline-table'>Headline metrics per layer</h3>"
            f"<p>From <code>tables/{path.name}</code>; 3 significant digits; L0 = embedding output, Li = output of "
            "block i; the mean over seeds and sample sizes where a layer has several rows.</p>"
            + _table(header, rows, numeric=set(range(4, 4 + len(layers)))))


# ------------------------------------------------------------------------------------------ findings
@dataclass
class Finding:
    """One generated sentence of the findings: its text (numbers as the report's tables print them), the
    report's table that holds them, and the figure (or table) behind it."""

    section: str  # geometry | sts | finetune
    text: str
    href: str  # "#<anchor>" in the report
    link: str  # the link's words




def _read_any(results: Path, stem: str):
    """``tables/<stem>.parquet`` (or ``.tsv``) as a data frame, or None when neither is there or readable."""
    from tokenuni.tables import read_table

    for suffix in (".parquet", ".tsv"):
        path = results / "tables" / f"{stem}{suffix}"
        if path.is_file():
            try:
                return read_table(path)
            except Exception as error:  # a damaged table: the findings say nothing about it, the note says why
                log.warning("report: %s not readable for the findings (%s)", path, error)
                return None
    return None


def _figure_link(rels: set[str], rel: str, fallback: str, what: str) -> tuple[str, str]:
    return (f"#{figure_anchor(rel)}", f"figure: {what}") if rel in rels else (fallback, "table")


def geometry_findings(table, rels: set[str]) -> list[Finding]:
    """Per (model, corpus): the layers where the average cosine and IsoScore peak and bottom out, with their
    values as the per-layer table prints them (3 significant digits)."""
    extremes = view("findings_extremes")  # the rows, their headline variant, name in a sentence and peak
    pivot = headline_table(table, [r.name for r in extremes])
    out = []
    for model, corpus in dict.fromkeys((model, corpus) for model, corpus, _, _ in pivot.index):
        for metric, variant, name, peak_means in ((r.name, r.headline_variant, r.in_a_sentence, r.peak_means)
                                                  for r in extremes):
            if (model, corpus, metric, variant) not in pivot.index:
                continue
            values = pivot.loc[(model, corpus, metric, variant)].dropna()
            if len(values) < 2:
                continue
            top, bottom = int(values.idxmax()), int(values.idxmin())
            text = (f"{model} on {corpus}: {name} peaks at layer {top} ({_format_value(values[top])}, {peak_means}) "
                    f"and bottoms out at layer {bottom} ({_format_value(values[bottom])}).")
            href, link = _figure_link(rels, f"figures/{metric}_by_layer.png", "#headline-table",
                                      f"{_metric_label(metric)} by layer")
            out.append(Finding("geometry", text, href, link))
    return out


def sts_findings(scores, rels: set[str]) -> list[Finding]:
    """Per model (pooling ``mean_last`` where the study has it, else its first): the best and the worst
    transform against no transform (the identity), by the mean Spearman over the STS datasets of the STS
    summary (STS12–16 as the mean over their subsets), as its table prints it."""
    from tokenuni.unsupervised_sts import summary_tables

    wide = summary_tables(scores)["spearman_mean_over_subsets"]
    identity = set(scores.loc[scores["transform_type"] == "identity", "transform"]) if "transform_type" in scores \
        else {"none"}
    out = []
    for model in dict.fromkeys(wide.index.get_level_values("model")):
        rows = wide.loc[model]
        poolings = list(dict.fromkeys(rows.index.get_level_values("pooling")))
        pooling = "mean_last" if "mean_last" in poolings else poolings[0]
        means = rows.loc[pooling]["mean"].dropna()
        baseline = [t for t in means.index if t in identity]
        if means.empty:
            continue
        best, worst = means.idxmax(), means.idxmin()

        def value(name, means=means):
            return f"{means[name]:.4g}"  # as tables/sts_summary.html prints it

        if baseline:
            none = baseline[0]
            against = f"; with no transform ({none}) it is {value(none)}"
            if best == none:
                head = f"no transform is best ({none}, {value(none)}); the worst is {worst} ({value(worst)})"
                against = ""
            else:
                head = f"the best transform is {best} ({value(best)}), the worst {worst} ({value(worst)})"
        else:
            head = f"the best transform is {best} ({value(best)}), the worst {worst} ({value(worst)})"
            against = "; the study has no identity transform to compare with"
        text = f"{model}, pooling {pooling}, mean Spearman over the STS datasets: {head}{against}."
        href, link = _figure_link(rels, f"figures/sts/{pooling}/scores.png", "#sts", f"STS scores, {pooling}")
        out.append(Finding("sts", text, href, link))
    return out


def finetune_findings(summary, rels: set[str]) -> list[Finding]:
    """Per (model, task): which variants were better, worse or gave no evidence against the baseline, with
    the difference and its interval as the fine-tuning summary's table prints them."""
    from tokenuni.finetune.summary import difference_text

    out = []
    compared = summary[summary["verdict"].isin(["better", "worse", "no evidence"])]
    for (model, task), group in compared.groupby(["model", "task"], sort=False):
        parts = []
        for verdict in ("better", "worse", "no evidence"):
            chosen = group[group["verdict"] == verdict]
            listed = ", ".join(f"{r.variant} ({difference_text(r.difference, r.difference_low, r.difference_high)})"
                               for r in chosen.itertuples())
            parts.append(f"{verdict}: {listed or 'no variant'}")
        metric = group["metric"].iloc[0]
        text = (f"{model} fine-tuned on {task} ({metric} on dev, difference to the baseline with its interval) — "
                + "; ".join(parts) + ".")
        href, link = _figure_link(rels, "figures/finetune/scores.png", "#finetune", "fine-tuning scores")
        out.append(Finding("finetune", text, href, link))
    return out


def findings(results: Path, figures: list[Figure] = ()) -> list[Finding]:
    """The report's opening summary, generated from ``results/tables`` (see the module docstring); parts
    whose table is missing are left out."""
    rels = {figure.rel for figure in figures}
    out = []
    metrics = _read_any(results, "metrics")
    if metrics is not None and {"metric", "component", "layer"} <= set(metrics.columns):
        out += geometry_findings(metrics, rels)
    scores = _read_any(results, "sts")
    if scores is not None and len(scores):
        out += sts_findings(scores, rels)
    summary = _read_any(results, "finetune_summary")
    if summary is not None and len(summary) and "verdict" in summary:
        out += finetune_findings(summary, rels)
    return out


FINDING_TITLES = {"geometry": "Geometry by layer", "sts": "Unsupervised STS: transforms against no transform",
                  "finetune": "Fine-tuning: repairs against the baseline"}


def _findings_html(items: list[Finding]) -> str:
    if not items:
        return "<p class='note'>No tables to summarise yet (tables/metrics, sts, finetune_summary).</p>"
    out = ["<p>Generated from the study's tables: every number below is in one of the report's tables, and each "
           "sentence links to the figure behind it.</p>"]
    for section, title in FINDING_TITLES.items():
        chosen = [f for f in items if f.section == section]
        if chosen:
            out.append(f"<h3>{_e(title)}</h3><ul class='findings'>" + "".join(
                f"<li>{_e(f.text)} <a href='{_e(f.href)}'>{_e(f.link)}</a></li>" for f in chosen) + "</ul>")
    return "".join(out)


def _embedded_html_body(path: Path) -> str:
    """The body of an HTML summary the study wrote (its own <h1> dropped; headings nested)."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"<body[^>]*>(.*)</body>", text, flags=re.S | re.I)
    body = m.group(1) if m else text
    body = re.sub(r"<h1[^>]*>.*?</h1>", "", body, flags=re.S | re.I)
    body = re.sub(r"<(/?)h2", r"<\1h3", body, flags=re.I)
    body = re.sub(r"<script.*?</script>", "", body, flags=re.S | re.I)
    body = re.sub(r"<table[^>]*>", "<table>", body, flags=re.I)
    return f"<div class='embedded scroll'>{body}</div>"


def _summary_html(study: Study, section: str, stem: str, html_ok: bool) -> str:
    tables = study.results / "tables"
    if html_ok and (tables / f"{stem}.html").is_file():
        return f"<p>From <code>tables/{stem}.html</code>.</p>" + _embedded_html_body(tables / f"{stem}.html")
    if (tables / f"{stem}.md").is_file():
        text = (tables / f"{stem}.md").read_text(encoding="utf-8")
        text = re.sub(r"\A#\s+.*\n", "", text)  # the section heading says it already
        return f"<p>From <code>tables/{stem}.md</code>.</p>" + markdown_to_html(text)
    study.note(section, f"no tables/{stem}.md" + (" or .html" if html_ok else "") + " in the results")
    return ""


def _mlflow_section(study: Study, anchor_of) -> str:
    sync = study.sync or {}
    mapping = sync.get("runs", {})
    uri = sync.get("tracking_uri", "")
    experiment_id = sync.get("experiment_id")
    facts = [("tracking URI", f"<code>{_e(uri or 'unknown (no mlflow/sync.json)')}</code>"),
             ("experiment", f"{_e(sync.get('experiment', '?'))} (id {_e(experiment_id or '?')})"),
             ("runs", f"{sum(1 for r in study.records if r['record_id'] in mapping)} of {len(study.records)} "
                      "job(s) in MLflow")]
    ui = uri.rstrip("/") if uri.startswith("http") else MLFLOW_UI
    out = ["<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
    if uri.startswith("sqlite"):
        out.append(f"<p>Browse the runs with <code>mlflow ui --backend-store-uri {_e(uri)}</code>; the run ids "
                   f"below then link to {_e(MLFLOW_UI)}.</p>")
    if experiment_id:
        from tokenuni.tracking import runs_view_url

        out.append(f"<p><a href='{_e(runs_view_url(ui, experiment_id))}'>The runs table with the headline metrics"
                   "</a>, grouped by stage.</p>")
    rows, ids = [], []
    for record in sorted(study.records, key=lambda r: (r.get("rule", ""), r.get("job_key", ""), r.get("start_time") or 0)):
        run_id = mapping.get(record["record_id"])
        status = record.get("status", "")
        link = (f"<a href='{_e(ui)}/#/experiments/{_e(experiment_id)}/runs/{_e(run_id)}'><code>{_e(run_id)}</code></a>"
                if run_id and experiment_id else "<span class='note'>not synced</span>")
        wildcards = ", ".join(f"{_e(k)}={_e(v)}" for k, v in record.get("wildcards", {}).items())
        error = record.get("tags", {}).get("tokenuni.error", "")
        seconds = ((record.get("end_time") or 0) - (record.get("start_time") or 0)) / 1000
        rows.append([f"<code>{_e(record.get('rule'))}</code>", wildcards,
                     f"<span class='status-{_e(status)}' title='{_e(error)}'>{_e(status)}</span>",
                     f"{seconds:.1f}" if seconds > 0 else "", link])
        ids.append(anchor_of(record))
    if rows:
        out.append(_table(["rule", "wildcards", "status", "seconds", "MLflow run id"], rows, numeric={3}, row_ids=ids))
    return "".join(out)


# ------------------------------------------------------------------------------------------ the report
def build_report(results_dir, config, out_html, *, run_records_dir=None, sync_file=None, captions_dir=None) -> dict:
    """Write the study's static HTML report to ``out_html`` (atomically) and return a summary.

    ``config``: the YAML file(s) that produced the study (a path or a list, merged in order as Snakemake
    merges ``--configfile``s) or the config dict. ``run_records_dir`` defaults to ``<results>/runs``,
    ``sync_file`` to ``<results>/mlflow/sync.json``, ``captions_dir`` to the checkout's
    the package's captions (``tokenuni/resources/captions``). Returns ``{"path", "bytes", "figures", "runs", "records", "notes"}``.
    """
    from tokenuni.files import atomic_path

    results = Path(results_dir)
    if not results.is_dir():
        from tokenuni.errors import TokenuniError

        raise TokenuniError(f"report: results folder {results} does not exist; run the study first, or pass its "
                            "results folder with --results")
    out_html = Path(out_html)
    text, parsed, config_note = _read_config(config)
    study = Study(results=results, config_text=text, config=parsed, config_note=config_note)
    study.records = _read_records(Path(run_records_dir) if run_records_dir else results / "runs", study)
    sync_path = Path(sync_file) if sync_file else results / "mlflow" / "sync.json"
    if sync_path.is_file():
        study.sync = json.loads(sync_path.read_text(encoding="utf-8"))
    else:
        study.note("mlflow", f"no MLflow sync output at {sync_path}: run ids are not known yet")
    mapping = (study.sync or {}).get("runs", {})

    def anchor_of(record: dict) -> str:
        return f"run-{mapping.get(record['record_id']) or record['record_id']}"

    figures = discover_figures(results)
    _link_runs(figures, study.records, mapping)
    captions = Path(captions_dir) if captions_dir else CAPTIONS_DIR
    # a rule whose caption is not named after it (``<rule without figure_>.rst``) is found through the
    # ``caption=`` of its rule; without the workflow's rules (an installed package) the names suffice
    by_rule = rule_captions(captions.parent / "rules") or rule_captions(RULES_DIR)
    for figure in figures:
        figure.caption_html = _caption_from_file(figure, captions, by_rule, parsed) or ""
    intro = captions / "workflow.rst"
    intro_html = _render_caption(intro, {}, parsed) if intro.is_file() else ""
    by_section = {s: [f for f in figures if f.section == s] for s in ("geometry", "sts", "finetune")}
    if not figures:
        study.note("geometry", f"no PNG figures under {results}")

    built = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    study_html = intro_html + _study_section(study, built)
    geometry = _figures_html(by_section["geometry"], anchor_of) + _metrics_table_html(study)
    sts = _summary_html(study, "sts", "sts_summary", html_ok=True)
    sts += _figures_html(by_section["sts"], anchor_of)
    finetune = _summary_html(study, "finetune", "finetune_summary", html_ok=False)
    finetune += _figures_html(by_section["finetune"], anchor_of)
    config_html = ((f"<p class='note'>{_e(study.config_note)}</p>" if study.config_note else "")
                   + f"<p>The YAML file(s) the study ran with, as written:</p><pre>{_e(study.config_text)}</pre>"
                   + ("" if study.config_note else "<details><summary>with the schema's defaults filled in</summary>"
                      f"<pre>{_e(yaml.safe_dump(parsed, sort_keys=False, allow_unicode=True))}</pre></details>"))
    mlflow_html = _mlflow_section(study, anchor_of)

    try:
        findings_html = _findings_html(findings(results, figures))
    except Exception as error:  # a summary that cannot be generated must not cost the report
        log.exception("report: the findings could not be generated")
        findings_html = f"<p class='note'>The findings could not be generated ({_e(error)}).</p>"
    sections = [("findings", "Findings", findings_html), ("geometry", "Geometry", geometry),
                ("sts", "Unsupervised STS", sts), ("finetune", "Fine-tuning", finetune),
                ("study", "Study", study_html), ("config", "Config", config_html), ("mlflow", "MLflow runs", mlflow_html)]
    nav = "".join(f"<a href='#{key}'>{_e(title)}</a>" for key, title, _ in sections)
    body = "".join(f"<section id='{key}'><h2>{_e(title)}</h2>{_notes_html(study, key)}{content}</section>"
                   for key, title, content in sections)
    name = parsed.get("study", "study")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>tokenuni report · {_e(name)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>tokenuni report · study “{_e(name)}”</h1>"
            f"<p>{len(figures)} figures · {len(study.records)} jobs · built {_e(built)} · one offline file "
            "(figures embedded)</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")
    with atomic_path(out_html) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    summary = {"path": str(out_html), "bytes": out_html.stat().st_size, "figures": len(figures),
               "runs": sum(1 for r in study.records if r["record_id"] in mapping), "records": len(study.records),
               "notes": [n for notes in study.notes.values() for n in notes]}
    log.info("report %s: %d figures, %d of %d jobs with an MLflow run, %.1f MB", out_html, summary["figures"],
             summary["runs"], summary["records"], summary["bytes"] / 1e6)
    return summary
