"""KFP component for catalog step ``register_model``. ``merged_model`` is None without a merge."""

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
    merged_model: Input[Model] = None,
):
    """Log the candidate (the merged model when evaluate chose it) to MLflow with signature, lineage tags and a model card."""
    run_step(
        "register_model",
        params,
        tracking_uri,
        pipeline_key,
        model=model,
        metrics=metrics,
        train_data=train_data,
        merged_model=merged_model,
        registration=registration,
    )
