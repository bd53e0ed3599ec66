"""KFP component for catalog step ``build_visual_bge_data``."""

from kfp.dsl import Dataset, Output

from components import component, run_step


@component
def build_visual_bge_data(params: str, tracking_uri: str, pipeline_key: str, visual_bge_data: Output[Dataset]):
    """Draw shapes with captions and edit instructions (Pillow): Visualized-BGE's train and held-out images."""
    run_step("build_visual_bge_data", params, tracking_uri, pipeline_key, visual_bge_data=visual_bge_data)
