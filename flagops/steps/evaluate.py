"""Step `evaluate`: score the candidate, the base model and BM25 on the held-out BEIR set,
and, with a reranker in the pipeline, the base and the trained reranker over the candidate's
dense top-k (``base_reranked/*``, ``reranked/*``; a layerwise reranker adds one
``reranked/layer_<n>/*`` row per layer, with its latency).

Writes a flat metrics JSON (``<system>/<metric>``, floats rounded to 6 places), a grouped
bar chart PNG and the chart's rows for DVC's bar template; logs metrics and chart to MLflow.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from flagops.config import ConfigError
from flagops.data.formats import read_beir, read_sts, write_json
from flagops.evaluation import (
    CHART_METRICS,
    RETRIEVAL_METRICS,
    SYSTEMS,
    RetrievalEvaluator,
    bm25_search,
    chart_rows,
    prefixed,
    quant_check,
    result_rows,
    retrieval_metrics,
    sts_spearman,
    suite,
    write_chart,
    write_chart_data,
)
from flagops.evaluation.plots import write_layer_chart
from flagops.evaluation.report import png_bytes, render_html, write_html
from flagops.evaluation.rerank import layer_rows, rerank_metrics
from flagops.models.embedder import Embedder
from flagops.models.quantize import as_metrics
from flagops.registry import tracking

DECIMALS = 6


def run(cfg, inputs: Mapping[str, Path], outputs: Mapping[str, Path]) -> dict[str, float]:
    ev = cfg.evaluate
    eval_set = read_beir(inputs["eval_set"])
    sts_pairs = read_sts(ev.sts) if ev.sts else None
    judgements = sum(len(docs) for docs in eval_set.qrels.values())
    print(f"evaluate: {len(eval_set.corpus)} passages, {len(eval_set.queries)} queries, {judgements} judgements")

    tasks = suite.load_tasks(ev.tasks) if ev.tasks else []  # read and checked before any model loads
    evaluator = RetrievalEvaluator(eval_set, ev.batch_size, primary_metric=ev.primary_metric)
    # None loads model.base; the candidate is the directory this step was handed. With a merge,
    # the trained model is `fine_tuned` and `candidate` becomes the one select_release picks.
    merging = "merged_model" in inputs
    trained = "fine_tuned" if merging else "candidate"
    sources = {trained: str(inputs["model"])}
    sources |= {"merged": str(inputs["merged_model"])} if merging else {}
    sources |= {"pretrained": str(inputs["pretrained_model"])} if "pretrained_model" in inputs else {}
    sources |= {"base": None} if ev.base else {}
    ood = read_beir(inputs["ood_eval_set"]) if "ood_eval_set" in inputs else None
    rerank = "reranker_model" in inputs
    metrics: dict[str, float] = {}
    suite_rows: list[dict] = []  # evaluate.tasks' rows, one model per system
    candidate_run = None
    for system, source in sources.items():
        if system in (trained, "merged") and cfg.model.kind == "m3":  # its sparse, ColBERT and hybrid modes too
            embedder, found = evaluate_m3_candidate(cfg, source, eval_set, evaluator, prefix=system)
            candidate_run = evaluator.search(embedder, label=f"{system} dense") if rerank and system == trained else candidate_run
        else:
            embedder = Embedder.from_config(cfg.model, source=source, inference=True)
            run_ = evaluator.search(embedder, label=system)
            found = prefixed(retrieval_metrics(eval_set.qrels, run_), system)
            candidate_run = run_ if system == trained else candidate_run
        metrics.update(found)
        if ood is not None:  # the second domain: nobody trained on it
            ood_run = RetrievalEvaluator(ood, ev.batch_size).search(embedder, label=f"{system} ood")
            metrics.update(prefixed(retrieval_metrics(ood.qrels, ood_run), f"{system}/ood"))
        if tasks:
            rows = suite.run_tasks(embedder, source or cfg.model.base, tasks, ev.batch_size)
            metrics.update(suite.flat_metrics(rows, system))
            suite_rows += [{**row, "model": system} for row in rows]
        if sts_pairs is not None:
            metrics[f"{system}/sts_spearman"] = sts_spearman(embedder, sts_pairs, ev.batch_size, progress=system)
        del embedder  # one model in memory at a time
    if ev.bm25:
        run_bm25 = bm25_search(eval_set.corpus, eval_set.queries, evaluator.top_k)
        metrics.update(prefixed(retrieval_metrics(eval_set.qrels, run_bm25), "bm25"))
        if ood is not None:
            metrics.update(prefixed(retrieval_metrics(ood.qrels, bm25_search(ood.corpus, ood.queries, evaluator.top_k)), "bm25/ood"))
    if merging:
        default = ("ndcg@10", "ood/ndcg@10") if ood is not None else ("ndcg@10",)
        metrics.update(select_release(cfg.merge.select, cfg.merge.select_on or default, metrics))
    if ev.quant_check and cfg.model.kind == "bge":  # may the release run in int8 or OpenVINO bf16? (quantize/backend=auto)
        released = sources["merged"] if metrics.get("candidate/merged") == 1.0 else sources[trained]
        for measure in (quant_check.check_int8, quant_check.check_openvino_bf16):
            check = measure(cfg.model, released, evaluator, metrics[f"candidate/{ev.primary_metric}"], primary=ev.primary_metric)
            if check is not None:
                print(f"evaluate: accuracy check of the release: {check.summary()}")
                metrics.update(as_metrics(check))
    layers_chart = None
    if rerank:
        metrics.update(rerank_stage(cfg, eval_set, candidate_run, inputs["reranker_model"], tasks))
        if layers := layer_rows(metrics):
            layers_chart = Path(outputs["chart"]).with_name("reranker_layers.png")
    metrics = {key: round(float(value), DECIMALS) for key, value in metrics.items()}

    write_json(outputs["metrics"], metrics)
    systems = [s for s in SYSTEMS if not (merging and s == "candidate")]  # with a merge, candidate is a copy
    rows = chart_rows(metrics, systems, (*CHART_METRICS, "ood/ndcg@10")) + suite.report_rows(suite_rows)  # held-out, then suite bars
    write_chart(outputs["chart"], rows, title=f"Retrieval quality ({cfg.profile})")
    write_chart_data(outputs["chart_data"], rows)
    tracking.log_metrics(metrics)
    tracking.log_artifact(outputs["chart"])
    if suite_rows:  # MLflow only: the suite's tables (DVC has its bars in the chart and its keys in the metrics)
        with tempfile.TemporaryDirectory() as tmp:
            title = f"evaluate.tasks ({cfg.profile})"
            chart = png_bytes(write_chart, suite.report_rows(suite_rows), title=title)
            write_html(Path(tmp) / "suite_report.html", render_html(suite_rows, suite.MAIN_METRIC, title, chart))
            tracking.log_artifact(Path(tmp) / "suite_report.html")
    if layers_chart is not None:  # MLflow only: the layer rows are in the metrics for DVC
        with tempfile.TemporaryDirectory() as tmp:
            write_layer_chart(Path(tmp) / layers_chart.name, layers)
            tracking.log_artifact(Path(tmp) / layers_chart.name)

    print_table(metrics, primary_metric=ev.primary_metric)
    return metrics


def rerank_stage(cfg, eval_set, run, trained: Path, tasks=()) -> dict[str, float]:
    """Rerank the candidate's dense top-k with the base reranker (what train_reranker starts
    from) and with the trained one; a layerwise reranker also at each of its layers. The
    trained one also runs ``evaluate.tasks``' reranking tasks (``reranked/suite/...``)."""
    from flagops.models.reranker import load_reranker
    from flagops.training.reranker import build_reranker

    r = cfg.reranker
    print(f"evaluate: reranking the candidate's top {r.top_k} with the base and the trained {r.kind} reranker")
    torch.manual_seed(r.train.seed)  # a fresh classification head starts as train_reranker's does
    base = build_reranker(r).eval()
    metrics = rerank_metrics(partial(base.score_pairs, batch_size=r.batch_size), eval_set, run, r.top_k, "base_reranked")
    del base
    model = load_reranker(trained)
    metrics |= rerank_metrics(partial(model.score_pairs, batch_size=r.batch_size), eval_set, run, r.top_k, "reranked")
    if reranking := [t for t in tasks if t.type == "reranking"]:
        metrics |= suite.flat_metrics(suite.run_tasks(model, str(trained), reranking, r.batch_size, is_reranker=True), "reranked")
    for layer in getattr(model, "layers", ()):  # layerwise: every trained layer as a cutoff
        score = partial(model.score_pairs, batch_size=r.batch_size, cutoff_layer=layer)
        metrics |= rerank_metrics(score, eval_set, run, r.top_k, f"reranked/layer_{layer}")
    return metrics


