"""KFP component for catalog step ``evaluate_llm_embedder``; its metrics also show in the KFP UI."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate_llm_embedder(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    llm_embedder_model: Input[Model],
    base_lm: Input[Model],
    eval_set: Input[Dataset],
    research_llm_embedder: Output[Metrics],
):
    """Base encoder vs LLM-Embedder: nDCG@10, and the LM's answer NLL / exact match with the top-k each retrieves."""
    run_step(
        "evaluate_llm_embedder",
        params,
        tracking_uri,
        pipeline_key,
        llm_embedder_model=llm_embedder_model,
        base_lm=base_lm,
        eval_set=eval_set,
        research_llm_embedder=research_llm_embedder,
    )
