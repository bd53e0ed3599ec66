"""KFP component for catalog step ``pretrain_retromae``."""

from kfp.dsl import Dataset, Input, Model, Output

from components import component, run_step


@component
def pretrain_retromae(params: str, tracking_uri: str, pipeline_key: str, corpus: Input[Dataset], pretrained_model: Output[Model]):
    """RetroMAE-pretrain the base on the corpus and the rest of the stdlib's text; the embedder fine-tunes from it."""
    run_step("pretrain_retromae", params, tracking_uri, pipeline_key, corpus=corpus, pretrained_model=pretrained_model)
