"""KFP component for catalog step ``evaluate_visual_bge``."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate_visual_bge(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    visual_bge_data: Input[Dataset],
    visual_bge_model: Input[Model],
    visual_bge_metrics: Output[Metrics],
):
    """Recall@1/5 on held-out images, text->image and composed, against the random init and a caption-only search."""
    run_step(
        "evaluate_visual_bge",
        params,
        tracking_uri,
        pipeline_key,
        visual_bge_data=visual_bge_data,
        visual_bge_model=visual_bge_model,
        visual_bge_metrics=visual_bge_metrics,
    )
