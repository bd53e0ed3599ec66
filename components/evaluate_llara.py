"""KFP component for catalog step ``evaluate_llara``; its metrics also show in the KFP UI."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate_llara(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    llara_model: Input[Model],
    llara_plain_model: Input[Model],
    llara_pretrained_lm: Input[Model],
    eval_set: Input[Dataset],
    research_llara: Output[Metrics],
):
    """Held-out nDCG@10 of LLaRA fine-tuned with vs without EBAE/EBAR pretraining."""
    run_step(
        "evaluate_llara",
        params,
        tracking_uri,
        pipeline_key,
        llara_model=llara_model,
        llara_plain_model=llara_plain_model,
        llara_pretrained_lm=llara_pretrained_lm,
        eval_set=eval_set,
        research_llara=research_llara,
    )
