"""KFP component for catalog step ``train_base_lm``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_base_lm(
    params: str, tracking_uri: str, pipeline_key: str, corpus: Input[Dataset], base_lm: Output[Model], base_lm_loss_curve: Output[Artifact]
):
    """Train a tiny Llama and its BPE tokenizer from scratch on the corpus at a short context."""
    run_step("train_base_lm", params, tracking_uri, pipeline_key, corpus=corpus, base_lm=base_lm, base_lm_loss_curve=base_lm_loss_curve)
