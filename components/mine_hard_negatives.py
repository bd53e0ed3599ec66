"""KFP component for catalog step ``mine_hard_negatives``."""

from kfp.dsl import Dataset, Input, Output

from components import component, run_step


@component
def mine_hard_negatives(params: str, tracking_uri: str, pipeline_key: str, train_pairs: Input[Dataset], train_data: Output[Dataset]):
    """Sample negatives from ranks 10-210 of a teacher's faiss search."""
    run_step("mine_hard_negatives", params, tracking_uri, pipeline_key, train_pairs=train_pairs, train_data=train_data)
