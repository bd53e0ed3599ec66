"""KFP component for catalog step ``train_reranker``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_reranker(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    train_data: Input[Dataset],
    reranker_model: Output[Model],
    reranker_loss_curve: Output[Artifact],
):
    """Fine-tune a cross-encoder, LLM (LoRA) or layerwise reranker on grouped cross-entropy (+ teacher KD)."""
    run_step(
        "train_reranker",
        params,
        tracking_uri,
        pipeline_key,
        train_data=train_data,
        reranker_model=reranker_model,
        reranker_loss_curve=reranker_loss_curve,
    )
