"""train_beacon: Activation Beacon on the base LM: its weights frozen, the beacon embedding and the
beacon-only q/k/v/o projections trained on long text and needle QA read window by window."""

from flagops.data.formats import read_corpus
from flagops.longctx.needle import split_passages
from flagops.registry import tracking
from flagops.research import beacon
from flagops.training.common import describe_loss


def run(cfg, inputs, outputs):
    train, _ = split_passages(read_corpus(inputs["corpus"]), cfg.longctx.held_out_fraction)  # the base LM's own split
    base_context = cfg.longctx.base_context
    summary = beacon.train(cfg.beacon, base_context, inputs["base_lm"], train, outputs["beacon_lm"], outputs.get("beacon_loss_curve"))
    tracking.log_metrics({f"beacon/{k}": v for k, v in summary.items()})
    print(f"train_beacon: {describe_loss(summary)} -> {outputs['beacon_lm']}")
    return outputs
