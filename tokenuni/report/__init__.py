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
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tokenuni.metrics.rows import label as _metric_label
from tokenuni.report.discovery import (CAPTIONS_DIR, HEADLINE_METRICS, RULES_DIR, WIDE_PNG, Figure, caption_from_file,
                                       discover_figures, figure_anchor, link_runs, png_width, render_caption,
                                       rule_captions)
from tokenuni.report.findings import Finding, findings, findings_html, format_value, headline_table
from tokenuni.report.markup import CSS, esc, html_table, markdown_to_html, ms_to_text

log = logging.getLogger(__name__)
MLFLOW_UI = "http://127.0.0.1:5000"

#: the report's parts: discovery (which figures, where, captions, runs), findings (words from the tables),
#: markup (HTML, Markdown, captions); this module writes the sections and the file
__all__ = ["build_report", "discover_figures", "figure_anchor", "findings", "headline_table", "markdown_to_html",
           "rule_captions", "Figure", "Finding", "CAPTIONS_DIR", "RULES_DIR", "HEADLINE_METRICS"]


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


def _figure_html(figure: Figure, anchor_of) -> str:
    raw = figure.path.read_bytes()
    data = base64.b64encode(raw).decode("ascii")
    wide = " class='wide'" if png_width(raw) >= WIDE_PNG else ""
    meta = [f"<code>{esc(figure.rel)}</code>"]
    if figure.record is not None:
        job = esc(figure.record["job_key"])
        if figure.run_id:
            meta.append(f"MLflow run <a href='#{anchor_of(figure.record)}'><code>{esc(figure.run_id)}</code></a> ({job})")
        else:
            meta.append(f"job <a href='#{anchor_of(figure.record)}'>{job}</a> (not yet in MLflow)")
    caption = figure.caption_html
    return (f"<figure id='{esc(figure_anchor(figure.rel))}'{wide}>"
            f"<img src='data:image/png;base64,{data}' alt='{esc(figure.title)}' loading='eager'>"
            f"<figcaption><strong>{esc(figure.title)}</strong>{caption}<span class='meta'>{' · '.join(meta)}</span>"
            f"</figcaption></figure>")


def _figures_html(figures: list[Figure], anchor_of) -> str:
    out, group = [], None
    for figure in figures:
        if figure.group != group:
            if group is not None:
                out.append("</div>")
            group = figure.group
            out.append(f"<h3>{esc(group)}</h3><div class='grid'>")
        out.append(_figure_html(figure, anchor_of))
    if group is not None:
        out.append("</div>")
    return "".join(out)


# ------------------------------------------------------------------------------------------ sections
def _notes_html(study: Study, section: str) -> str:
    return "".join(f"<p class='note'>{esc(n)}</p>" for n in study.notes.get(section, []))