def select_release(select: str, select_on: Sequence[str], metrics: Mapping[str, float]) -> dict[str, float]:
    """The ``candidate/*`` keys: a copy of the merged or the fine-tuned model's, and
    ``candidate/merged`` (1 or 0) telling register_model which directory they describe.

    ``select="best"`` takes the merged model when the mean of its ``select_on`` metrics is at
    least the fine-tuned one's (a tie goes to the merge: no loss on the target, and merging is
    what keeps the general ability); ``"merged"`` takes it always.
    """
    missing = [k for k in select_on for sys in ("merged", "fine_tuned") if f"{sys}/{k}" not in metrics]
    if missing:
        raise ConfigError(
            f"merge.select_on: no {missing[0]!r} in evaluate's metrics (ood/... needs ood_eval.enabled=true); "
            f"name metrics evaluate writes, such as ndcg@10"
        )
    means = {sys: sum(metrics[f"{sys}/{k}"] for k in select_on) / len(select_on) for sys in ("merged", "fine_tuned")}
    chosen = "merged" if select == "merged" or means["merged"] >= means["fine_tuned"] else "fine_tuned"
    on = " + ".join(select_on)
    print(
        f"evaluate: the release candidate is the {chosen.replace('_', '-')} model "
        f"(merge.select={select}; mean of {on}: merged {means['merged']:.4f}, fine-tuned {means['fine_tuned']:.4f})"
    )
    copied = {f"candidate/{k.partition('/')[2]}": v for k, v in metrics.items() if k.startswith(f"{chosen}/")}
    return copied | {"candidate/merged": float(chosen == "merged")}


