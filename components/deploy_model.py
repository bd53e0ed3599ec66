"""KFP component for catalog step ``deploy_model``."""

from kfp.dsl import Artifact, Input, Output

from components import component, run_step


@component
def deploy_model(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    promotion: Input[Artifact],
    inference_service: Output[Artifact],
    deployment: Output[Artifact],
):
    """Render (and apply) the champion's KServe InferenceService; a new champion starts as a canary."""
    run_step(
        "deploy_model",
        params,
        tracking_uri,
        pipeline_key,
        promotion=promotion,
        inference_service=inference_service,
        deployment=deployment,
    )
