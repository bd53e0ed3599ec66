"""KFP component for catalog step ``train_m3``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_m3(
    params: str, tracking_uri: str, pipeline_key: str, train_data: Input[Dataset], model: Output[Model], loss_curve: Output[Artifact]
):
    """Fine-tune BGE-M3 heads: dense + sparse + ColBERT with self-distillation."""
    run_step("train_m3", params, tracking_uri, pipeline_key, train_data=train_data, model=model, loss_curve=loss_curve)
