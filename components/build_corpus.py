"""KFP component for catalog step ``build_corpus``."""

from kfp.dsl import Dataset, Output

from components import component, run_step


@component
def build_corpus(params: str, tracking_uri: str, pipeline_key: str, corpus: Output[Dataset]):
    """Collect passages: Python stdlib docstrings, a user JSONL or a BEIR folder."""
    run_step("build_corpus", params, tracking_uri, pipeline_key, corpus=corpus)
