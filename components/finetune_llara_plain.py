"""KFP component for catalog step ``finetune_llara_plain``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def finetune_llara_plain(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    lm: Input[Model],
    train_data: Input[Dataset],
    llara_plain_model: Output[Model],
):
    """The baseline: the same fine-tuning from the plain base LM, without EBAE/EBAR."""
    run_step("finetune_llara_plain", params, tracking_uri, pipeline_key, lm=lm, train_data=train_data, llara_plain_model=llara_plain_model)
