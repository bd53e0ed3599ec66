"""KFP component for catalog step ``merge_models``. ``train_data`` is None when the pipeline
passes none (merge.method=fixed or layers do not need it)."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def merge_models(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    model: Input[Model],
    merged_model: Output[Model],
    train_data: Input[Dataset] = None,
):
    """LM-Cocktail: mix the candidate with its base (fixed, data-driven or by-layers weights); evaluate picks the release."""
    run_step("merge_models", params, tracking_uri, pipeline_key, model=model, train_data=train_data, merged_model=merged_model)
