"""KFP component for catalog step ``evaluate``; its metrics also show in the KFP UI."""

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
):
    """nDCG@10 / MRR@10 / Recall / MAP for BM25, the base model and the candidate."""
    run_step(
        "evaluate",
        params,
        tracking_uri,
        pipeline_key,
        model=model,
        eval_set=eval_set,
        metrics=metrics,
        chart=chart,
        chart_data=chart_data,
    )
