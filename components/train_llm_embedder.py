"""KFP component for catalog step ``train_llm_embedder``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_llm_embedder(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    llm_embedder_data: Input[Dataset],
    llm_embedder_model: Output[Model],
    llm_embedder_loss_curve: Output[Artifact],
):
    """Train the base encoder on the LM's rewards: stabilized distillation + contrastive, one task per batch."""
    run_step(
        "train_llm_embedder",
        params,
        tracking_uri,
        pipeline_key,
        llm_embedder_data=llm_embedder_data,
        llm_embedder_model=llm_embedder_model,
        llm_embedder_loss_curve=llm_embedder_loss_curve,
    )
