"""train_llm_embedder: the base encoder (model.base) trained on the LM's rewards with LLM-Embedder's
stabilized (or KL) distillation and a contrastive term (flagops.research.llm_embedder.train)."""

from flagops.registry import tracking
from flagops.research.llm_embedder.data import read_rewarded
from flagops.research.llm_embedder.train import train
from flagops.training.common import describe_loss


def run(cfg, inputs, outputs):
    rows = read_rewarded(inputs["llm_embedder_data"])
    summary = train(cfg.model, cfg.llm_embedder, rows, outputs["llm_embedder_model"], outputs.get("llm_embedder_loss_curve"))
    tracking.log_metrics(summary)
    print(f"train_llm_embedder: {describe_loss(summary)} -> {outputs['llm_embedder_model']}")
    return outputs
