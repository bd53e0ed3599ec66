"""KFP component for catalog step ``train_visual_bge``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def train_visual_bge(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    visual_bge_data: Input[Dataset],
    visual_bge_model: Output[Model],
):
    """Visualized-BGE stage 2: the ViT and projection train under the frozen text encoder (InfoNCE, one task per batch)."""
    run_step("train_visual_bge", params, tracking_uri, pipeline_key, visual_bge_data=visual_bge_data, visual_bge_model=visual_bge_model)
