"""KFP component for catalog step ``synthesize_queries``."""

from kfp.dsl import Dataset, Input, Output

from components import component, run_step


@component
def synthesize_queries(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    corpus: Input[Dataset],
    train_pairs: Output[Dataset],
    eval_set: Output[Dataset],
):
    """Generate a query per passage; split train/test by group (module)."""
    run_step(
        "synthesize_queries",
        params,
        tracking_uri,
        pipeline_key,
        corpus=corpus,
        train_pairs=train_pairs,
        eval_set=eval_set,
    )
