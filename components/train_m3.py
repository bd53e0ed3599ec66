"""KFP component for catalog step ``train_m3``. ``base_model`` is None unless the pipeline
pretrains one (pretrain_retromae)."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_m3(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    train_data: Input[Dataset],
    model: Output[Model],
    loss_curve: Output[Artifact],
    base_model: Input[Model] = None,
):
    """Fine-tune BGE-M3 heads: dense + sparse + ColBERT with self-distillation."""
    run_step(
        "train_m3", params, tracking_uri, pipeline_key, train_data=train_data, base_model=base_model, model=model, loss_curve=loss_curve
    )
