"""The comparison chart: systems side by side on the headline metrics, as a PNG and as rows.

The rows (``{"system", "metric", "value"}``) are what DVC's bar template plots; the PNG is
the same picture for MLflow and for people without DVC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flagops.data.formats import atomic_path, write_json

# Left to right: baselines first (the RetroMAE-pretrained base too); with a merge, the fine-tuned
# and the merged model; the candidate; then the rerankers over the candidate's top-k (base, trained).
SYSTEMS: tuple[str, ...] = ("bm25", "base", "pretrained", "fine_tuned", "merged", "candidate", "base_reranked", "reranked")
CHART_METRICS: tuple[str, ...] = ("ndcg@10", "mrr@10", "recall@100")


M3_MODES = ("m3_dense", "m3_sparse", "m3_colbert", "m3_hybrid")


def result_rows(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    """(label, key prefix) of every system in ``metrics``: baselines, the candidate, and
    the candidate's M3 modes when it is an M3 model (``candidate/m3_hybrid/ndcg@10``)."""
    rows = [(s, s) for s in SYSTEMS if any(k.startswith(f"{s}/") for k in metrics)]
    if "candidate/merged" in metrics:  # with a merge, the candidate is the release evaluate picked
        picked = "merged" if metrics["candidate/merged"] == 1.0 else "fine_tuned"
        rows = [(f"candidate (= {picked})" if s == "candidate" else label, s) for label, s in rows]
    rows += [(f"candidate {m}", f"candidate/{m}") for m in M3_MODES if f"candidate/{m}/ndcg@10" in metrics]
    layers = sorted({k.split("/")[1] for k in metrics if k.startswith("reranked/layer_")}, key=lambda s: int(s.removeprefix("layer_")))
    rows += [(f"reranked {layer.replace('_', ' ')}", f"reranked/{layer}") for layer in layers]
    return rows


def chart_rows(
    metrics: Mapping[str, float], systems: Sequence[str] = SYSTEMS, chart_metrics: Sequence[str] = CHART_METRICS
) -> list[dict[str, str | float]]:
    """Long-format rows from flat ``system/metric`` keys; systems absent from ``metrics`` are skipped."""
    return [
        # `label` gives DVC's one-dimensional bar template a distinct bar per (metric, system).
        {"system": system, "metric": metric, "label": f"{metric} {system}", "value": float(metrics[f"{system}/{metric}"])}
        for system in systems
        for metric in chart_metrics
        if f"{system}/{metric}" in metrics
    ]


def write_chart_data(path: str | Path, rows: Sequence[Mapping[str, str | float]]) -> None:
    write_json(path, list(rows))


def write_chart(path: str | Path, rows: Sequence[Mapping[str, str | float]], title: str = "Retrieval quality") -> None:
    """A grouped bar chart (one group per metric, one bar per system), written atomically as PNG."""
    metrics = list(dict.fromkeys(str(r["metric"]) for r in rows))
    systems = list(dict.fromkeys(str(r["system"]) for r in rows))
    values = {(r["system"], r["metric"]): float(r["value"]) for r in rows}
    fig = Figure(figsize=(max(7.0, 0.5 * len(metrics) * max(len(systems), 2)), 4), dpi=100)  # wide enough for its labels
    FigureCanvasAgg(fig)  # Agg renders to memory: no display, no global pyplot state
    ax = fig.add_subplot()
    width = 0.8 / max(len(systems), 1)  # the bars of one group fill 80% of its slot
    x = np.arange(len(metrics))
    for i, system in enumerate(systems):
        # A system without a value for a metric (bm25 on STS) gets no bar, not a bar at 0.
        shown = [(j, values[(system, m)]) for j, m in enumerate(metrics) if (system, m) in values]
        bars = ax.bar([x[j] + (i - (len(systems) - 1) / 2) * width for j, _ in shown], [v for _, v in shown], width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_xticks(x, metrics)
    ax.set_ylim(0, 1.2)  # every metric is a fraction; the headroom holds value labels and legend
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper left", ncols=max(len(systems), 1), fontsize=8, frameon=False)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # No Software/date metadata, so a re-run writes the same bytes.
        fig.savefig(tmp, format="png", metadata={"Software": None})


def write_layer_chart(path: str | Path, rows: Sequence[Mapping[str, float]], title: str = "Layerwise reranker: cutoff layer") -> None:
    """nDCG@10 against reranking latency, one point per cutoff layer: the speed/quality trade-off."""
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = [float(r["ms_per_query"]) for r in rows]
    ys = [float(r["ndcg@10"]) for r in rows]
    ax.plot(xs, ys, marker="o")
    for r, x, y in zip(rows, xs, ys, strict=True):
        ax.annotate(f"layer {int(r['layer'])}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("rerank latency (ms per query, this machine)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
