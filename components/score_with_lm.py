"""KFP component for catalog step ``score_with_lm``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def score_with_lm(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    train_data: Input[Dataset],
    llm_embedder_data: Output[Dataset],
):
    """LLM-Embedder's reward: each key of the training data scored by the base LM's answer likelihood (-mean NLL)."""
    run_step(
        "score_with_lm",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        train_data=train_data,
        llm_embedder_data=llm_embedder_data,
    )
