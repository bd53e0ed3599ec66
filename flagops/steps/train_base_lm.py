"""train_base_lm: a tiny Llama trained from scratch on the corpus at ``longctx.base_context``
tokens, with its own BPE tokenizer: the base the long-context branch extends (no pretrained
causal LM is available offline)."""

from flagops.data.formats import read_corpus
from flagops.longctx.base import train_base
from flagops.longctx.needle import split_passages
from flagops.registry import tracking
from flagops.training.common import describe_loss


def run(cfg, inputs, outputs):
    train, _ = split_passages(read_corpus(inputs["corpus"]), cfg.longctx.held_out_fraction)  # the held-out share is for perplexity
    summary = train_base(cfg.longctx, train, outputs["base_lm"], outputs.get("base_lm_loss_curve"))
    tracking.log_metrics(summary)
    print(f"train_base_lm: {describe_loss(summary)} -> {outputs['base_lm']}")
    return outputs
