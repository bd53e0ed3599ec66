"""KFP component for catalog step ``finetune_llara``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def finetune_llara(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    lm: Input[Model],
    train_data: Input[Dataset],
    llara_model: Output[Model],
):
    """Fine-tune the EBAE/EBAR-pretrained LM as a retriever: mean of the 8 special states, InfoNCE, LoRA."""
    run_step("finetune_llara", params, tracking_uri, pipeline_key, lm=lm, train_data=train_data, llara_model=llara_model)