def evaluate_m3_candidate(
    cfg, source: str, eval_set, evaluator: RetrievalEvaluator, prefix: str = "candidate"
) -> tuple[Embedder, dict[str, float]]:
    """Load and encode the M3 candidate once: ``candidate/m3_<mode>/*`` and the dense
    ``candidate/*`` keys every kind reports; also its dense ``Embedder`` (what the server runs).
    ``prefix``: the system's name in the keys (``merged`` for a merged M3 model).

    The candidate keys are the m3_dense run. With ``m3.mcls`` that run is MCLS, which the
    server does not do, so the candidate keys take a plain dense pass of their own.
    """
    from flagops.evaluation.m3 import evaluate_m3
    from flagops.models.m3 import M3Embedder

    m3 = M3Embedder.from_config(cfg.model, cfg.m3, source=source, require_heads=cfg.m3.unified_finetuning, inference=True)
    metrics = evaluate_m3(m3, eval_set, cfg, prefix=prefix)
    if cfg.m3.mcls:
        dense = evaluator(m3.embedder, prefix=prefix)
    else:
        dense = {f"{prefix}/{name}": metrics[f"{prefix}/m3_dense/{name}"] for name in RETRIEVAL_METRICS}
    return m3.embedder, {**dense, **metrics}


def print_table(metrics: Mapping[str, float], primary_metric: str) -> None:
    """Systems as rows, metrics as columns; the candidate's primary metric is called out."""
    extra = [c for c in ("ood/ndcg@10", "sts_spearman", "ms_per_query") if any(k.endswith(f"/{c}") for k in metrics)]
    columns = [*RETRIEVAL_METRICS, *extra]
    table = Table(title="evaluate")
    table.add_column("system")
    for name in columns:
        table.add_column(name, justify="right")
    for label, prefix in result_rows(metrics):
        cells = [metrics.get(f"{prefix}/{name}") for name in columns]
        table.add_row(label, *("-" if v is None else f"{v:.4f}" for v in cells))
    console = Console()
    console.width = max(console.width, 100)  # a pipe reports 80 columns; the table needs ~95
    console.print(table)
    line = f"primary: candidate/{primary_metric} = {metrics[f'candidate/{primary_metric}']:.4f}"
    if f"base/{primary_metric}" in metrics:
        delta = metrics[f"candidate/{primary_metric}"] - metrics[f"base/{primary_metric}"]
        line += f" ({delta:+.4f} vs base)"
    console.print(line)
    if "candidate/suite/average" in metrics:  # evaluate.tasks: the suite's mean main score
        base = f" (base {metrics['base/suite/average']:.4f})" if "base/suite/average" in metrics else ""
        console.print(f"suite: candidate/suite/average = {metrics['candidate/suite/average']:.4f}{base} over evaluate.tasks")
    if f"reranked/{primary_metric}" in metrics:  # the reranker's gate metric, against what it reranks
        reranked = metrics[f"reranked/{primary_metric}"]
        line = (
            f"reranker: reranked/{primary_metric} = {reranked:.4f} ({reranked - metrics[f'candidate/{primary_metric}']:+.4f} vs candidate"
        )
        if f"base_reranked/{primary_metric}" in metrics:
            line += f", {reranked - metrics[f'base_reranked/{primary_metric}']:+.4f} vs the base reranker"
        console.print(line + ")")
