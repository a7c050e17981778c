"""The report's markup: HTML escaping and tables, the study's Markdown (a maintained parser,
markdown-it-py, with GitHub tables) and the Snakemake captions' reStructuredText paragraphs."""
from __future__ import annotations

import datetime as _dt
import html
import logging
import re


log = logging.getLogger("tokenuni.report")
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


# ------------------------------------------------------------------------------------------ helpers
def esc(value) -> str:
    return html.escape("" if value is None else str(value))


def ms_to_text(ms) -> str:
    if not ms:
        return ""
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def html_table(header: list[str], rows: list[list[str]], *, numeric: set[int] = frozenset(), row_ids=None) -> str:
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
    text = esc(text)
    text = re.sub(r"``(.+?)``", r"<code>\1</code>", text)
    text = re.sub(r"`([^`]+?)`_?", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<em>\1</em>", text)


#: a table cell that holds a number (optionally ± spread, or a percentage): right-aligned in the report
_NUMERIC_CELL = re.compile(r"[-+−]?[\d.]+(\s*±\s*[\d.]+)?%?|")


def markdown_to_html(text: str, *, heading_offset: int = 2) -> str:
    """The Markdown the study writes (headings, paragraphs, pipe tables, lists) as HTML, parsed by
    markdown-it-py (CommonMark with GitHub's pipe tables; raw HTML in the text is escaped, not passed on).

    ``# x`` becomes ``<h{1 + heading_offset}>`` so a summary's own title nests under the report's section;
    every table scrolls sideways on its own, and its columns whose cells are all numbers are right-aligned.
    """
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(text)
    table_start = None
    for index, token in enumerate(tokens):
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + heading_offset)}"
        elif token.type == "table_open":
            table_start = index
        elif token.type == "table_close" and table_start is not None:
            _mark_numeric_columns(tokens[table_start:index])
            table_start = None
    body = parser.renderer.render(tokens, parser.options, {})
    return body.replace("<table>", "<div class='scroll'><table>").replace("</table>", "</table></div>").strip()


def _mark_numeric_columns(table) -> None:
    """Give the body cells of every all-numeric column (empty cells allowed) the class ``num``."""
    columns: dict[int, list] = {}
    column, in_body = 0, False
    for index, token in enumerate(table):
        if token.type == "tbody_open":
            in_body = True
        elif token.type == "tr_open":
            column = 0
        elif token.type == "td_open" and in_body:
            content = table[index + 1].content if table[index + 1].type == "inline" else ""
            columns.setdefault(column, []).append((token, content.strip()))
            column += 1
    for cells in columns.values():
        if all(_NUMERIC_CELL.fullmatch(content) for _, content in cells):
            for token, _ in cells:
                token.attrSet("class", "num")


def rst_to_html(text: str) -> str:
    """A Snakemake caption (reStructuredText, usually a paragraph or two) as HTML paragraphs."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for para in paragraphs:
        lines = [line for line in para.splitlines() if not re.fullmatch(r"\s*[=\-~^`'\"#*+]{3,}\s*", line)]
        if lines and not lines[0].lstrip().startswith(".."):
            out.append(f"<p>{_inline_markup(' '.join(line.strip() for line in lines))}</p>")
    return "".join(out)
