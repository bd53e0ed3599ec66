"""extend_context: the base LM's window x ``longctx.factor`` by RoPE rescaling, trained with LoRA
(QLoRA on CUDA) on needle QA + short text from the corpus; the merged model, ``adapter/`` and
``longctx.json`` (the RoPE settings and the factor)."""

from flagops.data.formats import read_corpus
from flagops.longctx.extend import extend_context
from flagops.longctx.needle import split_passages
from flagops.registry import tracking
from flagops.training.common import describe_loss


def run(cfg, inputs, outputs):
    train, _ = split_passages(read_corpus(inputs["corpus"]), cfg.longctx.held_out_fraction)
    summary = extend_context(cfg.longctx, inputs["base_lm"], train, outputs["extended_lm"], outputs.get("extend_loss_curve"))
    tracking.log_metrics(summary)
    print(f"extend_context: {describe_loss(summary)} -> {outputs['extended_lm']}")
    return outputs
