"""KFP component for catalog step ``deploy_long_context``."""

from kfp.dsl import Artifact, Input, Output

from components import component, run_step


@component
def deploy_long_context(
    params: str, tracking_uri: str, pipeline_key: str, longctx_registration: Input[Artifact], longctx_inference_service: Output[Artifact]
):
    """Render (and apply) the long-context champion's InferenceService on KServe's Hugging Face LLM runtime."""
    run_step(
        "deploy_long_context",
        params,
        tracking_uri,
        pipeline_key,
        longctx_registration=longctx_registration,
        longctx_inference_service=longctx_inference_service,
    )
