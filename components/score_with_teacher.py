"""KFP component for catalog step ``score_with_teacher``."""

from kfp.dsl import Dataset, Input, Output

from components import component, run_step


@component
def score_with_teacher(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    train_data: Input[Dataset],
    scored_data: Output[Dataset],
):
    """Add pos_scores/neg_scores from a teacher reranker, for the rerankers' and embedders' distillation."""
    run_step(
        "score_with_teacher",
        params,
        tracking_uri,
        pipeline_key,
        train_data=train_data,
        scored_data=scored_data,
    )
