"""KFP component for catalog step ``pretrain_llara``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def pretrain_llara(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    corpus: Input[Dataset],
    llara_pretrained_lm: Output[Model],
    llara_pretrain_loss_curve: Output[Artifact],
):
    """EBAE/EBAR pretraining: the 8 special tokens' pooled logits predict the passage and the next one, beside the LM loss."""
    run_step(
        "pretrain_llara",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        corpus=corpus,
        llara_pretrained_lm=llara_pretrained_lm,
        llara_pretrain_loss_curve=llara_pretrain_loss_curve,
    )
