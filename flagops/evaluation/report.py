"""The suite report: one self-contained HTML page comparing models task by task.

It holds what a reader needs to compare models without the JSON: for each task type a table
(tasks down, models across, the main score, the best one in bold), the per-type averages and
the overall average, every secondary metric in a folded table, and the comparison chart
inlined as a PNG. No scripts, no remote assets: it opens from an MLflow artifact or a CI
download as it is.
"""

from __future__ import annotations

import base64
import html
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flagops.data.formats import atomic_path

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #f3f3f3; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #eaf5ea; }
td.none { color: #999; text-align: center; }
.meta { color: #666; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #ddd; margin-top: 0.6em; }
details { margin: 0.6em 0; }
"""


def _cell(value: float | None, best: float | None) -> str:
    if value is None:
        return '<td class="none">–</td>'
    cls = "num best" if best is not None and np.isclose(value, best) else "num"
    return f'<td class="{cls}">{value:.4f}</td>'


def _table(header: Sequence[str], body: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _type_section(kind: str, rows: Sequence[Mapping[str, Any]], models: Sequence[str], metric: str) -> str:
    """Tasks of one type down, models across: main scores, the best per task in bold, then the average."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    score = {(r["task"], r["model"]): r["main_score"] for r in rows}
    body = []
    for task in tasks:
        values = [score.get((task, m)) for m in models]
        best = max((v for v in values if v is not None), default=None)
        body.append(f"<tr><td>{html.escape(task)}</td>{''.join(_cell(v, best) for v in values)}</tr>")
    means = [np.mean(found) if (found := [score[(t, m)] for t in tasks if (t, m) in score]) else None for m in models]
    best = max((v for v in means if v is not None), default=None)
    body.append(f"<tr><th>average ({len(tasks)} tasks)</th>{''.join(_cell(v, best) for v in means)}</tr>")
    return f"<h2>{html.escape(kind)} <span class='meta'>main score: {html.escape(metric)}</span></h2>" + _table(["task", *models], body)


def _details(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every metric of every row, folded: the numbers behind the main scores."""
    names = list(dict.fromkeys(name for r in rows for name in r["metrics"]))
    body = [
        f"<tr><td>{html.escape(r['task'])}</td><td>{html.escape(r['model'])}</td>"
        + "".join(_cell(r["metrics"].get(n), None) for n in names)
        + "</tr>"
        for r in rows
    ]
    return f"<details><summary>all metrics ({len(rows)} rows)</summary>{_table(['task', 'model', *names], body)}</details>"


def render_html(rows: Sequence[Mapping[str, Any]], main_metric: Mapping[str, str], title: str, chart_png: bytes | None = None) -> str:
    """The page for ``run_suite``'s rows; ``main_metric`` maps a task type to its main score's name."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    kinds = list(dict.fromkeys(r["type"] for r in rows))
    sections = [_type_section(k, [r for r in rows if r["type"] == k], models, main_metric[k]) for k in kinds]
    overall = []
    for m in models:
        mine = [r["main_score"] for r in rows if r["model"] == m]
        overall.append(float(np.mean(mine)) if mine else None)
    best = max((v for v in overall if v is not None), default=None)
    count = [sum(r["model"] == m for r in rows) for m in models]
    summary = _table(
        ["", *models],
        [
            f"<tr><th>tasks run</th>{''.join(f'<td class=num>{n}</td>' for n in count)}</tr>",
            f"<tr><th>average of main scores</th>{''.join(_cell(v, best) for v in overall)}</tr>",
        ],
    )
    chart = ""
    if chart_png is not None:
        chart = f'<h2>chart</h2><img alt="comparison chart" src="data:image/png;base64,{base64.b64encode(chart_png).decode()}">'
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p class='meta'>{len(models)} systems (an M3 model is one per mode), {len({r['task'] for r in rows})} tasks. "
        "A dash: the system does not run that "
        "task (a reranker on retrieval, bm25 on STS). Bold: the best score in its row.</p>"
        f"<h2>summary</h2>{summary}{''.join(sections)}{_details(rows)}{chart}</body></html>\n"
    )


def png_bytes(write_png, *args, **kwargs) -> bytes:
    """What ``write_png(path, *args, **kwargs)`` writes, as bytes (to inline a chart)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chart.png"
        write_png(path, *args, **kwargs)
        return path.read_bytes()


def write_html(path: str | Path, page: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
