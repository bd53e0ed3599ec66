"""KFP component for catalog step ``register_model``."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def register_model(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    model: Input[Model],
    metrics: Input[Metrics],
    train_data: Input[Dataset],
    registration: Output[Artifact],
):
    """Log the candidate to MLflow with signature, lineage tags and a model card."""
    run_step(
        "register_model",
        params,
        tracking_uri,
        pipeline_key,
        model=model,
        metrics=metrics,
        train_data=train_data,
        registration=registration,
    )
