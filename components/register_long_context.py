"""KFP component for catalog step ``register_long_context``."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def register_long_context(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    extended_lm: Input[Model],
    base_lm: Input[Model],
    longctx_metrics: Input[Metrics],
    corpus: Input[Dataset],
    longctx_registration: Output[Artifact],
):
    """Register the extended LM (merged weights + LoRA adapter) with its lineage; champion only if it beats the current one."""
    run_step(
        "register_long_context",
        params,
        tracking_uri,
        pipeline_key,
        extended_lm=extended_lm,
        base_lm=base_lm,
        longctx_metrics=longctx_metrics,
        corpus=corpus,
        longctx_registration=longctx_registration,
    )
