"""KFP component for catalog step ``promote_reranker``."""

from kfp.dsl import Artifact, Input, Output

from components import component, run_step


@component
def promote_reranker(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    registration: Input[Artifact],
    reranker_promotion: Output[Artifact],
):
    """Give the reranker `champion` only if it beats the current one on reranked/<primary metric>."""
    run_step(
        "promote_reranker",
        params,
        tracking_uri,
        pipeline_key,
        registration=registration,
        reranker_promotion=reranker_promotion,
    )
