"""KFP component for catalog step ``evaluate_long_context``; its metrics also show in the KFP UI."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate_long_context(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    extended_lm: Input[Model],
    corpus: Input[Dataset],
    longctx_metrics: Output[Metrics],
    needle_heatmap: Output[Artifact],
):
    """Needle-in-a-haystack over lengths x depths, topic retrieval and short-context perplexity, before and after."""
    run_step(
        "evaluate_long_context",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        extended_lm=extended_lm,
        corpus=corpus,
        longctx_metrics=longctx_metrics,
        needle_heatmap=needle_heatmap,
    )
