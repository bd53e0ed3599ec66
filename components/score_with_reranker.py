"""KFP component for catalog step ``score_with_reranker``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def score_with_reranker(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    train_data: Input[Dataset],
    reranker_model: Input[Model],
    reranker_scored_data: Output[Dataset],
):
    """Score the training data with the trained reranker: the embedder distils from it."""
    run_step(
        "score_with_reranker",
        params,
        tracking_uri,
        pipeline_key,
        train_data=train_data,
        reranker_model=reranker_model,
        reranker_scored_data=reranker_scored_data,
    )