def _study_section(study: Study, built: str) -> str:
    from tokenuni.config import model_specs

    config, records = study.config, study.records
    facts = [("study", esc(config.get("study", "?"))), ("results", f"<code>{esc(study.results.resolve())}</code>"),
             ("report built", esc(built))]
    commits = Counter((r.get("tags", {}).get("mlflow.source.git.commit", "unknown"),
                       r.get("tags", {}).get("tokenuni.git_dirty") == "true") for r in records)
    if commits:
        facts.append(("git commit", "<br>".join(
            f"<code>{esc(c)}</code>{' (uncommitted changes)' if dirty else ''} — {n} job(s)"
            for (c, dirty), n in commits.most_common())))
    times = [r["start_time"] for r in records if r.get("start_time")] + [r["end_time"] for r in records if r.get("end_time")]
    if times:
        facts.append(("jobs ran", f"{esc(ms_to_text(min(times)))} – {esc(ms_to_text(max(times)))}"))
    facts.append(("jobs", f"{len(records)} run record(s)"))
    out = ["<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]

    try:
        models = model_specs(config) if isinstance(config.get("models"), dict) else {}
    except Exception:
        models = {}
    if models:
        out.append("<h3>Models</h3>" + html_table(
            ["key", "id", "revision", "training step", "path"],
            [[f"<code>{esc(k)}</code>", esc(s.get("id")), f"<code>{esc(s.get('revision') or 'default')}</code>",
              esc(s.get("training_step", "")), esc(s.get("path") or "")] for k, s in models.items()]))
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
                source.append(f"mirror {esc(mirror.get('format'))}: " + ", ".join(f"<code>{esc(f)}</code>" for f in mirror.get("files", [])))
            if hub:
                source.append(f"hub {esc(hub.get('id'))}" + (f" ({esc(hub.get('config'))})" if hub.get("config") else "")
                              + (f" [{esc(hub.get('split'))}]" if hub.get("split") else ""))
            body.append([f"<code>{esc(key)}</code>", "<br>".join(source),
                         "yes" if (spec or {}).get("geometry", True) else "STS only",
                         esc((spec or {}).get("max_sentences") or "all"), esc(rows_by_corpus.get(key, ""))])
        out.append("<h3>Corpora</h3>" + html_table(["key", "source", "token geometry", "max sentences", "sentences imported"],
                                               body, numeric={4}))
    if records:
        per_rule = Counter(r.get("rule", "?") for r in records)
        failed = Counter(r.get("rule", "?") for r in records if r.get("status") not in ("FINISHED", None))
        out.append("<h3>Jobs per rule</h3>" + html_table(
            ["rule", "jobs", "failed"],
            [[f"<code>{esc(rule)}</code>", str(n), str(failed.get(rule, 0)) if failed.get(rule) else ""]
             for rule, n in sorted(per_rule.items())], numeric={1, 2}))
    return "".join(out)


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
    rows = [[f"<code>{esc(m)}</code>", esc(c), f"<span title='{esc(_metric_label(metric))}'>{esc(metric)}</span>",
             esc(v or "–"), *[format_value(x) for x in values]]
            for (m, c, metric, v), values in zip(pivot.index, pivot.to_numpy(dtype=float).tolist())]
    header = ["model", "corpus", "metric", "variant", *[f"L{layer}" for layer in layers]]
    return ("<h3 id='headline-table'>Headline metrics per layer</h3>"
            f"<p>From <code>tables/{path.name}</code>; 3 significant digits; L0 = embedding output, Li = output of "
            "block i; the mean over seeds and sample sizes where a layer has several rows.</p>"
            + html_table(header, rows, numeric=set(range(4, 4 + len(layers)))))


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
    facts = [("tracking URI", f"<code>{esc(uri or 'unknown (no mlflow/sync.json)')}</code>"),
             ("experiment", f"{esc(sync.get('experiment', '?'))} (id {esc(experiment_id or '?')})"),
             ("runs", f"{sum(1 for r in study.records if r['record_id'] in mapping)} of {len(study.records)} "
                      "job(s) in MLflow")]
    ui = uri.rstrip("/") if uri.startswith("http") else MLFLOW_UI
    out = ["<dl class='facts'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>"]
    if uri.startswith("sqlite"):
        out.append(f"<p>Browse the runs with <code>mlflow ui --backend-store-uri {esc(uri)}</code>; the run ids "
                   f"below then link to {esc(MLFLOW_UI)}.</p>")
    if experiment_id:
        from tokenuni.tracking import runs_view_url

        out.append(f"<p><a href='{esc(runs_view_url(ui, experiment_id))}'>The runs table with the headline metrics"
                   "</a>, grouped by stage.</p>")
    rows, ids = [], []
    for record in sorted(study.records, key=lambda r: (r.get("rule", ""), r.get("job_key", ""), r.get("start_time") or 0)):
        run_id = mapping.get(record["record_id"])
        status = record.get("status", "")
        link = (f"<a href='{esc(ui)}/#/experiments/{esc(experiment_id)}/runs/{esc(run_id)}'><code>{esc(run_id)}</code></a>"
                if run_id and experiment_id else "<span class='note'>not synced</span>")
        wildcards = ", ".join(f"{esc(k)}={esc(v)}" for k, v in record.get("wildcards", {}).items())
        error = record.get("tags", {}).get("tokenuni.error", "")
        seconds = ((record.get("end_time") or 0) - (record.get("start_time") or 0)) / 1000
        rows.append([f"<code>{esc(record.get('rule'))}</code>", wildcards,
                     f"<span class='status-{esc(status)}' title='{esc(error)}'>{esc(status)}</span>",
                     f"{seconds:.1f}" if seconds > 0 else "", link])
        ids.append(anchor_of(record))
    if rows:
        out.append(html_table(["rule", "wildcards", "status", "seconds", "MLflow run id"], rows, numeric={3}, row_ids=ids))
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
    link_runs(figures, study.records, mapping)
    captions = Path(captions_dir) if captions_dir else CAPTIONS_DIR
    # a rule whose caption is not named after it (``<rule without figure_>.rst``) is found through the
    # ``caption=`` of its rule; without the workflow's rules (an installed package) the names suffice
    by_rule = rule_captions(captions.parent / "rules") or rule_captions(RULES_DIR)
    for figure in figures:
        figure.caption_html = caption_from_file(figure, captions, by_rule, parsed) or ""
    intro = captions / "workflow.rst"
    intro_html = render_caption(intro, {}, parsed) if intro.is_file() else ""
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
    config_html = ((f"<p class='note'>{esc(study.config_note)}</p>" if study.config_note else "")
                   + f"<p>The YAML file(s) the study ran with, as written:</p><pre>{esc(study.config_text)}</pre>"
                   + ("" if study.config_note else "<details><summary>with the schema's defaults filled in</summary>"
                      f"<pre>{esc(yaml.safe_dump(parsed, sort_keys=False, allow_unicode=True))}</pre></details>"))
    mlflow_html = _mlflow_section(study, anchor_of)

    try:
        findings_part = findings_html(findings(results, figures))
    except Exception as error:  # a summary that cannot be generated must not cost the report
        log.exception("report: the findings could not be generated")
        findings_part = f"<p class='note'>The findings could not be generated ({esc(error)}).</p>"
    sections = [("findings", "Findings", findings_part), ("geometry", "Geometry", geometry),
                ("sts", "Unsupervised STS", sts), ("finetune", "Fine-tuning", finetune),
                ("study", "Study", study_html), ("config", "Config", config_html), ("mlflow", "MLflow runs", mlflow_html)]
    nav = "".join(f"<a href='#{key}'>{esc(title)}</a>" for key, title, _ in sections)
    body = "".join(f"<section id='{key}'><h2>{esc(title)}</h2>{_notes_html(study, key)}{content}</section>"
                   for key, title, content in sections)
    name = parsed.get("study", "study")
    page = ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>tokenuni report · {esc(name)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>tokenuni report · study “{esc(name)}”</h1>"
            f"<p>{len(figures)} figures · {len(study.records)} jobs · built {esc(built)} · one offline file "
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
