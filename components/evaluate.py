"""KFP component for catalog step ``evaluate``; its metrics also show in the KFP UI.
``reranker_model`` is None when the pipeline trains no reranker."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    model: Input[Model],
    eval_set: Input[Dataset],
    metrics: Output[Metrics],
    chart: Output[Artifact],
    chart_data: Output[Artifact],
    reranker_model: Input[Model] = None,
):
    """nDCG@10 / MRR@10 / Recall / MAP for BM25, the base model, the candidate (and the rerankers over its top-k)."""
    run_step(
        "evaluate",
        params,
        tracking_uri,
        pipeline_key,
        model=model,
        eval_set=eval_set,
        reranker_model=reranker_model,
        metrics=metrics,
        chart=chart,
        chart_data=chart_data,
    )
