"""KFP component for catalog step ``extend_context``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def extend_context(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    corpus: Input[Dataset],
    extended_lm: Output[Model],
    extend_loss_curve: Output[Artifact],
):
    """Extend the LM's context by RoPE rescaling, LoRA-trained (QLoRA on CUDA) on needle QA and short text."""
    run_step(
        "extend_context",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        corpus=corpus,
        extended_lm=extended_lm,
        extend_loss_curve=extend_loss_curve,
    )
