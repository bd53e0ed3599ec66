"""KFP component for catalog step ``evaluate``; its metrics also show in the KFP UI.
``reranker_model``, ``pretrained_model``, ``merged_model`` and ``ood_eval_set`` are None when the
pipeline has no such branch."""

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
    pretrained_model: Input[Model] = None,
    merged_model: Input[Model] = None,
    ood_eval_set: Input[Dataset] = None,
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
        pretrained_model=pretrained_model,
        merged_model=merged_model,
        ood_eval_set=ood_eval_set,
        metrics=metrics,
        chart=chart,
        chart_data=chart_data,
    )
