"""KFP component for catalog step ``train_beacon``."""

from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components import component, run_step


@component
def train_beacon(
    params: str,
    tracking_uri: str,
    pipeline_key: str,
    base_lm: Input[Model],
    corpus: Input[Dataset],
    beacon_lm: Output[Model],
    beacon_loss_curve: Output[Artifact],
):
    """Train Activation Beacon's beacon embedding and q/k/v/o on the frozen base LM, reading long text window by window."""
    run_step(
        "train_beacon",
        params,
        tracking_uri,
        pipeline_key,
        base_lm=base_lm,
        corpus=corpus,
        beacon_lm=beacon_lm,
        beacon_loss_curve=beacon_loss_curve,
    )
