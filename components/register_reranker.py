"""KFP component for catalog step ``register_reranker``."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def register_reranker(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    model: Input[Model],
    metrics: Input[Metrics],
    train_data: Input[Dataset],
    reranker_registration: Output[Artifact],
):
    """Log the trained reranker to MLflow under its own name, with lineage to its data and teacher."""
    run_step(
        "register_reranker",
        params,
        tracking_uri,
        pipeline_key,
        model=model,
        metrics=metrics,
        train_data=train_data,
        reranker_registration=reranker_registration,
    )
