"""KFP component for catalog step ``build_ood_eval``."""

from kfp.dsl import Dataset, Output

from components import component, run_step


@component
def build_ood_eval(params: str, tracking_uri: str, pipeline_key: str, ood_eval_set: Output[Dataset]):
    """A second, untrained domain for evaluate: numpy/scipy docstrings, queries by the heuristic synthesis."""
    run_step("build_ood_eval", params, tracking_uri, pipeline_key, ood_eval_set=ood_eval_set)
