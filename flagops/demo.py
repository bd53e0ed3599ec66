"""`flagops demo`: run a profile's pipeline in its workspace, serve the champion, print a summary.

``run_demo`` runs the DAG (``workspace.run_pipeline``), starts `flagops serve` on the
champion for a smoke request (``serving.smoke``) and prints the held-out metrics, the
promotion and how to serve and inspect the result again.
"""

from __future__ import annotations

import time
from pathlib import Path

from flagops.config import FlagopsConfig, load_config
from flagops.data.formats import read_json
from flagops.registry import families
from flagops.research import RESEARCH_TITLES
from flagops.serving.smoke import SAMPLE_QUERIES, SmokeResult, smoke_rerank, smoke_serve
from flagops.workspace import default_workdir, run_pipeline


def print_summary(cfg: FlagopsConfig, workdir: Path, served: SmokeResult, model_uri: str, reranked=None) -> None:
    from rich.console import Console
    from rich.table import Table

    from flagops.evaluation.plots import result_rows
    from flagops.registry.tracking import tracking_uri

    metrics = read_json(workdir / "metrics/eval.json")
    promotion = read_json(workdir / "registry/promotion.json")
    columns = ["ndcg@10", "mrr@10", "recall@100"] + (["ood/ndcg@10"] if "candidate/ood/ndcg@10" in metrics else [])
    table = Table(title=f"Held-out retrieval ({cfg.profile} profile)" + (", and the second domain (ood)" if len(columns) > 3 else ""))
    table.add_column("system")
    for m in columns:
        table.add_column(m, justify="right")
    for label, prefix in result_rows(metrics):
        table.add_row(label, *(f"{metrics[f'{prefix}/{m}']:.4f}" if f"{prefix}/{m}" in metrics else "-" for m in columns))
    console = Console(soft_wrap=True)
    console.print(table)
    merge_json = workdir / "models/merged/merge.json"
    if merge_json.is_file():  # the merge's ingredients and weights, and which model the pipeline released
        record = read_json(merge_json)
        weights = ", ".join(f"{Path(i['source']).name} {i['weight']:.4f}" for i in record["ingredients"])
        picked = "merged" if metrics.get("candidate/merged") == 1.0 else "fine-tuned"
        console.print(f"merge ({record['method']}): weights {weights}; released the {picked} model (merge.select={cfg.merge.select})")
    longctx = workdir / "metrics/longctx.json"
    if longctx.is_file():  # the long-context branch: the extended LM against its base (docs/long-context.md)
        m = read_json(longctx)
        console.print(
            "long context (base -> extended, up to {} tokens): needle ROUGE-L {:.3f} -> {:.3f}, exact match {:.3f} -> {:.3f}, "
            "topic {:.2f} -> {:.2f}, short-context perplexity {:.1f} -> {:.1f}".format(
                cfg.longctx.base_context * cfg.longctx.factor,
                *(
                    m[f"{model}/{key}"]
                    for key in ("needle_rouge_l", "needle_exact_match", "topic_accuracy", "short_ppl")
                    for model in ("base", "extended")
                ),
            ),
            markup=False,
        )
        registration = workdir / "registry/longctx_registration.json"
        if registration.is_file():
            record = read_json(registration)
            reasons = "; ".join(record["promotion"].get("reasons", []))
            console.print(
                f"registered: {record['name']} version {record['version']} -> alias {record['promotion']['alias']} ({reasons})",
                markup=False,
            )
    for stem, title in RESEARCH_TITLES.items():  # a research branch's measure (docs/research.md)
        path = workdir / "metrics" / f"{stem}.json"
        if path.is_file():
            numbers = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in read_json(path).items())
            console.print(f"{title}: {numbers}", markup=False)
    delta = metrics.get("candidate/ndcg@10", 0.0) - metrics.get("base/ndcg@10", 0.0)
    console.print(f"candidate vs base nDCG@10: {delta:+.4f}")
    gate = cfg.registry.primary_metric
    console.print(f"champion gate: candidate/{gate} = {metrics[f'candidate/{gate}']:.4f} (registry.primary_metric)")
    console.print(
        f"registered: [bold]{promotion['name']}[/] version {promotion['version']} -> alias "
        f"[bold]{promotion['alias']}[/] ({'; '.join(promotion.get('reasons', []))})"
    )
    if reranked is not None:  # the reranker family: its gate, its promotion, its smoke request
        rr = read_json(workdir / "registry/reranker_promotion.json")
        rr_gate = f"reranked/{gate}"
        console.print(
            f"reranker gate: {rr_gate} = {metrics[rr_gate]:.4f} "
            f"({metrics[rr_gate] - metrics[f'candidate/{gate}']:+.4f} vs the candidate's dense ranking"
            + (
                f", {metrics[rr_gate] - metrics[f'base_reranked/{gate}']:+.4f} vs the base reranker)"
                if f"base_reranked/{gate}" in metrics
                else ")"
            )
        )
        reasons = "; ".join(rr.get("reasons", []))
        console.print(f"registered: [bold]{rr['name']}[/] version {rr['version']} -> alias [bold]{rr['alias']}[/] ({reasons})")
        order = ", ".join(f"#{i} {score:.3f}" for i, score in reranked)
        console.print(f"served the reranker through KServe /v1/rerank: {SAMPLE_QUERIES[0]!r} -> passages {order}", markup=False)
    vectors = served.vectors
    dims = len(vectors[0]) if vectors else 0
    example = [round(v, 4) for v in vectors[0][:3]]
    console.print(f"served {model_uri} through KServe: {len(vectors)} queries -> {dims}-dim embeddings, e.g. {example}")
    settings = f"serve.backend={cfg.serve.backend}, serve.quantize={cfg.serve.quantize}"
    console.print(f"  inference backend: {served.backend} ({settings})", markup=False)
    if served.quantization_check:
        console.print(f"  accuracy check (evaluate, registered with the model): {served.quantization_check}", markup=False)
    if served.lexical is not None:
        weights = ", ".join(f"{token!r} {w:.3f}" for token, w in served.lexical)
        console.print(f"  and lexical weights (return_sparse) of {SAMPLE_QUERIES[0]!r}: {weights}", markup=False)
    if cfg.model.kind == "m3":
        call = (
            f'/v1/models/{cfg.serve.model_name}:predict -d \'{{"instances": ["how do I parse JSON?"], '
            '"is_query": true, "return_sparse": true, "return_colbert": true}\''
        )
    else:
        call = f'/v1/embeddings -d \'{{"model": "{cfg.serve.model_name}", "input": ["how do I parse JSON?"]}}\''
    uri = tracking_uri(cfg.registry, workdir)
    # A sqlite store needs a local UI process; a tracking server is its own UI.
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri
    print(
        "\nServe it again:   make serve"
        + (f" PROFILE={cfg.profile}" if cfg.profile != "demo" else "")
        + f"\n  (= MLFLOW_TRACKING_URI={uri} flagops serve --model {model_uri})"
        + "\nThen, in another shell:\n"
        + f"  curl -s -H 'Content-Type: application/json' http://127.0.0.1:{cfg.serve.port}{call}"
        + f"\nMLflow UI:        {ui}"
        + f"\nPlots:            (cd {workdir} && dvc plots show)    Metrics: (cd {workdir} && dvc metrics show)"
    )


def run_demo(profile: str, workdir: Path | None = None, overrides=()) -> int:
    started = time.perf_counter()
    workdir = workdir or default_workdir(profile)
    code = run_pipeline(profile, workdir, overrides)
    if code != 0:
        return code
    cfg = load_config(workdir / "params.yaml")
    model_uri = f"models:/{cfg.registry.model_name}@champion"
    print(f"flagops: serving {model_uri} on 127.0.0.1 for a smoke request")
    served = smoke_serve(model_uri, cfg, workdir)
    reranked = None
    if cfg.reranker.enabled:
        rr_uri = f"models:/{cfg.reranker.model_name}@champion"
        print(f"flagops: serving {rr_uri} on 127.0.0.1 for a smoke request")
        reranked = smoke_rerank(rr_uri, families.project(cfg, "reranker"), workdir)
    print_summary(cfg, workdir, served, model_uri, reranked)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    return 0
