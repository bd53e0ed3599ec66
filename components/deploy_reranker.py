"""KFP component for catalog step ``deploy_reranker``."""

from kfp.dsl import Artifact, Input, Output

from components import component, run_step


@component
def deploy_reranker(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    promotion: Input[Artifact],
    reranker_inference_service: Output[Artifact],
    reranker_deployment: Output[Artifact],
):
    """Render (and apply) the reranker champion's InferenceService (/v1/rerank)."""
    run_step(
        "deploy_reranker",
        params,
        tracking_uri,
        pipeline_key,
        promotion=promotion,
        reranker_inference_service=reranker_inference_service,
        reranker_deployment=reranker_deployment,
    )
