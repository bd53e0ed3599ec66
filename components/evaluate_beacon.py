"""KFP component for catalog step ``evaluate_beacon``; its metrics also show in the KFP UI."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import component, run_step


@component
def evaluate_beacon(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    beacon_lm: Input[Model],
    corpus: Input[Dataset],
    beacon_metrics: Output[Metrics],
    beacon_plot: Output[Artifact],
):
    """Perplexity and needles at 4x/8x the base's context: beacons vs the base truncated to its window; KV kept per token."""
    run_step(
        "evaluate_beacon",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        beacon_lm=beacon_lm,
        corpus=corpus,
        beacon_metrics=beacon_metrics,
        beacon_plot=beacon_plot,
    )
